"""What every command shares: lazy app construction, JSON output, error -> exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from reminder.bootstrap import App, bootstrap
from reminder.errors import ConfigError, InputError, RunInProgress

err_console = Console(stderr=True)
out_console = Console()


@dataclass
class State:
    config_path: Path | None
    _app: App | None = field(default=None, repr=False)

    def app(self) -> App:
        if self._app is None:
            self._app = bootstrap(config_path=self.config_path)
        return self._app


def state(ctx: typer.Context) -> State:
    return ctx.find_root().obj  # type: ignore[no-any-return]


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def emit_json(document: Any) -> None:
    """The one JSON document a `--json` command prints on stdout."""
    sys.stdout.write(json.dumps(document, default=_default, ensure_ascii=False, indent=2) + "\n")


def parse_date(value: str | None, option: str = "--date") -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=option) from exc


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our errors into a message on stderr and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        err_console.print(f"[red]config error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except RunInProgress as exc:
        err_console.print(f"[yellow]busy[/yellow] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    except InputError as exc:
        err_console.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


def command(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run the command body inside `user_errors`."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return function(*args, **kwargs)

    return wrapper
