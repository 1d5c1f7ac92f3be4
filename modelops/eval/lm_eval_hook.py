"""Makes `lm_eval --model modelops` work: lm-eval 0.4 has no plugin discovery for models, so this module, run at
interpreter start by the one-line `modelops-lm-eval.pth` that the package installs, waits for lm-eval's model
table to be imported and adds "modelops" to it as a lazy entry ("modelops.eval.lmeval:ModelopsLM").

It imports nothing at start-up (no torch, no lm-eval), and does nothing in a process that never imports
`lm_eval.models`. With an lm-eval whose registry differs, it stays silent and `modelops-lm-eval` still works.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any

WATCHED = "lm_eval.models"
ENTRY = ("modelops", "modelops.eval.lmeval:ModelopsLM")


def register() -> None:
    """Add the lazy "modelops" entry to lm-eval's model registry (once; never raises)."""
    try:
        from lm_eval.api.registry import model_registry

        if ENTRY[0] not in model_registry:
            model_registry.register(ENTRY[0], target=ENTRY[1])
    except Exception:  # another lm-eval layout: the explicit `modelops-lm-eval` remains
        return


class _AfterModels(MetaPathFinder):
    """Finds `lm_eval.models` like the path finder does, and registers once that module has run."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != WATCHED:
            return None
        spec = PathFinder.find_spec(name, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            register()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Watch for lm-eval's model table (or register now if it is already imported)."""
    if WATCHED in sys.modules:
        register()
    elif not any(isinstance(f, _AfterModels) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterModels())


install()
