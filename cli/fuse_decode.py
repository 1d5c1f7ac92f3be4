"""Placeholder until its issue lands; replaced by the real command module."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Not implemented yet: registers nothing."""
