"""The core commands: init, run, messages, explain, demo, serve."""

from __future__ import annotations

import typer

from reminder.cli.common import command, state
from reminder.db.migrate import upgrade_to_head


def init(ctx: typer.Context) -> None:
    """Create the database, or migrate it to the newest schema."""
    app = state(ctx).app()
    upgrade_to_head(app.engine)
    typer.echo(f"database ready: {app.engine.url.render_as_string(hide_password=True)}")


def register(app: typer.Typer) -> None:
    app.command("init")(command(init))
