"""`reminder import KIND FILE` (SPEC section 2).

Exit 0 when every row was imported or unchanged, 1 when any row was rejected, 2 when the
file cannot be used at all (unreadable, not UTF-8, a required header missing, unknown KIND
or format). `--json` prints the summary document and nothing else on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from reminder.cli.common import command, emit_json, err_console, state
from reminder.errors import InputError
from reminder.services.import_rows import KINDS
from reminder.services.importer import ImportReport, import_file
from reminder.services.importer import Progress as OnProgress

SHOWN_REJECTIONS = 20


def import_(
    ctx: typer.Context,
    kind: str = typer.Argument(
        ..., metavar="KIND", help="borrowers, loans, installments or payments"
    ),
    file: Path = typer.Argument(..., metavar="FILE", help="CSV with a header row, or JSON Lines"),
    fmt: str | None = typer.Option(
        None, "--format", help="csv or jsonl (default: by extension, .jsonl/.ndjson = jsonl)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON summary on stdout"),
) -> None:
    """Import (upsert) borrowers, loans, installments or payments from FILE."""
    if kind not in KINDS:
        raise InputError(f"KIND: unknown kind {kind!r} (use {', '.join(KINDS)})")
    engine = state(ctx).app().engine
    with _progress(enabled=not as_json, file=file) as on_progress:
        report = import_file(engine, kind, file, fmt=fmt, on_progress=on_progress)
    for warning in report.warnings:
        err_console.print(f"[yellow]warning[/yellow] {warning}", highlight=False)
    if as_json:
        emit_json(report.as_json())
    else:
        _print_summary(report)
    raise typer.Exit(1 if report.rejected_rows else 0)


@contextmanager
def _progress(*, enabled: bool, file: Path) -> Iterator[OnProgress | None]:
    """A bar over the bytes read, on a terminal only (never in pipes, logs or --json)."""
    if not (enabled and sys.stdout.isatty() and err_console.is_terminal):
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"importing {file.name}", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _print_summary(report: ImportReport) -> None:
    """One line on stdout; the first rejections as a table on stderr."""
    count = report.rejected_rows
    rejected = f", {count:,} row{'s' if count > 1 else ''} rejected" if count else ""
    typer.echo(
        f"{report.file}: {report.imported:,} imported, {report.unchanged:,} unchanged"
        f"{rejected} ({report.kind}, {report.seconds:.1f} s)"
    )
    if not report.rejected:
        return
    table = Table("file:line", "column", "reason", title="rejected rows", title_justify="left")
    for rejection in report.rejected[:SHOWN_REJECTIONS]:
        table.add_row(f"{report.file}:{rejection.line}", rejection.column or "", rejection.reason)
    err_console.print(table)
    more = report.rejected_total - SHOWN_REJECTIONS
    if more > 0:
        err_console.print(f"... and {more:,} more: run with --json to see them all")


def register(app: typer.Typer) -> None:
    """Add the import command to `app`."""
    app.command("import")(command(import_))
