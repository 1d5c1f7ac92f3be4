"""modelops: LLM model surgery and weak-to-strong transfer.

The public Python API is `modelops.api` (`from modelops import api; api.merge(...)`): every CLI command is one call
there. Importing this package stays cheap (no torch, no transformers) so that `modelops --help` starts fast.
"""

from __future__ import annotations

from modelops.errors import ModelopsError
from modelops.version import __version__

__all__ = ["ModelopsError", "__version__"]
