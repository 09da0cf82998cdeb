"""`reminder preview STAGE CHANNEL [--locale L]` (SPEC section 8)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the preview command to `app` (filled in by the channels work)."""
