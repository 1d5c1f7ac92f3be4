#!/usr/bin/env bash
# The prepared check for a lent GPU (docs/benchmarks.md#gpu): CUDA correctness, then throughput, as one table.
# Usage: bash scripts/gpu_check.sh [--dry]   (--dry: the same plumbing on CPU with tiny models, in seconds)
# It uses ./.venv when there is one; otherwise it installs modelops and its dependencies into the current Python
# from the package registry, keeping a CUDA build of torch that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  PY="${PYTHON:-python3}"
  "$PY" -c "import modelops" 2>/dev/null || "$PY" -m pip install -q -e .
fi
mkdir -p gpu-check
exec "$PY" scripts/gpu_check.py --json gpu-check/results.json "$@"
