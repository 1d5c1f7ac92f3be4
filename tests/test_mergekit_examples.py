"""mergekit's published example configs (its repository's examples/ folder) run unchanged: only the model names
are replaced by tiny 8-layer models and the 40-layer ranges scaled to 8. Each output is checked against an
independent float64 computation of what the config asks for, then cast as the config's dtype asks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from merge_reference import arcee_by_hand, gradient, layer_of, slerp_by_hand, ties_by_hand

from modelops.api import merge
from modelops.merge import load_recipe

EXAMPLES = {
    "linear": """
models:
  - model: {m1}
    parameters:
      weight: 1.0
  - model: {m2}
    parameters:
      weight: 0.3
  - model: {m3}
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
""",
    "ties": """
models:
  - model: {m1}
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: {m2}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: {m3}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: float16
""",
    "bio-merge": """
models:
  - model: {m1}
    parameters:
      density: 0.5
      weight: 0.5
  - model: {m2}
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: {base}
parameters:
  normalize: false
  int8_mask: true
dtype: float16
""",
    "gradient-slerp": """
slices:
  - sources:
      - model: {m1}
        layer_range: [0, 8]
      - model: {m2}
        layer_range: [0, 8]
merge_method: slerp
base_model: {m1}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
""",
    "orcamini-platy-44layer": """
slices:
  - sources:
    - model: {m1}
      layer_range: [0, 5]
  - sources:
    - model: {m2}
      layer_range: [4, 8]
merge_method: passthrough
dtype: float16
""",
    "arcee_fusion": """
models:
  - model: {m1}
  - model: {m2}
merge_method: arcee_fusion
base_model: {m1}
dtype: bfloat16
""",
}


def _expected(name: str, s: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What each config asks for, computed from the inputs in float64."""
    base, m1, m2, m3 = s["base"], s["m1"], s["m2"], s["m3"]
    out: dict[str, torch.Tensor] = {}
    if name == "linear":
        return {k: (1.0 * m1[k].double() + 0.3 * m2[k].double() + 0.5 * m3[k].double()) / 1.8 for k in m1}
    if name == "ties":
        for k in base:
            t = layer_of(k) / 7 if layer_of(k) is not None else 0.0
            w = [1.0, gradient([0, 0.3, 0.7, 1], t), 0.5 if "mlp" in k else 0.0]
            d = [gradient([1, 0.7, 0.1], t), 0.5, 0.33]
            out[k] = ties_by_hand(base[k], [m1[k], m2[k], m3[k]], w, d)
        return out
    if name == "bio-merge":
        return {k: ties_by_hand(base[k], [m1[k], m2[k]], [0.5, 0.5], [0.5, 0.5], normalize=False) for k in base}
    if name == "gradient-slerp":
        for k in m1:
            t = layer_of(k) / 7 if layer_of(k) is not None else 0.0
            if "self_attn" in k:
                tk = gradient([0, 0.5, 0.3, 0.7, 1], t)
            elif "mlp" in k:
                tk = gradient([1, 0.5, 0.7, 0.3, 0], t)
            else:
                tk = 0.5
            out[k] = slerp_by_hand(m1[k], m2[k], tk)
        return out
    if name == "orcamini-platy-44layer":  # layers [0, 5) of m1 then [4, 8) of m2, renumbered 0-8
        out = {k: (m1 if "embed" in k else m2)[k].double() for k in m1 if layer_of(k) is None}
        for j in range(9):
            src, src_layer = (m1, j) if j < 5 else (m2, j - 1)
            prefix = f"model.layers.{src_layer}."
            out |= {f"model.layers.{j}." + k[len(prefix) :]: v.double() for k, v in src.items() if k.startswith(prefix)}
        return out
    return {k: arcee_by_hand(m1[k], m2[k]) for k in m1}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_published_example_runs_unchanged(name: str, deep_family, load_state, tmp_path: Path) -> None:
    recipe_path = tmp_path / f"{name}.yml"
    recipe_path.write_text(EXAMPLES[name].format(**{k: str(v) for k, v in deep_family.items()}))
    out = tmp_path / "out"
    merge(load_recipe(recipe_path), out)
    got = load_state(out)
    states = {k: load_state(v) for k, v in deep_family.items()}
    want = _expected(name, states)
    dtype = torch.bfloat16 if "bfloat16" in EXAMPLES[name] else torch.float16
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == dtype
        # float32 math then one cast: at most one rounding step of the output dtype away from the exact value
        assert torch.allclose(got[k].double(), v, rtol=2**-7 if dtype == torch.bfloat16 else 2**-10, atol=1e-6), k
