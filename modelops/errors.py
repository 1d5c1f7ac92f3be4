"""One exception family whose message is the single line a user sees.

Every message says what is wrong, where (file, tensor, shapes) and what to do. The CLI prints
`Error: <message>` and exits 1; the traceback is shown only with MODELOPS_DEBUG=1.
"""

from __future__ import annotations


class ModelopsError(Exception):
    """A user-facing failure: bad input, bad recipe, refused operation."""


class SourceError(ModelopsError):
    """A model source cannot be found, resolved or read."""


class CheckpointError(ModelopsError):
    """A checkpoint is unreadable, corrupt, or inconsistent with another."""


class RecipeError(ModelopsError):
    """A recipe field is missing, unknown or of the wrong type."""


class OutputError(ModelopsError):
    """The output location is unsafe (inside an input, non-empty without --overwrite)."""


class NumericsError(ModelopsError):
    """A NaN or inf appeared in a tensor."""


class Interrupted(KeyboardInterrupt):
    """Stopped by Ctrl-C (exit 130) or SIGTERM (exit 143); the message says what was kept and how to go on."""

    def __init__(self, message: str = "Interrupted.", code: int = 130) -> None:
        super().__init__(message)
        self.message, self.code = message, code
