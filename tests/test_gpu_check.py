"""The prepared GPU check, run in its dry mode on CPU: its plumbing works, and its correctness checks pass on tiny
float32 models (weight-0 fusion = the large model's own generate, speculative = plain, scores = a full forward,
a merge on the chosen device = the CPU merge)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_cpu_in_its_dry_mode(tmp_path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [name.split(" (")[0] for name, _, _ in data["checks"]] == [
        "weight-0 fused EFT = large `generate`", "weight-0 fused EFT = large `generate`",
        "speculative EFT", "weight-0 scores = log_softmax of a full forward", "TIES merge with --device cpu = CPU merge",
    ]  # fmt: skip
    assert all(ok for _, _, ok in data["checks"])
    assert [(r["vocab"], r["batch"]) for r in data["throughput"]] == [(1000, 1), (1000, 8), (2000, 1), (2000, 8)]
    names = ("sum of own loops", "large alone", "fused EFT", "fused DLF", "speculative EFT K=4")
    assert all(r[k] > 0 for r in data["throughput"] for k in names)
    assert all(r["syncs per fused step"] == r["syncs per speculative token"] == "n/a (CPU)" for r in data["throughput"])
    assert "| check | result | ok |" in proc.stdout and "FAILED" not in proc.stdout
