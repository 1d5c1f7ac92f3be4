"""The process side of data-parallel evaluation: joining a torchrun group, leaving it, and exiting cleanly."""

from __future__ import annotations

from typing import Any


def distributed_state(device: str = "auto") -> Any:
    """accelerate's PartialState when launched with several processes (accelerate launch / torchrun), else None.

    On CPU it must be asked for explicitly (`cpu=True`): then it joins a gloo group from torchrun's environment.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def leave_process_group() -> None:
    """End this process's part in a torchrun group, if it joined one.

    Left to interpreter shutdown, gloo's threads are torn down in no fixed order and a process can abort
    ("terminate called without an active exception") after its work is done.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_worker_process() -> None:
    """Exit now if this is a torchrun worker whose work is done and written: skip interpreter teardown.

    Even after `leave_process_group`, a worker finishing while the others still work aborted about once in
    thirty CI runs (SIGABRT at exit, after its results were already sent); its output is complete by then, so
    the worker flushes and leaves without running the C++ static destructors.
    """
    import logging
    import os
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)
