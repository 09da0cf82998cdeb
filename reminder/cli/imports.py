"""`reminder import KIND FILE` (SPEC section 2)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the import command to `app` (filled in by the importer work)."""
