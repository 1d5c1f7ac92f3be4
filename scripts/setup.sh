#!/usr/bin/env bash
# Set up modelops in ./.venv: torch 2.13.0 (CPU wheel) first, so nothing else pulls a multi-GB CUDA build,
# then modelops itself (editable) with its test tools and the lm-eval and plots extras (their tests run in CI). Safe to re-run;
# fast when already set up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
log="$(mktemp)"
if ! .venv/bin/pip install -q -e ".[test,lm-eval,plots]" >"$log" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
  exit 1
fi
rm -f "$log"
# an editable install carries no top-level files: add the hook that lets `lm_eval --model modelops` work
.venv/bin/python -c "import shutil, sysconfig; shutil.copy('modelops-lm-eval.pth', sysconfig.get_paths()['purelib'])"
# the DLF search's C kernel is built once here (about a second) rather than inside the first DLF decode
.venv/bin/python -c "
import modelops.cli.main, torch
from modelops.decode import native
kernel = 'DLF kernel built (used with MODELOPS_NATIVE=1)' if native.library() else 'no C compiler: DLF uses its eager torch search'
print(f'modelops ready (torch {torch.__version__}; {kernel})')"
