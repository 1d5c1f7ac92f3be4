"""Describing and publishing what the operations wrote: model cards and Hub pushes.

Operations know nothing of cards; they hand the finished folder to `card_writer(...)` just before it is
published, so the card lands atomically with the weights. Each method's words live once, where the method lives
(the merge registry, the LoRA operations); `describe_method` is the one place that looks them up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.errors import RecipeError
from modelops.hub.card import ALPHA_CURVE_PNG, build_model_card, write_model_card
from modelops.hub.push import PushResult
from modelops.hub.push import push_folder as push
from modelops.lora import apply as lora_apply
from modelops.lora import extract as lora_extract
from modelops.merge.methods import get_method
from modelops.plots import alpha_curve_png, alpha_trace_png
from modelops.provenance import MethodDescription, read_recipe_file

__all__ = [
    "OPERATION_DESCRIPTIONS", "PushResult", "alpha_curve_png", "alpha_trace_png", "build_card", "card_writer",
    "describe_method", "push", "write_card",
]  # fmt: skip

OPERATION_DESCRIPTIONS = {d.name: d for d in (lora_extract.DESCRIPTION, lora_apply.DESCRIPTION)}


def describe_method(name: str) -> MethodDescription | None:
    """The method or operation by name (a merge method, an alias, extract-lora, apply-lora), or None if unknown."""
    if name in OPERATION_DESCRIPTIONS:
        return OPERATION_DESCRIPTIONS[name]
    try:
        return get_method(name).description()
    except RecipeError:
        return None


def _folder_method(folder: Path) -> MethodDescription | None:
    """The description of the method recorded in `folder`'s recipe file (None when the file names none)."""
    try:
        recipe = read_recipe_file(folder) or {}
    except Exception:  # unreadable recipe: the card builder reports it in one line
        return None
    block = recipe.get("modelops") if isinstance(recipe, dict) else None
    name = recipe.get("merge_method") if isinstance(recipe, dict) else None
    name = name or (block.get("operation") if isinstance(block, dict) else None)
    return describe_method(str(name)) if name else None


def _alpha_curve(folder: Path) -> dict[str, Any] | None:
    """The α search recorded in the folder's recipe ({"search", "points"}), if any."""
    try:
        block = (read_recipe_file(folder) or {}).get("modelops") or {}
    except Exception:  # unreadable recipe: the card builder reports it
        return None
    search = (block.get("metrics") or {}).get("alpha_search") if isinstance(block, dict) else None
    if not isinstance(search, dict) or not search.get("curve"):
        return None
    return {"search": search, "points": search["curve"]}


def build_card(folder: Path, *, template: Path | None = None, extra_text: str | None = None) -> Any:
    """The `huggingface_hub.ModelCard` for a folder modelops wrote (not written)."""
    folder = Path(folder)
    return build_model_card(folder, method=_folder_method(folder), template=template, extra_text=extra_text)


def write_card(folder: Path, *, template: Path | None = None, extra_text: str | None = None) -> Path:
    """(Re)write `folder/README.md` from the folder's recipe file, offline; returns the card's path. An α search
    recorded there gets its curve drawn beside it (`alpha_curve.png`, shown by the card) when matplotlib is
    installed."""
    folder = Path(folder)
    curve = _alpha_curve(folder)
    if curve and not (folder / ALPHA_CURVE_PNG).is_file():
        search = curve["search"]
        alpha_curve_png(
            curve["points"], folder / ALPHA_CURVE_PNG, metric=f"{search.get('task')} ({search.get('metric')})"
        )
    return write_model_card(folder, method=_folder_method(folder), template=template, extra_text=extra_text)


def card_writer(enabled: bool = True) -> Callable[[Path], None] | None:
    """The hook operations call on their complete temp folder: writes the model card there (None: no card)."""
    return write_card if enabled else None
