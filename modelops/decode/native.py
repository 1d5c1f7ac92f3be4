"""The DLF search's native kernel (dlf_kernel.c): opt-in (MODELOPS_NATIVE=1), built on first use with the system's C
compiler, cached.

Eager torch spends most of the search in dispatch and in passes over memory (five full-vocabulary exponentials,
each one a separate read and write of every row). The kernel does each row's whole search in one call, with the
row's logits kept in cache. That pays on small models; at a 135M model's shape the eager search is already under 4%
of a fused step, so the kernel is off unless asked for. Without a compiler or off CPU the eager search runs;
both follow the same certificates and are tested against the same float64 reference.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

from modelops.cache import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("dlf_kernel.c")
FLAGS = ["-O3", "-fPIC", "-shared"]
TUNED = ["-march=native"]  # tried first; a compiler or CPU without it gets the portable build
MAX_COMPONENTS = 8  # large, base and up to six experts (the kernel's fixed-size arrays)
P = ctypes.c_void_p


def enabled() -> bool:
    """Whether MODELOPS_NATIVE asks for the kernel (1/true/yes/on); it is off by default."""
    return os.environ.get("MODELOPS_NATIVE", "0").strip().lower() in {"1", "true", "yes", "on"}


def _cpu_signature() -> str:
    """What -march=native depends on: a cache shared between machines must not hand one CPU another's build."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


def _compile(compiler: str, flags: list[str], target: Path) -> bool:
    """Build into a temporary file beside `target`, then rename: concurrent processes never load half a library."""
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        done = subprocess.run(
            [compiler, *flags, "-o", str(partial), str(SOURCE)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log.debug("%s %s failed: %s", compiler, " ".join(flags), done.stderr.strip())
            return False
        os.replace(partial, target)
        return True
    except (OSError, subprocess.SubprocessError) as err:
        log.debug("%s failed: %s", compiler, err)
        return False
    finally:
        partial.unlink(missing_ok=True)


@cache
def library() -> ctypes.CDLL | None:
    """The built kernel, or None (no compiler, or the build failed); built once per machine and source."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        log.info("no C compiler found: the DLF search uses its eager torch passes")
        return None
    key = hashlib.sha256(
        b"\0".join(
            [SOURCE.read_bytes(), compiler.encode(), " ".join(FLAGS + TUNED).encode(), _cpu_signature().encode()]
        )
    ).hexdigest()[:20]
    target = cache_root() / "native" / f"dlf_kernel_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (_compile(compiler, FLAGS + TUNED, target) or _compile(compiler, FLAGS, target)):
            log.warning("could not build %s with %s: the DLF search uses its eager torch passes", SOURCE.name, compiler)
            return None
    lib = ctypes.CDLL(str(target))
    lib.dlf_search.restype = ctypes.c_int
    lib.dlf_search.argtypes = [P, P, ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_int, P, P, P, P, P]
    lib.dlf_search.argtypes += [ctypes.c_int, ctypes.c_long, P, P, P, P]
    lib.dlf_first_near_min.restype = ctypes.c_long
    lib.dlf_first_near_min.argtypes = [P, ctypes.c_long]
    return lib


def usable(comps: list[torch.Tensor]) -> bool:
    """Whether the kernel can take these (rows, V) logits: CPU float32 with contiguous rows, few enough models."""
    return (
        len(comps) <= MAX_COMPONENTS
        and all(
            c.device.type == "cpu" and c.dtype == torch.float32 and c.dim() == 2 and c.stride(-1) == 1 for c in comps
        )
        and library() is not None
    )


class NativePlan:
    """The candidate grid as the kernel reads it, built once per search."""

    def __init__(self, candidates: torch.Tensor, directions, zero_column: int | None) -> None:
        starts = [0]
        for d in directions:
            starts.append(starts[-1] + len(d.magnitudes))
        self.candidates = candidates.to(torch.float32).contiguous()  # (C, T): the fused row's weights
        self.n_dirs, self.zero = len(directions), -1 if zero_column is None else zero_column
        self.expert = torch.tensor([d.expert for d in directions], dtype=torch.int32)
        self.sign = torch.tensor([d.sign for d in directions], dtype=torch.float32)
        self.start = torch.tensor(starts, dtype=torch.int32)
        self.mags = torch.tensor([m for d in directions for m in d.magnitudes], dtype=torch.float64)
        self.cols = torch.tensor([c for d in directions for c in d.columns], dtype=torch.int64)


def search(
    comps: list[torch.Tensor], plan: NativePlan, fuse: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(objective (rows, C) float64, +inf where a certificate ruled the candidate out; each row's choice, the
    first candidate within rounding of its minimum (dlf.first_near_minimum); z_L + Σ_t w_t·(z_t − z_S−) with that
    row's weights if `fuse`, non-finite deltas counted as 0), or None for logits the kernel leaves to the eager
    passes (NaN, +inf, or a row with no finite logit)."""
    lib = library()
    assert lib is not None
    rows, width = comps[0].shape
    n_cands = plan.candidates.shape[0]
    objective = torch.full((rows, n_cands), float("inf"), dtype=torch.float64)
    choice = torch.empty(rows, dtype=torch.int64)
    fused = torch.empty(rows, width, dtype=torch.float32) if fuse else None
    ptrs = (ctypes.c_void_p * len(comps))(*[c.data_ptr() for c in comps])
    strides = (ctypes.c_long * len(comps))(*[c.stride(0) for c in comps])
    status = lib.dlf_search(
        ptrs, strides, len(comps), rows, width, plan.n_dirs, plan.expert.data_ptr(), plan.sign.data_ptr(),
        plan.start.data_ptr(), plan.mags.data_ptr(), plan.cols.data_ptr(), plan.zero, n_cands,
        objective.data_ptr(), plan.candidates.data_ptr(), choice.data_ptr(), fused.data_ptr() if fuse else None,
    )  # fmt: skip
    return (objective, choice, fused) if status == 0 else None
