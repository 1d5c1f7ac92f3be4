"""What made an output: the effective recipe and its inputs, saved as `modelops_recipe.yaml` beside the weights.

The file is what `modelops card` and the model card read. It never holds an absolute local path (a folder given
as /abs/path is recorded by its name and a hash of its safetensors headers) or a token.
"""

from __future__ import annotations

import hashlib
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelops.version import __version__

if TYPE_CHECKING:
    from modelops.checkpoint import Checkpoint

RECIPE_FILE = "modelops_recipe.yaml"


@dataclass(frozen=True)
class MethodDescription:
    """What a method is and which paper it follows: written once where the method lives (the merge registry, the
    LoRA operations) and handed to whoever describes an output (model cards), which never looks it up itself."""

    name: str
    title: str
    summary: str = ""
    paper: str = ""
    paper_url: str = ""


def public_spec(spec: str) -> str:
    """A model spec safe to publish: absolute local paths become their folder name."""
    path = Path(spec).expanduser()
    if path.is_absolute() or spec.startswith("~"):
        return path.name
    return spec


SAMPLE_BYTES = 1 << 16  # per window; three windows per weight file


def fingerprint_sha256(ck: Checkpoint) -> str:
    """A cheap content fingerprint: every tensor's name/shape/dtype, each file's size, and 64 KiB of its bytes at
    the start, the middle and the end. Two fine-tunes of one architecture differ here (a layout-only hash would
    not); reading ~200 KB per file keeps it instant on any model size.
    """
    h = hashlib.sha256()
    for name in sorted(ck.tensors):
        info = ck.tensors[name]
        h.update(f"{name}|{info.shape}|{info.dtype}\n".encode())
    for f in sorted(set(i.file for i in ck.tensors.values())):
        path = ck.folder / f
        size = path.stat().st_size
        h.update(f"{f}:{size}\n".encode())
        with path.open("rb") as fh:
            for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
                fh.seek(offset)
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()


def input_record(ck: Checkpoint, role: str) -> dict[str, Any]:
    src = ck.source
    return {
        "role": role,
        "source": public_spec(src.spec),
        "repo_id": src.repo_id,
        "revision": src.revision,
        "commit": src.commit,
        "fingerprint_sha256": fingerprint_sha256(ck),
    }


def sanitize_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    out = dict(recipe)
    if isinstance(out.get("base_model"), str):
        out["base_model"] = public_spec(out["base_model"])
    if isinstance(out.get("models"), list):
        out["models"] = [
            {**m, "model": public_spec(m["model"])} if isinstance(m, dict) and "model" in m else m
            for m in out["models"]
        ]
    return out


def write_recipe_file(
    folder: Path,
    recipe: dict[str, Any],
    inputs: list[dict[str, Any]],
    *,
    operation: str | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the effective recipe plus a `modelops:` provenance block."""
    block: dict[str, Any] = {"version": __version__}
    block["operation"] = operation or (extra or {}).get("operation") or "merge"
    block["inputs"] = inputs
    block["metrics"] = metrics or {}
    for key, value in (extra or {}).items():
        if key != "operation":
            block[key] = value
    data = {**sanitize_recipe(recipe), "modelops": block}
    path = folder / RECIPE_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def read_recipe_file(folder: Path) -> dict[str, Any] | None:
    path = folder / RECIPE_FILE
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux: VmHWM from /proc (ru_maxrss is inherited from the parent across fork+exec, so a small child of a big
    parent reports the parent's peak). Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
