"""Build the zoo: tokenizer, held-out sets, bases, SFT experts, DPO (partial + full), large SFTs, manifest.

Cached by content hash of (preset, seed, code): a finished build is found and returned at once. Each model is
written atomically (temp folder beside it, renamed at the end) together with its own `zoo_model.json`; a model
folder without that file is not complete and is rebuilt. A killed build therefore resumes from finished models,
and because every model's randomness comes from (seed, role) only, a resumed build equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from modelops import __version__
from modelops.cache import cache_root
from modelops.errors import ModelopsError, OutputError
from modelops.zoo.presets import PRESETS, Preset

logger = logging.getLogger(__name__)

MANIFEST = "zoo.json"
MODEL_META = "zoo_model.json"
STAMP = "zoo_build.json"
FORMAT = 1
_CODE_FILES = ("world.py", "tokenizer.py", "train.py", "scores.py", "presets.py", "build.py", "jobs.py")


class Progress(Protocol):
    """What the build reports: one bar per model (steps, loss)."""

    def start(self, name: str, total: int) -> None: ...
    def tick(self, loss: float) -> None: ...
    def finish(self, name: str, meta: dict) -> None: ...


class NullProgress:
    def start(self, name: str, total: int) -> None:
        pass

    def tick(self, loss: float) -> None:
        pass

    def finish(self, name: str, meta: dict) -> None:
        pass


def zoo_root() -> Path:
    """`$MODELOPS_CACHE/zoo`, else `~/.cache/modelops/zoo`."""
    return cache_root() / "zoo"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ModelopsError(f"unknown zoo preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def code_version() -> str:
    """Hash of the zoo's own source: editing the world or the training code invalidates the cache."""
    h = hashlib.sha256(__version__.encode())
    here = Path(__file__).parent
    for name in _CODE_FILES:
        h.update(name.encode() + (here / name).read_bytes())
    return h.hexdigest()[:16]


def build_hash(preset: Preset, seed: int) -> str:
    key = json.dumps({"preset": preset.to_dict(), "seed": seed, "code": code_version()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def default_out(preset: str = "mini", seed: int = 0) -> Path:
    return zoo_root() / build_hash(get_preset(preset), seed)


def sub_seed(seed: int, role: str) -> int:
    """Each model's randomness depends on (seed, role) only, so resumed and fresh builds are identical."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{role}".encode()).digest()[:4], "little")


def is_complete(folder: Path) -> bool:
    return (folder / MODEL_META).is_file() and (folder / "model.safetensors").is_file()


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelopsError(f"{folder}: no {MANIFEST}; build it with `modelops zoo build --out {folder}`")
    return json.loads(path.read_text())


def build_zoo(preset: str = "mini", seed: int = 0, out: Path | None = None, progress: Progress | None = None) -> Path:
    """Build (or find in the cache) the zoo for (preset, seed); returns the folder that holds `zoo.json`."""
    import torch

    p = get_preset(preset)
    digest = build_hash(p, seed)
    out = Path(out).expanduser().resolve() if out else default_out(preset, seed)
    if (out / MANIFEST).is_file():
        found = load_manifest(out).get("hash")
        if found == digest:
            logger.info("zoo %s (preset %s, seed %d) already built at %s", digest, preset, seed, out)
            return out
        raise OutputError(f"{out} holds a zoo with hash {found}, not {digest}; choose another --out or delete it")
    _claim(out, digest, p, seed)
    _sweep_temps(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread: fastest on small shared CPUs, and deterministic
    try:
        from modelops.zoo.jobs import Builder

        t0 = time.perf_counter()
        builder = Builder(p, seed, out, progress or NullProgress())
        models = builder.run()
        _write_manifest(out, p, seed, digest, models, builder, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return out


def _claim(out: Path, digest: str, p: Preset, seed: int) -> None:
    """Mark `out` as this build's folder; refuse a folder that holds anything else."""
    stamp = out / STAMP
    if stamp.is_file():
        found = json.loads(stamp.read_text()).get("hash")
        if found != digest:
            raise OutputError(
                f"{out} holds a partial zoo build {found}, not {digest}; choose another --out or delete it"
            )
        logger.info("resuming the zoo build in %s", out)
        return
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"{out} is not empty and is not a zoo build folder; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"hash": digest, "preset": p.name, "seed": seed}) + "\n")


def _sweep_temps(out: Path) -> None:
    """Remove the temp folders that killed runs left beside the model folders (their process is gone)."""
    from modelops.checkpoint.output import TMP_MARK

    for tmp in out.glob(f".*{TMP_MARK}*"):
        pid = tmp.name.split(TMP_MARK, 1)[1].split("-")[0]
        if tmp.is_dir() and not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            logger.info("removing %s, left by an interrupted build", tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_manifest(out: Path, p: Preset, seed: int, digest: str, models: dict, builder: Any, run_s: float) -> None:
    from modelops.zoo.world import TASK_INFO

    def total(tree: Any) -> float:
        if isinstance(tree, dict) and "seconds" in tree:
            return tree["seconds"]
        return sum(total(v) for v in tree.values()) if isinstance(tree, dict) else 0.0

    manifest = {
        "format": FORMAT,
        "hash": digest,
        "preset": p.name,
        "seed": seed,
        "modelops_version": __version__,
        "code_version": code_version(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(total(models) + builder.data_seconds, 1),
        "last_run_seconds": round(run_s, 1),
        "threads": 1,
        "tokenizer": "tokenizer",
        "vocab_size": builder.vocab_size,
        "reward": "modelops.zoo.world:reward",
        "tasks": {t: {**TASK_INFO[t], "eval": f"eval/{t}.jsonl", "n": builder.eval_sizes[t]} for t in p.tasks},
        "models": models,
        "config": p.to_dict(),
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)


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


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
