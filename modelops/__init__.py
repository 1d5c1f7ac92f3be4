"""modelops: LLM model surgery and weak-to-strong transfer.

Importing the package is cheap on purpose (no torch, no transformers) so that `modelops --help` starts fast;
heavy modules are imported where they are used.
"""

from __future__ import annotations

from modelops.errors import ModelopsError

__version__ = "0.1.0"

__all__ = ["ModelopsError", "__version__"]
