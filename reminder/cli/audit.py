"""`reminder audit verify` and `reminder audit export --loan ID`: the evidence trail.

`verify` walks the SHA-256 chain and exits 1 naming the first broken row; `export` prints
one loan's history (who was contacted, when, on which channel, and why) for a borrower's
or a regulator's question. Times are shown in the lender's timezone, JSON keeps UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, tzinfo
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import Connection, create_engine, select

from reminder.bootstrap import App
from reminder.cli.common import command, emit_json, err_console, out_console, state
from reminder.db.tables import audit_log, loans
from reminder.errors import InputError
from reminder.services import audit

JSON = typer.Option(False, "--json", help="Print one JSON document on stdout.")

audit_app = typer.Typer(
    help="The audit trail: verify its hash chain, export one loan's history.",
    no_args_is_help=True,
)


@contextmanager
def reading(app: App) -> Iterator[Connection]:
    """A connection for long reads. On SQLite not through the app's engine, whose every
    transaction is BEGIN IMMEDIATE: a verify of millions of rows would hold the write lock
    and time out the dispatcher; plain reads under WAL block no writer (the log only grows,
    so reading it in several statements is consistent)."""
    if app.engine.dialect.name != "sqlite":
        with app.engine.connect() as conn:
            yield conn
        return
    engine = create_engine(app.engine.url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def verify(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Check the whole hash chain; exit 1 and name the first broken row if it is broken."""
    app = state(ctx).app()
    with reading(app) as conn:
        result = audit.verify(conn)
        # ids run 1..n, so the last verified row is row `rows_checked`: its hash, noted
        # somewhere else, later proves that no row was cut off the end
        head = conn.execute(
            select(audit_log.c.hash).where(audit_log.c.id == result.rows_checked)
        ).scalar_one_or_none()
    if as_json:
        emit_json(asdict(result) | {"head_hash": head})
    elif result.ok:
        out_console.print(f"audit trail intact: {result.rows_checked} rows verified; "
                          f"head hash {head or '-'}", highlight=False)  # fmt: skip
    else:
        err_console.print(
            f"[red]audit trail broken[/red] at row {result.first_broken_id}: {result.problem} "
            f"({result.rows_checked} rows before it verified)",
            highlight=False,
        )
    if not result.ok:
        raise typer.Exit(1)


def describe(event: dict[str, Any], zone: tzinfo = UTC) -> str:
    """One line saying what happened, from the event's (PII-free) detail."""
    detail = dict(event["detail"])
    if event["kind"] == "decision":
        text = f"{detail.pop('stage', '')} {detail.pop('channel', '')}: {detail.pop('status', '')}"
        reason = detail.pop("reason", None)
        text += f" ({reason})" if reason else ""
        not_before = detail.pop("not_before", None)
        if not_before:
            when = datetime.fromisoformat(not_before).astimezone(zone)
            text += f", not before {when:%Y-%m-%d %H:%M %Z}"
        detail.pop("run_date", None)
    else:
        text = ""
    rest = ", ".join(
        f"{key} {'+'.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in sorted(detail.items())
        if value is not None
    )
    return f"{text}; {rest}" if text and rest else text or rest


def export(
    ctx: typer.Context,
    loan: str = typer.Option(..., "--loan", help="The loan whose history to print."),
    as_json: bool = JSON,
) -> None:
    """One loan's history in order: decisions, sends, statuses, replies, handoff."""
    app = state(ctx).app()
    with reading(app) as conn:
        borrower = conn.execute(
            select(loans.c.borrower_id).where(loans.c.loan_id == loan)
        ).scalar_one_or_none()
        events = audit.export_loan(conn, loan)
    if borrower is None and not events:
        raise InputError(f"no loan {loan!r}")
    if as_json:
        emit_json({"loan_id": loan, "borrower_id": borrower, "events": events})
        return
    zone = app.config.run.tz
    table = Table(title=f"Loan {loan} (borrower {borrower}): {len(events)} events")
    for name in ("#", "when", "event", "message", "what"):
        table.add_column(name)
    for event in events:
        table.add_row(
            str(event["id"]),
            event["at"].astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
            event["kind"],
            str(event["message_id"] or ""),
            describe(event, zone),
        )
    out_console.print(table)


def register(app: typer.Typer) -> None:
    audit_app.command("verify")(command(verify))
    audit_app.command("export")(command(export))
    app.add_typer(audit_app, name="audit")
