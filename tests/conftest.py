"""Tiny real checkpoints made from config, once per session (no downloads).

Related models (a "base", fine-tunes of it, a DPO of the SFT) are the base's weights plus seeded noise, so the
merge math has realistic small deltas to work on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)


def _llama_config(vocab: int = 96, tie: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)


def build_model(kind: str = "llama", *, seed: int = 0, tie: bool = False, vocab: int = 96):
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "gpt2":
        return GPT2LMHeadModel(_gpt2_config()).eval()
    return LlamaForCausalLM(_llama_config(vocab=vocab, tie=tie)).eval()


def perturbed(model, seed: int, scale: float = 0.02, relative: bool = False):
    """A copy of `model` with seeded Gaussian noise on every float parameter (a stand-in for fine-tuning).

    `relative`: noise proportional to each weight, like alignment updates (~1e-3 of the weight).
    """
    import copy

    g = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            p.add_(noise * p if relative else noise)
    return new


def save(model, path: Path, *, shard_size: str | None = None, dtype: torch.dtype | None = None) -> Path:
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def llama_family(zoo_dir: Path) -> dict[str, Path]:
    """base, two fine-tunes (sharded, tiny shards), an SFT and its DPO (single file), all float32."""
    base = build_model(seed=0)
    sft = perturbed(base, 1)
    dpo = perturbed(sft, 2, scale=0.005)
    paths = {
        "base": save(base, zoo_dir / "base", shard_size="20KB"),
        "ft1": save(perturbed(base, 3), zoo_dir / "ft1", shard_size="20KB"),
        "ft2": save(perturbed(base, 4), zoo_dir / "ft2", shard_size="30KB"),
        "sft": save(sft, zoo_dir / "sft"),
        "dpo": save(dpo, zoo_dir / "dpo"),
    }
    return paths


@pytest.fixture(scope="session")
def bf16_pair(zoo_dir: Path) -> dict[str, Path]:
    base = build_model(seed=10)
    sft = perturbed(base, 11)
    dpo = perturbed(sft, 12, scale=0.003, relative=True)
    return {
        "sft": save(sft, zoo_dir / "sft_bf16", dtype=torch.bfloat16),
        "dpo": save(dpo, zoo_dir / "dpo_bf16", dtype=torch.bfloat16),
    }


@pytest.fixture(scope="session")
def tied_pair(zoo_dir: Path) -> dict[str, Path]:
    sft = build_model(seed=20, tie=True)
    dpo = perturbed(sft, 21)
    return {"sft": save(sft, zoo_dir / "tied_sft"), "dpo": save(dpo, zoo_dir / "tied_dpo")}


@pytest.fixture(scope="session")
def gpt2_pair(zoo_dir: Path) -> dict[str, Path]:
    a = build_model("gpt2", seed=30)
    b = perturbed(a, 31)
    return {"a": save(a, zoo_dir / "gpt2_a", shard_size="40KB"), "b": save(b, zoo_dir / "gpt2_b")}


@pytest.fixture(scope="session")
def extra_row_pair(zoo_dir: Path) -> dict[str, Path]:
    """An SFT with 96 tokens and a DPO that added one token (97 rows in embed_tokens and lm_head)."""
    sft = build_model(seed=40)
    dpo = perturbed(sft, 41)
    dpo.resize_token_embeddings(97)
    with torch.no_grad():
        dpo.get_input_embeddings().weight[96].normal_(0, 0.02, generator=torch.Generator().manual_seed(42))
        dpo.get_output_embeddings().weight[96].normal_(0, 0.02, generator=torch.Generator().manual_seed(43))
    return {"sft": save(sft, zoo_dir / "row_sft"), "dpo": save(dpo, zoo_dir / "row_dpo")}


def llama(layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def deep_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An 8-layer base and three fine-tunes of it (mergekit's 40-layer examples, scaled)."""
    root = tmp_path_factory.mktemp("deep")
    base = llama(8)
    out = {"base": save(base, root / "base")}
    for i in (1, 2, 3):
        out[f"m{i}"] = save(perturbed(base, seed=10 + i), root / f"m{i}")
    return out


@pytest.fixture
def load_state() -> Callable[[Path], dict[str, torch.Tensor]]:
    """Every tensor of a saved checkpoint, read with safetensors directly (independent of modelops' reader)."""
    from safetensors.torch import load_file

    def _load(path: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            out.update(load_file(f))
        return out

    return _load


def logits_of(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def logits_with_state(path_like: Path, state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Logits of the architecture at `path_like` with weights `state` set in memory (the independent side)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path_like)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    model.tie_weights()
    with torch.no_grad():
        return model.float()(ids).logits


from decode_fixtures import decode_family  # noqa: E402, F401  (session fixture shared by the decode tests)


@pytest.fixture(scope="session")
def mini_zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mini zoo build per session (~70 s), in a cache folder tests can point MODELOPS_CACHE at."""
    from modelops.zoo.build import build_zoo

    cache = tmp_path_factory.mktemp("modelops-cache")
    old = os.environ.get("MODELOPS_CACHE")
    os.environ["MODELOPS_CACHE"] = str(cache)
    try:
        build_zoo("mini", seed=0)
    finally:
        if old is None:
            os.environ.pop("MODELOPS_CACHE", None)
        else:
            os.environ["MODELOPS_CACHE"] = old
    return cache


@pytest.fixture(scope="session")
def mini_zoo(mini_zoo_cache: Path) -> Path:
    """The folder of that session's mini zoo build."""
    (folder,) = [p for p in (mini_zoo_cache / "zoo").iterdir() if (p / "zoo.json").is_file()]
    return folder
