"""Which tensors of a checkpoint belong to which kind of module, and how peft names them.

The module types come from the model class itself, instantiated from config.json on the meta device (no memory,
no weights): nn.Linear, GPT-2's transposed Conv1D, nn.Embedding, and the output layer (which peft's
`all-linear` leaves out). Without a usable config, tensor names decide (2-D `*.weight`, `embed`/`wte`/`wpe`
→ embedding, `lm_head` → output, Conv1D only for GPT-2-style model types).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from modelops.checkpoint import Checkpoint
from modelops.errors import CheckpointError

logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
LINEAR_KINDS = ("linear", "conv1d")
EMBED_KINDS = ("embedding", "output")
_CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
_EMBED_HINTS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings")


@dataclass(frozen=True)
class Module:
    """One weight-carrying module of the model."""

    name: str  # module path, e.g. model.layers.0.self_attn.q_proj
    kind: str  # linear | conv1d | embedding | output
    weight: str  # the tensor holding its weight in the checkpoint (the input embedding when tied)
    stored_shape: tuple[int, int]
    tied: bool = False  # an output layer sharing the input embedding's tensor

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def out_in(self) -> tuple[int, int]:
        """(out, in) of the layer as a matrix acting on activations (Conv1D stores (in, out))."""
        a, b = self.stored_shape
        return (b, a) if self.kind == "conv1d" else (a, b)


@dataclass
class ModuleMap:
    modules: dict[str, Module]  # by module name
    tied: bool  # the checkpoint stores one tensor for input embedding and output layer
    source: str  # "model class" | "tensor names"

    def by_weight(self) -> dict[str, Module]:
        return {m.weight: m for m in self.modules.values() if not m.tied}

    def linear(self) -> list[Module]:
        return [m for m in self.modules.values() if m.kind in LINEAR_KINDS]


def module_map(ck: Checkpoint) -> ModuleMap:
    """Classify the checkpoint's 2-D weights by module type (meta-device model, else names)."""
    cfg = ck.config
    if cfg and cfg.get("model_type"):
        try:
            return _from_model_class(ck)
        except Exception as exc:  # unknown architecture, custom code: names still work
            logger.info("could not build %s on the meta device (%s); classifying modules by name", ck.name, exc)
    return _from_names(ck)


def _from_model_class(ck: Checkpoint) -> ModuleMap:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = AutoConfig.from_pretrained(str(ck.folder))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    input_name = next((n for n, m in model.named_modules() if m is inp), None)
    modules: dict[str, Module] = {}
    tied = False
    for name, mod in model.named_modules():
        weight = f"{name}.weight"
        if mod is output and output is not None:
            kind = "output"
        elif isinstance(mod, Conv1D):
            kind = "conv1d"
        elif isinstance(mod, torch.nn.Linear):
            kind = "linear"
        elif isinstance(mod, torch.nn.Embedding):
            kind = "embedding"
        else:
            continue
        info = ck.tensors.get(weight)
        if kind == "output" and info is None and input_name and f"{input_name}.weight" in ck.tensors:
            tied = True
            src = ck.tensors[f"{input_name}.weight"]
            modules[name] = Module(name, kind, src.name, (src.shape[0], src.shape[1]), tied=True)
            continue
        if info is None or len(info.shape) != 2:
            continue
        modules[name] = Module(name, kind, weight, (info.shape[0], info.shape[1]))
    if not modules:
        raise ValueError("no module of the model class matches a tensor name")
    return ModuleMap(modules, tied, "model class")


def _from_names(ck: Checkpoint) -> ModuleMap:
    model_type = (ck.config or {}).get("model_type")
    modules = {}
    for info in ck.tensors.values():
        if len(info.shape) != 2 or not info.name.endswith(".weight") or not info.is_float:
            continue
        name = info.name.removesuffix(".weight")
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "lm_head":
            kind = "output"
        elif any(h in leaf for h in _EMBED_HINTS):
            kind = "embedding"
        else:
            kind = "conv1d" if model_type in _CONV1D_MODEL_TYPES else "linear"
        modules[name] = Module(name, kind, info.name, (info.shape[0], info.shape[1]))
    if not modules:
        raise CheckpointError(f"{ck.name}: no 2-D weight tensors to extract a LoRA from")
    return ModuleMap(modules, False, "tensor names")


def select_modules(mm: ModuleMap, spec: str) -> list[Module]:
    """`all-linear` (every Linear/Conv1D except the output layer, as in peft) or a comma list of module leaf
    names / name suffixes (`q_proj,v_proj`, `mlp.down_proj`)."""
    linear = mm.linear()
    if spec.strip() == "all-linear":
        return linear
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        raise CheckpointError("--modules is empty; use all-linear or a list such as q_proj,v_proj")
    chosen, unknown = [], []
    for w in wanted:
        hits = [m for m in linear if m.name == w or m.name.endswith("." + w)]
        if not hits:
            unknown.append(w)
        chosen.extend(hits)
    if unknown:
        leaves = sorted({m.leaf for m in linear})
        raise CheckpointError(
            f"--modules {','.join(unknown)}: no linear module of that name; available: {', '.join(leaves)}"
        )
    seen: dict[str, Module] = {m.name: m for m in chosen}
    return [m for m in linear if m.name in seen]


def peft_target_names(mm: ModuleMap, names: list[str]) -> list[str]:
    """peft `target_modules`: a leaf name when every module with that leaf is targeted (short, the usual form),
    full module paths otherwise (peft matches `name == t or name.endswith('.' + t)`)."""
    chosen = set(names)
    by_leaf: dict[str, list[str]] = {}
    for m in mm.modules.values():
        if not m.tied:
            by_leaf.setdefault(m.leaf, []).append(m.name)
    out: list[str] = []
    for leaf, members in sorted(by_leaf.items()):
        inside = [n for n in members if n in chosen]
        if not inside:
            continue
        out.extend([leaf] if len(inside) == len(members) else inside)
    return out
