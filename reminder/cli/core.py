"""The core commands: init, run, messages, explain, demo, serve."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select

from reminder.cli.common import command, emit_json, err_console, out_console, parse_date, state
from reminder.db.migrate import upgrade_to_head
from reminder.db.tables import messages
from reminder.errors import InputError
from reminder.rendering import check_templates

JSON = typer.Option(False, "--json", help="Print one JSON document on stdout.")
DATE = typer.Option(None, "--date", help="Run date YYYY-MM-DD (default: today, lender's tz).")


def init(ctx: typer.Context) -> None:
    """Create the database, or migrate it to the newest schema."""
    app = state(ctx).app()
    upgrade_to_head(app.engine)
    typer.echo(f"database ready: {app.engine.url.render_as_string(hide_password=True)}")


def run(
    ctx: typer.Context,
    date_: str | None = DATE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Compute and report; write nothing."),
    as_json: bool = JSON,
) -> None:
    """One daily run: evaluate stages, plan, dispatch what is due now, hand off."""
    from reminder.services.daily_run import RunOptions, run_day

    app = state(ctx).app()
    upgrade_to_head(app.engine)
    check_templates(app.config)
    if not dry_run:
        app.check_channels()
    summary = run_day(app, RunOptions(run_date=parse_date(date_), dry_run=dry_run))
    if as_json:
        emit_json(summary)
    else:
        print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"Run {summary['date']}" + (" (dry run)" if summary.get("dry_run") else ""))
    table.add_column("stage")
    table.add_column("loans", justify="right")
    for stage, count in summary["stages"].items():
        table.add_row(stage, str(count))
    out_console.print(table)
    out_console.print(
        f"planned {summary['planned']}  sent {summary['sent']}  failed {summary['failed']}  "
        f"placed {summary['placed']}"
    )
    if summary["suppressed"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["suppressed"].items())
        out_console.print(f"suppressed: {reasons}")


def list_messages(
    ctx: typer.Context,
    date_: str | None = typer.Option(None, "--date", help="Only this run date."),
    loan: str | None = typer.Option(None, "--loan", help="Only this loan."),
    limit: int = typer.Option(0, "--limit", help="At most this many rows (0 = all)."),
    as_json: bool = JSON,
) -> None:
    """The message rows (all, or of one run date / loan)."""
    app = state(ctx).app()
    query = select(messages).order_by(messages.c.run_date, messages.c.loan_id, messages.c.channel)
    run_date = parse_date(date_)
    if run_date:
        query = query.where(messages.c.run_date == run_date)
    if loan:
        query = query.where(messages.c.loan_id == loan)
    if limit:
        query = query.limit(limit)
    zone = app.config.run.tz
    with app.engine.connect() as conn:
        rows = [
            {
                "loan_id": row["loan_id"],
                "run_date": row["run_date"].isoformat(),
                "stage": row["stage"],
                "channel": row["channel"],
                "status": row["status"],
                "reason": row["reason"],
                "not_before": row["not_before"].astimezone(zone).isoformat()
                if row["not_before"] else None,
                "body": row["body"],
                "provider_id": row["provider_id"],
            }
            for row in conn.execute(query).mappings()
        ]
    if as_json:
        emit_json(rows)
        return
    table = Table()
    for name in ("run_date", "loan_id", "stage", "channel", "status", "reason", "not before"):
        table.add_column(name, no_wrap=name in ("run_date", "not before"))
    for row in rows:
        when = (row["not_before"] or "")[:16].replace("T", " ")  # lender's local time
        table.add_row(*(str(row[k] or "") for k in
                        ("run_date", "loan_id", "stage", "channel", "status", "reason")), when)
    out_console.print(table)


def explain(
    ctx: typer.Context,
    loan_id: str = typer.Argument(..., help="The loan to explain."),
    date_: str | None = typer.Option(None, "--date", help="As of this date (default: today)."),
    as_json: bool = JSON,
) -> None:
    """Why this loan is (not) being contacted: stage, dpd, balance, every rule that applied."""
    from reminder.services.explain import explain as build

    app = state(ctx).app()
    result = build(app, loan_id, parse_date(date_))
    if not result.found:
        raise InputError(f"no loan {loan_id!r}")
    if as_json:
        emit_json(result.to_json())
        return
    out_console.print(f"[bold]Loan {loan_id}[/bold] as of {result.as_of} ({result.status}), "
                      f"borrower {result.borrower_id}")
    out_console.print(f"  oldest unpaid due date: {result.episode or '-'}   dpd: "
                      f"{result.dpd if result.episode else '-'}   overdue: {result.overdue}   "
                      f"stage: {result.stage or '-'}")
    for line in _rule_lines(result.rules):
        out_console.print(f"  - {escape(line)}", highlight=False)
    if result.messages:
        table = Table(title="recent messages")
        for name in ("run_date", "stage", "channel", "status", "reason"):
            table.add_column(name)
        for row in result.messages:
            table.add_row(*(str(row[k] or "") for k in
                            ("run_date", "stage", "channel", "status", "reason")))
        out_console.print(table)


def _rule_lines(rules: list[dict[str, Any]]) -> list[str]:
    """One line per rule; a policy rule that applies on several channels is named once."""
    lines: list[str] = []
    channels: dict[str, list[str]] = {}
    for rule in rules:
        if "channel" in rule:
            channels.setdefault(rule["rule"], []).append(rule["channel"])
    for rule in rules:
        if "channel" not in rule:
            lines.append(f"{rule['rule']}: {rule['text']}")
        elif rule["rule"] in channels:
            on = ", ".join(channels.pop(rule["rule"]))
            lines.append(f"{rule['rule']} ({on}): {rule['text']}")
    return lines


def demo(
    ctx: typer.Context,
    borrowers: int = typer.Option(3000, "--borrowers", help="How many borrowers to generate."),
    days: int = typer.Option(30, "--days", help="How many daily runs to replay."),
    as_json: bool = JSON,
) -> None:
    """Generate a realistic portfolio and replay a month of daily runs (empty database)."""
    from reminder.cli.demo_report import report
    from reminder.services.demo import generate, replay

    app = state(ctx).app()
    upgrade_to_head(app.engine)
    with app.engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(messages)).scalar_one():
            raise InputError(
                "the database already has messages: run the demo on an empty database "
                "(delete reminder.db, or point --config / REMINDER_DATABASE_URL elsewhere)"
            )
    start = app.clock.now().astimezone(app.config.run.tz).date() - timedelta(days=days)
    counts = generate(app, start, borrowers)
    if not as_json:
        err_console.print(f"generated {counts['borrowers']} borrowers, {counts['loans']} loans; "
                          f"replaying {days} days from {start}")
    summaries = replay(app, start, days, None if as_json else _progress_line)
    report(app, counts, summaries, as_json)


def _progress_line(summary: dict[str, Any]) -> None:
    err_console.print(
        f"  {summary['date']}: planned {summary['planned']:>4}  sent {summary['sent']:>4}  "
        f"suppressed {sum(summary['suppressed'].values()):>4}  placed {summary['placed']:>3}",
        highlight=False,
    )


def serve(
    ctx: typer.Context,
    no_dispatch: bool = typer.Option(False, "--no-dispatch", help="Only the scheduler."),
    no_web: bool = typer.Option(False, "--no-web", help="No webhook server."),
) -> None:
    """The scheduler (the daily run at the configured time), dispatcher and webhook server."""
    from reminder.scheduler import serve as run_service

    app = state(ctx).app()
    upgrade_to_head(app.engine)
    check_templates(app.config)
    app.check_channels()
    run_service(app, dispatch=not no_dispatch, web=not no_web)


def register(app: typer.Typer) -> None:
    app.command("init")(command(init))
    app.command("run")(command(run))
    app.command("messages")(command(list_messages))
    app.command("explain")(command(explain))
    app.command("demo")(command(demo))
    app.command("serve")(command(serve))


__all__ = ["register", "date"]
