"""The demo's closing summary: rich tables a collections lead can read at a glance."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from sqlalchemy import func, select

from reminder.bootstrap import App
from reminder.cli.common import emit_json, out_console
from reminder.db.tables import cases, messages


def _totals(app: App) -> dict[str, Any]:
    with app.engine.connect() as conn:
        by_channel = conn.execute(
            select(messages.c.channel, messages.c.status, func.count())
            .group_by(messages.c.channel, messages.c.status)
        ).all()
        by_reason = conn.execute(
            select(messages.c.reason, func.count())
            .where(messages.c.status == "suppressed")
            .group_by(messages.c.reason)
            .order_by(func.count().desc())
        ).all()
        by_agency = conn.execute(
            select(cases.c.agency_id, func.count(), func.sum(cases.c.placed_balance))
            .group_by(cases.c.agency_id)
        ).all()
    return {
        "messages": [{"channel": c, "status": s, "count": n} for c, s, n in by_channel],
        "suppressed": {reason: n for reason, n in by_reason},
        "cases": [{"agency": a, "cases": n, "balance": str(b)} for a, n, b in by_agency],
    }


def report(
    app: App, counts: dict[str, int], summaries: list[dict[str, Any]], as_json: bool
) -> None:
    totals = _totals(app)
    last = summaries[-1] if summaries else {"stages": {}}
    if as_json:
        emit_json({"portfolio": counts, "days": summaries, "totals": totals})
        return
    stages = Table(title=f"Loans by stage on {last.get('date', '-')}")
    stages.add_column("stage")
    stages.add_column("loans", justify="right")
    for stage, n in last["stages"].items():
        stages.add_row(stage, str(n))
    out_console.print(stages)

    statuses = sorted({row["status"] for row in totals["messages"]})
    channels = Table(title="Messages over the month, by channel and status")
    channels.add_column("channel")
    for status in statuses:
        channels.add_column(status, justify="right")
    for channel in ("sms", "email", "voice"):
        found = {r["status"]: r["count"] for r in totals["messages"] if r["channel"] == channel}
        channels.add_row(channel, *(str(found.get(s, 0)) for s in statuses))
    out_console.print(channels)

    reasons = Table(title="Suppressed contacts, by reason")
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for reason, n in totals["suppressed"].items():
        reasons.add_row(reason, str(n))
    out_console.print(reasons)

    placed = Table(title="Cases placed with agencies")
    placed.add_column("agency")
    placed.add_column("cases", justify="right")
    placed.add_column("balance placed", justify="right")
    for row in totals["cases"]:
        placed.add_row(row["agency"], str(row["cases"]), row["balance"])
    out_console.print(placed)
    out_console.print(
        "Next: [bold]reminder explain LOAN_ID[/bold] (why a loan was or was not contacted), "
        "[bold]reminder messages --date D[/bold], [bold]reminder inbox[/bold] (replies that "
        "need a person), [bold]reminder handoff export[/bold]; the texts sent are in ./outbox/"
    )
