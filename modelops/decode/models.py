"""Loading the co-decoder's models: local folder or `org/name@rev`, safetensors only unless asked, no remote code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modelops.errors import ModelopsError

logger = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}
TEMPLATES = ("plain", "chat")


@dataclass
class Member:
    """One model of a fused configuration, with the prompt template it wants."""

    role: str  # large | base | expert
    spec: str
    model: Any
    tokenizer: Any
    template: str = "plain"  # plain text, or the tokenizer's chat template

    def render_text(self, prompt: str) -> tuple[str, bool]:
        """(prompt text as this model should see it, whether the tokenizer adds its special tokens)."""
        if self.template != "chat":
            return prompt, True
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelopsError(
                f"{self.spec}: --chat-template-for asks for a chat template but its tokenizer has none; "
                "use --chat-template-for none, or add chat_template to its tokenizer_config.json"
            )
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return text, False

    def render(self, prompt: str) -> list[int]:
        """Token ids of the prompt as this model should see it."""
        text, specials = self.render_text(prompt)
        return list(self.tokenizer(text, add_special_tokens=specials)["input_ids"])


def load_causal_lm(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    device_map: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a folder or Hub id; weights format checked before loading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelops.checkpoint import Checkpoint

    ckpt = Checkpoint.open(spec, allow_pickle=allow_pickle)  # resolves, refuses pickles unless allowed
    folder = ckpt.folder
    if ckpt.config is None:
        raise ModelopsError(f"{spec}: no config.json in {folder}; fuse-decode needs a transformers model folder")
    torch_dtype: Any = "auto"
    if dtype:
        if dtype not in DTYPES:
            raise ModelopsError(f"--dtype {dtype!r}: expected one of float32, bfloat16, float16")
        torch_dtype = getattr(torch, DTYPES[dtype])
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=not allow_pickle or None, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelopsError(
            f"{spec}: transformers could not load it as a causal LM ({str(exc).splitlines()[0]})"
        ) from None
    if not device_map:
        model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelopsError(
            f"{spec}: no usable tokenizer in {folder} ({str(exc).splitlines()[0]}); save one with the model"
        ) from None
    return model, tokenizer
