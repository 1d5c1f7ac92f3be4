"""The value a recipe parameter takes for one tensor: mergekit's gradient, filter and fall-through rules.

- A scalar is used as it is.
- A list of numbers is a gradient: interpolated linearly at the tensor's depth t in [0, 1] (index t·(n−1)).
  true/false count as 1/0 there, as mergekit's config parser reads them (a switch is on where the value is
  non-zero); any other list steps (entry int(t·(n−1))).
- A filter list `[{filter: mlp, value: ...}, {value: ...}]` takes the first entry whose filter is absent, `*`,
  or a substring of the tensor's name. When none matches, the parameter is unset at that level.
- Lookup order (first set value wins): the model's own entry in the slice (`models[].parameters`), the slice's
  `parameters`, the recipe's `parameters`, then the method's default.
- Depth t: layer i of a slice of n layers is i/(n−1) (1 when n = 1); every tensor outside the layers (embeddings,
  final norm, lm_head) is at t = 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Setting = Any  # scalar | list[scalar] | {filter, value} | list[{filter, value}]


def evaluate_setting(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value of one setting for `tensor_name` at depth `t`, or None when a filter list has no match."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if all(isinstance(v, (int, float)) for v in setting):
        setting = [float(v) for v in setting]
        scaled = t * (len(setting) - 1)
        lo = int(scaled)
        hi = min(len(setting) - 1, lo + 1)
        frac = scaled - lo
        return (1 - frac) * setting[lo] + frac * setting[hi]
    if all(not isinstance(v, (dict, list)) for v in setting):
        return setting[int(t * (len(setting) - 1))]
    for cond in setting:
        filt = cond.get("filter") if isinstance(cond, dict) else None
        if filt is None or filt == "*" or (tensor_name and filt in tensor_name):
            return evaluate_setting(cond.get("value") if isinstance(cond, dict) else cond, tensor_name, t)
    return None


def resolve(
    name: str,
    tensor_name: str,
    t: float,
    levels: list[Mapping[str, Setting] | None],
) -> Any:
    """The first level (most specific first) where `name` is set and evaluates to a value; None if none does."""
    for level in levels:
        if level and name in level:
            value = evaluate_setting(level[name], tensor_name, t)
            if value is not None:
                return value
    return None
