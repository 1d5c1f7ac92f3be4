"""Running a command again in several processes (torchrun), with the options it was given."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def given_options(ctx: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The command's options as a command line (long names; unset and false options left out), from its context."""
    argv: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.param_type_name != "option" or param.name in skip or value in (None, False, [], ()):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            argv.append(flag)
        else:
            for item in value if param.multiple else [value]:
                argv += [flag, str(item)]
    return argv


def relaunch(n: int, module: str, argv: list[str]) -> int:
    """`python -m module argv` in n processes through torchrun (what `accelerate launch --multi_gpu` runs): each
    process joins accelerate's PartialState (gloo on CPU, nccl on GPUs). `accelerate launch --cpu` cannot start
    several CPU processes without MPI, so torchrun's `--standalone` rendezvous (a free port) is used directly."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m", module,
           *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(cmd, env=env)
