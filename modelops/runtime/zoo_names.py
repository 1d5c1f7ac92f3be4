"""Zoo builds on disk, read-only: where they live, their manifests, and `zoo:ROLE` → that role's model folder.

Below the operations so that decode and eval can load zoo models by name without importing the zoo (which trains
them); the zoo writes what this reads (`MANIFEST`, `STAMP`) and imports those names from here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from modelops.cache import cache_root
from modelops.errors import ModelopsError, RecipeError

logger = logging.getLogger(__name__)

MANIFEST = "zoo.json"  # written last: a folder with it is a finished build
STAMP = "zoo_build.json"  # written first: a folder with only this is a build under way (or killed)

_ANNOUNCED: set[Path] = set()


def zoo_root() -> Path:
    """`$MODELOPS_CACHE/zoo`, else `~/.cache/modelops/zoo`."""
    return cache_root() / "zoo"


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelopsError(f"{folder}: no {MANIFEST}; build it with `modelops zoo build --out {folder}`")
    return json.loads(path.read_text())


def iter_models(manifest: dict) -> list[tuple[str, dict]]:
    """Flatten the roles: ("sft[facts]", meta), ("small_base", meta), ..."""
    rows = []
    for role, v in manifest["models"].items():
        if "path" in v:
            rows.append((role, v))
        else:
            rows.extend((f"{role}[{task}]", m) for task, m in v.items())
    return rows


def list_zoos(root: Path | None = None) -> list[tuple[Path, dict | None]]:
    """Every build folder under the cache root: (folder, manifest or None when unfinished)."""
    root = root or zoo_root()
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.iterdir()):
        if (d / MANIFEST).is_file():
            found.append((d, load_manifest(d)))
        elif (d / STAMP).is_file():
            found.append((d, None))
    return found


def find_zoo(zoo: Path | str | None = None) -> Path:
    """The zoo build to use: `zoo` if given, else the cached builds: newest full build, else newest mini build.

    "Newest" is the manifest's `built_at`. Errors in one line when nothing is built.
    """
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
