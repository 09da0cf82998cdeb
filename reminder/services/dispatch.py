"""The dispatcher: sends planned messages whose `not_before` has come, never twice.

A send is three committed steps. (1) Claim: the due rows of one borrower, channel and
run date move `planned -> sending` together with a shared `batch_key` (one consolidated
message). (2) Re-check and send: the policy is evaluated again (a payment at 07:30 cancels
the 08:00 SMS), the text is rendered and handed to the channel's adapter. (3) Record: the
rows become `sent` with the provider's id, or go back to `planned` (transient error) or
end `failed` (permanent error). A row left in `sending` by a crash is reconciled through
the adapter's `lookup(reference)` when it has one, else marked `unknown` for a person.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, tuple_, update

from reminder.bootstrap import App
from reminder.db.tables import borrowers, contact_flags, loans, messages
from reminder.errors import PermanentSendError, TransientSendError
from reminder.ports import OutgoingMessage, SendResult
from reminder.rendering import LoanLine, Renderer
from reminder.services.evaluation import loan_state
from reminder.services.policy import PolicyInputs, suppression_reason

log = logging.getLogger(__name__)
GROUP = (messages.c.borrower_id, messages.c.channel, messages.c.run_date)


@dataclass
class DispatchReport:
    sent: int = 0
    failed: int = 0
    cancelled: int = 0
    deferred: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: DispatchReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.deferred += other.deferred
        self.errors.extend(other.errors)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mask(address: str) -> str:
    """A phone number or email address as logs may show it."""
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}" if len(address) > 5 else "***"


def claim(conn: Connection, now: datetime, limit: int, worker: str) -> list[dict[str, Any]]:
    """Move up to `limit` due groups to `sending`; returns the claimed rows.

    A group (borrower, channel, run date) is claimed through its *leader*, the planned row
    with the smallest id: workers lock leaders with SKIP LOCKED on PostgreSQL, so two
    workers never split one borrower's consolidated message between them.
    """
    peer = messages.alias("peer")
    leader_id = (
        select(func.min(peer.c.id))
        .where(
            peer.c.borrower_id == messages.c.borrower_id,
            peer.c.channel == messages.c.channel,
            peer.c.run_date == messages.c.run_date,
            peer.c.status == "planned",
        )
        .scalar_subquery()
    )
    leaders = (
        select(*GROUP)
        .where(
            messages.c.status == "planned",
            messages.c.not_before <= now,
            messages.c.id == leader_id,
        )
        .order_by(messages.c.not_before, messages.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        leaders = leaders.with_for_update(skip_locked=True)
    keys = {tuple(row) for row in conn.execute(leaders)}
    if not keys:
        return []
    # Fetch by borrower (one IN list), keep the exact groups: cheaper than a tuple IN.
    candidates = conn.execute(
        select(messages).where(
            messages.c.borrower_id.in_(sorted({key[0] for key in keys})),
            messages.c.status == "planned",
            messages.c.not_before <= now,
        )
    ).mappings()
    rows = [
        dict(row) for row in candidates
        if (row["borrower_id"], row["channel"], row["run_date"]) in keys
    ]
    batch_of: dict[tuple[Any, ...], str] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        key = (row["borrower_id"], row["channel"], row["run_date"])
        batch_of.setdefault(key, f"{row['run_date']:%Y%m%d}-{row['channel']}-{row['id']}")
        row["batch_key"] = batch_of[key]
    conn.execute(
        update(messages)
        .where(messages.c.id == bindparam("row_id"), messages.c.status == "planned")
        .values(
            status="sending",
            batch_key=bindparam("row_batch"),
            claimed_by=worker,
            attempts=messages.c.attempts + 1,
            updated_at=now,
        ),
        [{"row_id": row["id"], "row_batch": row["batch_key"]} for row in rows],
    )
    return rows


def recheck(
    conn: Connection, app: App, rows: list[dict[str, Any]], today: date, now: datetime
) -> dict[int, tuple[str, dict[str, Any] | None]]:
    """For each claimed row: the reason it must not go out now (or None), and loan state."""
    ids = [row["id"] for row in rows]
    loan_ids = sorted({row["loan_id"] for row in rows})
    state = loan_state(app.config, today, loan_ids).subquery("state")
    reason = suppression_reason(
        PolicyInputs(
            loan_id=messages.c.loan_id,
            loan_status=loans.c.status,
            borrower_id=messages.c.borrower_id,
            channel=messages.c.channel,
        ),
        app.config,
        today,
        now,
    )
    query = (
        select(
            messages.c.id,
            reason.label("reason"),
            state.c.episode,
            state.c.overdue_cents,
            borrowers.c.name,
            borrowers.c.phone,
            borrowers.c.email,
            loans.c.currency,
        )
        .join(loans, loans.c.loan_id == messages.c.loan_id)
        .join(borrowers, borrowers.c.borrower_id == messages.c.borrower_id)
        .outerjoin(state, state.c.loan_id == messages.c.loan_id)
        .where(messages.c.id.in_(ids))
    )
    by_id = {row["id"]: row for row in rows}
    decided: dict[int, tuple[str, dict[str, Any] | None]] = {}
    for found in conn.execute(query).mappings():
        message = by_id[found["id"]]
        why = found["reason"]
        if why is None and found["episode"] != message["episode"]:
            why = "no_longer_due"
        decided[found["id"]] = (why, dict(found))
    return decided


def _outgoing(
    app: App, renderer: Renderer, group: list[dict[str, Any]], info: dict[str, Any]
) -> OutgoingMessage:
    channel = group[0]["channel"]
    locale = group[0]["locale"] or app.config.run.default_locale
    lines = [
        LoanLine(
            loan_id=row["loan_id"],
            currency=row["_info"]["currency"],
            amount=_amount(row),
            due_date=row["episode"],
            dpd=row["dpd"],
            stage=row["stage"],
        )
        for row in group
    ]
    lead = max(lines, key=lambda line: line.dpd)
    context = renderer.context({"name": info["name"]}, lines, locale)
    rendered = renderer.render(channel, lead.stage, locale, context)
    to = info["email"] if channel == "email" else info["phone"]
    headers: dict[str, str] = {}
    if channel == "email" and app.config.lender.unsubscribe_url:
        headers["List-Unsubscribe"] = f"<{app.config.lender.unsubscribe_url}>"
    return OutgoingMessage(
        message_ids=tuple(row["id"] for row in group),
        channel=channel,
        to=to,
        body=rendered.body,
        subject=rendered.subject,
        html=rendered.html,
        locale=locale,
        reference=group[0]["batch_key"],
        headers=headers,
    )


def _amount(row: dict[str, Any]) -> Any:
    from reminder.db.types import from_cents

    cents = row["_info"]["overdue_cents"] or 0
    if row["dpd"] < 0 or cents == 0:
        # upcoming: what falls due next is not yet "overdue"; show the installment due
        return row["_due_cents_decimal"]
    return from_cents(cents)


def _record(conn: Connection, ids: list[int], now: datetime, **values: Any) -> None:
    conn.execute(
        update(messages).where(messages.c.id.in_(ids)).values(updated_at=now, **values)
    )


def _opt_out(conn: Connection, borrower_id: str, channel: str, now: datetime, code: str) -> None:
    conn.execute(
        contact_flags.insert().values(
            borrower_id=borrower_id,
            kind="opt_out",
            channel=channel,
            source=f"provider:{code}",
            note="the provider reports the recipient unsubscribed",
            created_at=now,
        )
    )


def dispatch_due(app: App, now: datetime | None = None, *, batch: int = 200) -> DispatchReport:
    """Send everything due at `now` (default: the clock), batch after batch."""
    now = now or app.clock.now()
    today = now.astimezone(app.config.run.tz).date()
    renderer = Renderer(app.config)
    worker = worker_name()
    report = DispatchReport()
    while True:
        with app.engine.begin() as conn:
            rows = claim(conn, now, batch, worker)
        if not rows:
            return report
        report.add(_send_claimed(app, renderer, rows, today, now))


def _send_claimed(
    app: App, renderer: Renderer, rows: list[dict[str, Any]], today: date, now: datetime
) -> DispatchReport:
    report = DispatchReport()
    with app.engine.begin() as conn:
        decided = recheck(conn, app, rows, today, now)
        due_cents = _next_due_cents(conn, rows)
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            why, info = decided[row["id"]]
            if why is not None:
                _record(conn, [row["id"]], now, status="suppressed", reason=why)
                report.cancelled += 1
                continue
            row["_info"] = info
            row["_due_cents_decimal"] = due_cents.get(row["loan_id"])
            groups[row["batch_key"]].append(row)
    for group in groups.values():
        report.add(_send_group(app, renderer, group, now))
    return report


def _next_due_cents(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For upcoming reminders: the amount of the installment falling due on the episode."""
    from reminder.db.tables import installments

    keys = {(row["loan_id"], row["episode"]) for row in rows}
    query = select(installments.c.loan_id, installments.c.due_date, installments.c.amount_due)
    query = query.where(tuple_(installments.c.loan_id, installments.c.due_date).in_(list(keys)))
    return {loan_id: amount for loan_id, _, amount in conn.execute(query)}


def _send_group(
    app: App, renderer: Renderer, group: list[dict[str, Any]], now: datetime
) -> DispatchReport:
    report = DispatchReport()
    ids = [row["id"] for row in group]
    info = group[0]["_info"]
    channel = group[0]["channel"]
    try:
        outgoing = _outgoing(app, renderer, group, info)
    except Exception as exc:  # a template or data problem: this group fails, others go on
        with app.engine.begin() as conn:
            _record(conn, ids, now, status="failed", error=f"render: {exc}", error_code="render")
        report.failed += len(ids)
        report.errors.append(f"render {group[0]['batch_key']}: {exc}")
        return report
    try:
        result: SendResult = app.sender(channel).send(outgoing)
    except TransientSendError as exc:
        with app.engine.begin() as conn:
            _record(conn, ids, now, status="planned", error=str(exc), error_code=exc.code)
        report.deferred += len(ids)
        return report
    except PermanentSendError as exc:
        with app.engine.begin() as conn:
            _record(conn, ids, now, status="failed", error=str(exc), error_code=exc.code)
            if exc.opted_out:
                _opt_out(conn, group[0]["borrower_id"], channel, now, exc.code or "")
        report.failed += len(ids)
        log.warning("send failed for %s: %s", mask(str(info.get("phone") or "")), exc.code)
        return report
    with app.engine.begin() as conn:
        _record(
            conn,
            ids,
            now,
            status=result.status,
            provider=result.provider,
            provider_id=result.provider_id,
            sent_at=now,
            body=outgoing.body,
            subject=outgoing.subject,
        )
    report.sent += len(ids)
    return report
