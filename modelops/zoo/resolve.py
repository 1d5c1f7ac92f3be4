"""Which zoo build a command means, and `zoo:ROLE` → that role's model folder (used by decode and eval)."""

from __future__ import annotations

import logging
from pathlib import Path

from modelops.errors import ModelopsError, RecipeError

logger = logging.getLogger(__name__)

_ANNOUNCED: set[Path] = set()


def find_zoo(zoo: Path | str | None = None) -> Path:
    """The zoo build to use: `zoo` if given, else the cached builds: newest full build, else newest mini build.

    "Newest" is the manifest's `built_at`. Errors in one line when nothing is built.
    """
    from modelops.zoo.build import MANIFEST, list_zoos, zoo_root

    if zoo is not None:
        folder = Path(zoo).expanduser()
        if not (folder / MANIFEST).is_file():
            raise ModelopsError(f"--zoo {folder}: no {MANIFEST} there; run `modelops zoo build --out {folder}`")
        return folder.resolve()
    builds = [(d, m) for d, m in list_zoos() if m is not None]
    if not builds:
        raise ModelopsError(f"no zoo build found under {zoo_root()}; run `modelops zoo build` (or pass --zoo DIR)")
    builds.sort(key=lambda dm: (dm[1].get("preset") == "full", dm[1].get("built_at", "")), reverse=True)
    chosen = builds[0][0]
    if chosen not in _ANNOUNCED:
        _ANNOUNCED.add(chosen)
        logger.info("using the zoo build %s (preset %s)", chosen, builds[0][1].get("preset"))
    return chosen


def zoo_roles(zoo: Path) -> dict[str, Path]:
    """Role name → model folder: `small_base`, `sft_facts` (also `sft[facts]`), `dpo_full`, `large_sft_facts`…"""
    from modelops.zoo.build import iter_models, load_manifest

    roles: dict[str, Path] = {}
    for name, meta in iter_models(load_manifest(zoo)):
        roles[name] = zoo / meta["path"]
        roles[meta["path"]] = zoo / meta["path"]
    return roles


def resolve_model(spec: str, zoo: Path | str | None = None) -> str:
    """`zoo:ROLE` → the folder of that role in the zoo build; anything else is returned unchanged."""
    if not spec.startswith("zoo:"):
        return spec
    folder = find_zoo(zoo)
    roles = zoo_roles(folder)
    role = spec[4:]
    if role not in roles:
        names = sorted(r for r in roles if "[" not in r)
        raise RecipeError(f"{spec}: no role {role!r} in the zoo build {folder}; roles: {', '.join(names)}")
    return str(roles[role])
