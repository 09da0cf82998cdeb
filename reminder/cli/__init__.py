"""`reminder [--config PATH] COMMAND`: the command line.

Exit codes: 0 success, 1 rejected input, 2 usage or config errors (the field is named).
Every reporting command takes `--json` and then prints exactly one JSON document.
Each area registers its commands from its own module (core, imports, handoff, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from reminder.cli import audit, core, forget, handoff, imports, preview, twoway, worker
from reminder.cli.common import State

app = typer.Typer(
    name="reminder",
    help="Collections and repayment reminders: staged SMS, email and voice, with reasons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="config.toml (default: $REMINDER_CONFIG, ./config.toml)"
    ),
) -> None:
    ctx.obj = State(config_path=config)


for module in (core, imports, handoff, preview, twoway, audit, forget, worker):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app(standalone_mode=True))
