"""Where each output tensor comes from: tensor names by layer, and the mapping from a recipe's slices.

For `models:` recipes every output tensor is the same-named tensor of every input. For `slices:` recipes
(layer stacking, "frankenmerges") output layer k is built from layer `first + offset` of each of its slice's
sources, renumbered; embeddings come from the first slice's sources and the final norm / head from the last
slice's, as mergekit does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelops.checkpoint import Checkpoint
from modelops.errors import CheckpointError
from modelops.merge.recipe import OutputSlice

_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer)\.)(?P<index>\d+)(?P<suffix>\..+)$")
_PRE = ("embed", "wte", "wpe", "word_embeddings")


@dataclass(frozen=True)
class SourceTensor:
    """One input of an output tensor: a model (its recipe spec), the tensor's name there, the model's settings."""

    model: str
    tensor: str
    parameters: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class TensorSources:
    """Everything but shapes that the plan needs for one output tensor."""

    name: str
    t: float  # depth for gradients: layer i of a slice of n → i/(n−1) (1 if n = 1); outside the layers 0
    base: SourceTensor | None
    sources: tuple[SourceTensor, ...]
    slice_parameters: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def split_layer(name: str) -> tuple[str, int, str] | None:
    """('model.layers.', 3, '.mlp.up_proj.weight') for a layer tensor, None for anything else."""
    m = _LAYER.match(name)
    return (m["prefix"], int(m["index"]), m["suffix"]) if m else None


def is_pre_weight(name: str) -> bool:
    """Tensors before the layers (token/position embeddings); the rest outside layers come after them."""
    return any(k in name for k in _PRE)


def depth(index: int, count: int) -> float:
    return index / (count - 1) if count > 1 else 1.0


def num_layers(ck: Checkpoint) -> int:
    """The layer count from the config, else from the tensor names."""
    cfg = ck.config or {}
    n = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    if isinstance(n, int):
        return n
    found = [s[1] for s in map(split_layer, ck.tensors) if s is not None]
    return max(found) + 1 if found else 0


def layer_index(ck: Checkpoint) -> dict[int, list[tuple[str, str]]]:
    """{layer: [(prefix, suffix), ...]} in the checkpoint's own tensor order; one layer stack only."""
    out: dict[int, list[tuple[str, str]]] = {}
    prefixes = set()
    for name in ck.tensors:
        parts = split_layer(name)
        if parts is not None:
            prefixes.add(parts[0])
            out.setdefault(parts[1], []).append((parts[0], parts[2]))
    if len(prefixes) > 1:
        raise CheckpointError(
            f"{ck.name} has several layer stacks ({', '.join(sorted(prefixes))}); slices: needs exactly one"
        )
    return out


def whole_model_sources(
    reference: Checkpoint, base: str | None, models: list[tuple[str, dict[str, Any]]]
) -> list[TensorSources]:
    """`models:` recipes: every tensor of the reference, taken by the same name from the base and each model."""
    count = num_layers(reference)
    out = []
    for name in reference.tensors:
        parts = split_layer(name)
        t = depth(parts[1], count) if parts is not None else 0.0
        out.append(
            TensorSources(
                name,
                t,
                SourceTensor(base, name) if base else None,
                tuple(SourceTensor(m, name, params) for m, params in models),
            )
        )
    return out


def sliced_sources(
    slices: list[OutputSlice], base_for: list[str | None], checkpoints: dict[str, Checkpoint], reference: Checkpoint
) -> tuple[list[TensorSources], list[tuple[str, int]]]:
    """`slices:` recipes: the output tensors in order, and for each output layer the (model, layer) it came from."""
    indexes = {spec: layer_index(ck) for spec, ck in checkpoints.items()}
    ref_layers = indexes[reference_spec(checkpoints, reference)]
    out_prefix = next((p for parts in ref_layers.values() for p, _ in parts), "model.layers.")
    outside = [n for n in reference.tensors if split_layer(n) is None]
    tensors: list[TensorSources] = []
    origin: list[tuple[str, int]] = []

    first_slice, last_slice = slices[0], slices[-1]
    tensors += [_outside(n, first_slice, base_for[0]) for n in outside if is_pre_weight(n)]
    for s, base in zip(slices, base_for, strict=True):
        first_src = s.sources[0]
        for offset in range(s.length):
            t = depth(offset, s.length)
            src_layer = first_src.layer_range[0] + offset
            suffixes = [suffix for _, suffix in _layer_parts(indexes, first_src.model, src_layer)]
            # each source's tensor-name prefix for its layer at this offset (one layer stack per model)
            names = [
                (src, _layer_parts(indexes, src.model, src.layer_range[0] + offset)[0][0], src.layer_range[0] + offset)
                for src in s.sources
            ]
            base_outside = base is not None and all(src.model != base for src in s.sources)
            base_prefix = _layer_parts(indexes, base, src_layer)[0][0] if base_outside else ""
            k = len(origin)
            origin.append((first_src.model, src_layer))
            for suffix in suffixes:
                base_t, srcs = None, []
                for src, prefix, layer in names:
                    st = SourceTensor(src.model, f"{prefix}{layer}{suffix}", src.parameters)
                    if base is not None and src.model == base and base_t is None:
                        base_t = st
                    else:
                        srcs.append(st)
                if base_outside:  # a base outside the sources: its layer at the same depth
                    base_t = SourceTensor(base, f"{base_prefix}{src_layer}{suffix}")
                tensors.append(TensorSources(f"{out_prefix}{k}{suffix}", t, base_t, tuple(srcs), s.parameters))
    tensors += [_outside(n, last_slice, base_for[-1]) for n in outside if not is_pre_weight(n)]
    return tensors, origin


def _layer_parts(indexes: dict[str, dict[int, list[tuple[str, str]]]], model: str, layer: int) -> list[tuple[str, str]]:
    """(prefix, suffix) of every tensor of one layer of one model, or one line saying the layer is missing."""
    parts = indexes[model].get(layer)
    if not parts:
        raise CheckpointError(f"{model} has no layer {layer}; check the slice's layer_range")
    return parts


def _outside(name: str, s: OutputSlice, base: str | None) -> TensorSources:
    """A tensor outside the layers, from one slice's sources (mergekit: embeddings first slice, head last)."""
    base_t = SourceTensor(base, name) if base else None
    srcs = tuple(SourceTensor(src.model, name, src.parameters) for src in s.sources if src.model != base)
    return TensorSources(name, 0.0, base_t, srcs, s.parameters)


def reference_spec(checkpoints: dict[str, Checkpoint], reference: Checkpoint) -> str:
    return next(spec for spec, ck in checkpoints.items() if ck is reference)


def per_layer_config(
    origin: list[tuple[str, int]], checkpoints: dict[str, Checkpoint], reference: Checkpoint
) -> dict[str, Any]:
    """Config keys to rewrite for a stacked model: the layer count, and every per-layer list (e.g. layer_types)
    rebuilt from the configs of the layers' own models."""
    cfg = reference.config or {}
    key = "num_hidden_layers" if "num_hidden_layers" in cfg or "n_layer" not in cfg else "n_layer"
    updates: dict[str, Any] = {key: len(origin)}
    ref_n = num_layers(reference)
    configs = {model: checkpoints[model].config or {} for model, _ in origin}  # each config.json read once
    for name, value in cfg.items():
        if isinstance(value, list) and ref_n > 1 and len(value) == ref_n:
            rebuilt = []
            for model, layer in origin:
                src_list = configs[model].get(name)
                if not isinstance(src_list, list) or layer >= len(src_list):
                    raise CheckpointError(f"config {name!r} of {model} has no entry for layer {layer}")
                rebuilt.append(src_list[layer])
            updates[name] = rebuilt
    return updates
