"""A member of a fused configuration: a loaded model (`runtime.models.load_causal_lm`) with its role and template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.errors import ModelopsError

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
