"""Stopping a real `modelops` run part-way: the CLI in a subprocess, signalled after N calls of a method."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_until(args: list[str], stop: str, *, module: str, method: str, calls: int) -> subprocess.CompletedProcess:
    """Run `modelops ARGS` in a subprocess that sends itself SIG`stop` (KILL, INT, TERM) right after the `calls`-th
    call of `module.method` (e.g. "modelops.checkpoint.rows", "ResumableRows.add"): a shard recorded, a row kept."""
    cls, name = method.split(".")
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import {module} as target
        real, seen = target.{cls}.{name}, [0]
        def patched(self, *a, **kw):
            out = real(self, *a, **kw)
            seen[0] += 1
            if seen[0] == {calls}:
                os.kill(os.getpid(), signal.SIG{stop})
            return out
        target.{cls}.{name} = patched
        from modelops.cli.main import app
        app({args!r})
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
