"""`reminder handoff export|import|report` (SPEC section 6)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the handoff commands to `app` (filled in by the handoff work)."""
