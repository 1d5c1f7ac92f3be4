"""mergekit 0.1.5 configs that `compat_mergekit.py` runs through both mergekit and modelops.

Kept apart from the runner so the list can grow without burying the comparison logic. Each entry is
(name, YAML text); `{base}`, `{m1}`, `{m2}`, `{m3}` (base + dense noise) and `{s1}`, `{s2}` (base + sparse noise,
so RAM's unique/overlap split matters) are replaced by model folders. `ex_*` entries are mergekit's published
`examples/*.yml` scaled to 8 layers, with `dtype: float32` (both tools then compute in float32) except
`ex_ties_fp16`, which keeps the example's `float16`. No config sets `out_dtype`.
"""

from __future__ import annotations

# mergekit's sparsifying methods draw from torch's global RNG (seeded once by --random-seed); modelops seeds
# per tensor, so these can only agree statistically.
RANDOM_METHODS = frozenset({"dare_linear", "dare_ties", "della", "della_linear"})

_TIES_EXAMPLE = """
models:
  - model: {m1}
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: {m2}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
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
"""


def _two(method: str, params: str = "", m1: str = "", m2: str = "", base: str = "{base}") -> str:
    """A base plus m1, m2 with per-model parameter blocks (already indented) and global parameters."""
    text = f"merge_method: {method}\nbase_model: {base}\nmodels:\n"
    text += f"  - model: {{m1}}\n{m1}  - model: {{m2}}\n{m2}"
    if params:
        text += "parameters:\n" + params
    return text + "dtype: float32\n"


def _dw(density: float, weight: float, extra: str = "") -> str:
    """A model's `parameters:` block with density and weight."""
    return f"    parameters:\n      density: {density}\n      weight: {weight}\n{extra}"


def _w(weight: float) -> str:
    return f"    parameters:\n      weight: {weight}\n"


CONFIGS: list[tuple[str, str]] = [
    # --- mergekit's examples/ ---
    (
        "ex_linear",
        """
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
dtype: float32
""",
    ),
    ("ex_ties", _TIES_EXAMPLE + "dtype: float32\n"),
    ("ex_ties_fp16", _TIES_EXAMPLE + "dtype: float16\n"),
    ("ex_bio_merge", _two("ties", "  normalize: false\n  int8_mask: true\n", _dw(0.5, 0.5), _dw(0.5, 0.5))),
    (
        "ex_gradient_slerp",
        """
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
    - value: 0.5
dtype: float32
""",
    ),
    (
        "ex_orcamini_passthrough",
        """
slices:
  - sources:
    - model: {m1}
      layer_range: [0, 5]
  - sources:
    - model: {m2}
      layer_range: [3, 8]
merge_method: passthrough
dtype: float32
""",
    ),
    (
        "ex_arcee_fusion",
        "models:\n  - model: {m1}\n  - model: {m2}\nmerge_method: arcee_fusion\nbase_model: {m1}\ndtype: float32\n",
    ),
    # --- one (or a few) per mergekit 0.1.5 method ---
    (
        "linear",
        "merge_method: linear\nmodels:\n  - model: {m1}\n"
        + _w(0.6)
        + "  - model: {m2}\n"
        + _w(0.4)
        + "dtype: float32\n",
    ),
    ("task_arithmetic", _two("task_arithmetic", "", _w(0.7), _w(0.3))),
    ("ties", _two("ties", "  normalize: true\n", _dw(0.5, 0.6), _dw(0.5, 0.4))),
    ("dare_linear", _two("dare_linear", "", _dw(0.5, 0.5), _dw(0.5, 0.5))),
    ("dare_ties", _two("dare_ties", "", _dw(0.5, 0.6), _dw(0.5, 0.4))),
    (
        "breadcrumbs",
        _two("breadcrumbs", "", _dw(0.8, 0.5, "      gamma: 0.05\n"), _dw(0.8, 0.5, "      gamma: 0.05\n")),
    ),
    (
        "breadcrumbs_ties",
        _two("breadcrumbs_ties", "", _dw(0.8, 0.5, "      gamma: 0.05\n"), _dw(0.8, 0.5, "      gamma: 0.05\n")),
    ),
    (
        "della",
        _two("della", "  lambda: 1.0\n", _dw(0.5, 0.5, "      epsilon: 0.1\n"), _dw(0.5, 0.5, "      epsilon: 0.1\n")),
    ),
    (
        "della_linear",
        _two("della_linear", "", _dw(0.5, 0.5, "      epsilon: 0.1\n"), _dw(0.5, 0.5, "      epsilon: 0.1\n")),
    ),
    (
        "model_stock",
        "merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\ndtype: float32\n",
    ),
    (
        "model_stock_filter_wise",
        "merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\n"
        "parameters:\n  filter_wise: true\ndtype: float32\n",
    ),
    (
        "nuslerp",
        "merge_method: nuslerp\nmodels:\n  - model: {m1}\n"
        + _w(0.3)
        + "  - model: {m2}\n"
        + _w(0.7)
        + "dtype: float32\n",
    ),
    ("nuslerp_base", _two("nuslerp", "", _w(0.3), _w(0.7))),
    ("nuslerp_rowwise", _two("nuslerp", "  nuslerp_flatten: false\n  nuslerp_row_wise: true\n", _w(0.3), _w(0.7))),
    (
        "multislerp",
        "merge_method: multislerp\nmodels:\n  - model: {m1}\n"
        + _w(0.5)
        + "  - model: {m2}\n"
        + _w(0.3)
        + "  - model: {m3}\n"
        + _w(0.2)
        + "dtype: float32\n",
    ),
    ("multislerp_base", _two("multislerp", "", _w(0.6), _w(0.4))),
    ("karcher", "merge_method: karcher\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\ndtype: float32\n"),
    (
        "sce",
        "merge_method: sce\nbase_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\n"
        "parameters:\n  select_topk: 0.5\ndtype: float32\n",
    ),
    # t = 0.01 against |m1 - base| ≈ 0.016 on average: the per-entry weight t/|Δ| is clipped for some entries only
    (
        "nearswap",
        "merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {m1}\nparameters:\n  t: 0.01\ndtype: float32\n",
    ),
    (
        "arcee_fusion",
        "merge_method: arcee_fusion\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {m1}\ndtype: float32\n",
    ),
    ("ram", "merge_method: ram\nbase_model: {base}\nmodels:\n  - model: {s1}\n  - model: {s2}\ndtype: float32\n"),
    (
        "ramplus_tl",
        "merge_method: ramplus_tl\nbase_model: {base}\nmodels:\n  - model: {s1}\n  - model: {s2}\n"
        "parameters:\n  r: 0.1\n  alpha: 0.2\ndtype: float32\n",
    ),
    (
        "passthrough_scale",
        """
slices:
  - sources:
    - model: {m1}
      layer_range: [0, 6]
      parameters:
        scale:
          - filter: o_proj
            value: 0.5
          - filter: down_proj
            value: 0.5
          - value: 1.0
  - sources:
    - model: {m2}
      layer_range: [2, 8]
merge_method: passthrough
dtype: float32
""",
    ),
    (
        "slerp",
        "merge_method: slerp\nbase_model: {m1}\nmodels:\n  - model: {m1}\n  - model: {m2}\nparameters:\n  t: 0.3\ndtype: float32\n",
    ),
]
