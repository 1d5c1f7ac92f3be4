"""The zoo as the public API: build (cached by content hash, resumable) and list the built-in model family."""

from __future__ import annotations

from modelops.runtime.zoo_names import iter_models, list_zoos, load_manifest, zoo_roles, zoo_root
from modelops.zoo.build import build_zoo
from modelops.zoo.layout import folder_bytes

__all__ = ["build_zoo", "folder_bytes", "iter_models", "list_zoos", "load_manifest", "zoo_roles", "zoo_root"]
