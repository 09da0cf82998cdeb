"""`reminder serve` web part and `reminder inbox` (SPEC sections 5 and 7)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the inbox commands to `app` (filled in by the two-way work)."""
