"""Synthetic Llama-shaped checkpoints for the weight benchmarks: tensor shapes, and warming the page cache."""

from __future__ import annotations

from pathlib import Path


def llama_shapes(layers: int, hidden: int = 2048, vocab: int = 32000) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama with untied embeddings (intermediate size 11/4 · hidden)."""
    inter = hidden * 11 // 4
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def warm(folder: Path) -> None:
    """Read every weight file below `folder` once, so both sides of a comparison start from a warm page cache."""
    for f in folder.rglob("*.safetensors"):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
