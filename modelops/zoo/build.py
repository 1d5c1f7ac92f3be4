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
import time
from pathlib import Path
from typing import Any

from modelops.checkpoint.output import remove_stale_temps
from modelops.errors import ModelopsError, OutputError
from modelops.runtime.zoo_names import MANIFEST, STAMP, load_manifest, zoo_root
from modelops.version import __version__
from modelops.zoo.jobs import Builder, NullProgress, Progress
from modelops.zoo.presets import PRESETS, Preset
from modelops.zoo.world import TASK_INFO

logger = logging.getLogger(__name__)

FORMAT = 1
# The code a build's models and scores come from (paths under modelops/): editing any of it invalidates the cache.
# The runtime files are here because the zoo scores its models and samples its DPO pairs through the shared runner.
_CODE_FILES = (
    "zoo/world.py", "zoo/tokenizer.py", "zoo/train.py", "zoo/scores.py", "zoo/presets.py", "zoo/layout.py",
    "zoo/build.py", "zoo/jobs.py", "runtime/generate.py", "runtime/runner.py", "runtime/kvcache.py",
)  # fmt: skip


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ModelopsError(f"unknown zoo preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def code_version() -> str:
    """Hash of the zoo's own source: editing the world or the training code invalidates the cache."""
    h = hashlib.sha256(__version__.encode())
    here = Path(__file__).parent.parent
    for name in _CODE_FILES:
        h.update(name.encode() + (here / name).read_bytes())
    return h.hexdigest()[:16]


def build_hash(preset: Preset, seed: int) -> str:
    key = json.dumps({"preset": preset.to_dict(), "seed": seed, "code": code_version()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def default_out(preset: str = "mini", seed: int = 0) -> Path:
    return zoo_root() / build_hash(get_preset(preset), seed)


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
    remove_stale_temps(out)  # every model's, also those of models already complete (never written again)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread: fastest on small shared CPUs, and deterministic
    try:
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


def _write_manifest(out: Path, p: Preset, seed: int, digest: str, models: dict, builder: Any, run_s: float) -> None:
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
