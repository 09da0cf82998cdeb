"""`reminder handoff export|import|report` (SPEC section 6).

`export` exits 1 when a file could not be delivered (the cases stay pending and the next
export sends the same file); `import` exits 1 when a row was rejected, like `reminder
import`; a missing credential or an unusable file is a usage error (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from reminder.cli.common import command, emit_json, err_console, out_console, state
from reminder.db.migrate import upgrade_to_head

JSON = typer.Option(False, "--json", help="Print one JSON document on stdout.")

handoff_app = typer.Typer(
    name="handoff", help="Agency handoff: placement files, outcomes, commission report.",
    no_args_is_help=True,
)  # fmt: skip


def export(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Send each agency its new placement and recall files (each case exactly once)."""
    from reminder.services.handoff_export import build_transports
    from reminder.services.handoff_export import export as run_export

    app = state(ctx).app()
    upgrade_to_head(app.engine)
    report = run_export(app, build_transports(app.config))
    if as_json:
        emit_json(report.as_dict())
    else:
        for sent in report.files:
            out_console.print(
                f"{sent.agency}: {sent.file_name} ({sent.kind}, {sent.row_count} cases, "
                f"balance {sent.total_balance}) -> {sent.location}", highlight=False,
            )  # fmt: skip
        if not report.files and not report.failed:
            out_console.print("nothing to send")
    for failure in report.failed:
        err_console.print(f"[red]not sent[/red] {failure['agency']}: {failure['file']}: "
                          f"{failure['error']}", highlight=False)  # fmt: skip
    if report.failed:
        raise typer.Exit(1)


def import_outcomes(
    ctx: typer.Context,
    agency: str = typer.Argument(..., help="The agency id of [[agencies]]."),
    file: Path = typer.Argument(..., help="Outcome file: CSV, or JSON Lines (.jsonl)."),
    as_json: bool = JSON,
) -> None:
    """Apply an agency's outcome file; rejected rows are listed, the rest applied."""
    from reminder.errors import InputError
    from reminder.services.outcomes import ingest, read_outcome_file

    app = state(ctx).app()
    if agency not in {a.id for a in app.config.agencies}:
        raise InputError(f"unknown agency {agency!r} (not in [[agencies]])")
    upgrade_to_head(app.engine)
    report = ingest(app, agency, read_outcome_file(file))
    if as_json:
        emit_json(report.as_dict())
    else:
        out_console.print(f"imported {report.imported}  unchanged {report.unchanged}  "
                          f"rejected {len(report.rejected)}")  # fmt: skip
        for rejection in report.rejected:
            err_console.print(f"{file}:{rejection.line}: {rejection.column or '(row)'}: "
                              f"{rejection.reason}", highlight=False)  # fmt: skip
    if report.rejected:
        raise typer.Exit(1)


def report(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Per agency: cases open/closed, placed, collected, rate, commission, stale cases."""
    from reminder.services.handoff_report import commission_report

    app = state(ctx).app()
    today = app.clock.now().astimezone(app.config.run.tz).date()
    with app.engine.connect() as conn:
        rows = commission_report(conn, app.config, today)
    if as_json:
        emit_json({"date": today, "agencies": rows})
        return
    print_report(rows, today.isoformat())


def print_report(rows: list[dict[str, Any]], day: str) -> None:
    table = Table(title=f"Agencies on {day}")
    headers = ("agency", "currency", "open", "closed", "placed", "collected", "rate",
               "commission", "stale")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header in ("agency", "currency") else "right")
    for row in rows:
        rate = row["collection_rate"]
        table.add_row(
            row["agency"], row["currency"] or "-", str(row["cases_open"]),
            str(row["cases_closed"]), str(row["balance_placed"]), str(row["collected"]),
            "-" if rate is None else f"{rate * 100:.2f}%", str(row["commission_owed"]),
            str(row["stale_cases"]),
        )  # fmt: skip
    out_console.print(table)


def register(app: typer.Typer) -> None:
    """Add the `handoff` sub-app to the main app."""
    handoff_app.command("export")(command(export))
    handoff_app.command("import")(command(import_outcomes))
    handoff_app.command("report")(command(report))
    app.add_typer(handoff_app, name="handoff")
