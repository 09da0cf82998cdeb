"""Claim, re-check and prepare: one transaction turns due `planned` rows into `sending`.

A group (borrower, channel, run date) is one consolidated message. In the same commit the
group is claimed, the contact policy is evaluated again (a payment at 07:30 cancels the
08:00 SMS: `suppressed`, reason `no_longer_due`, or the policy's own reason), the text is
rendered and stored on the rows. So a row in `sending` always carries the exact body that
may have reached the provider, which is what crash reconciliation looks it up by.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select, update

from reminder.config import Config
from reminder.db.tables import borrowers, installments, loans, messages
from reminder.db.types import from_cents
from reminder.ports import OutgoingMessage
from reminder.rendering import LoanLine, Renderer
from reminder.services.audit_records import record_messages_on_commit
from reminder.services.evaluation import cents, loan_state
from reminder.services.policy import PolicyInputs, suppression_reason
from reminder.services.sending import Prepared

GROUP = (messages.c.borrower_id, messages.c.channel, messages.c.run_date)


@dataclass
class Claimed:
    """What one claim transaction produced."""

    prepared: list[Prepared] = field(default_factory=list)
    cancelled: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    rows: int = 0


def claim(conn: Connection, now: datetime, limit: int, worker: str,
          channel: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Move up to `limit` due groups (of `channel`) to `sending`; returns the claimed rows.

    Due rows are read in `not_before` order straight off the index (no per-row subquery,
    so a claim costs the same with 2,000 or 2,000,000 planned rows). On PostgreSQL each
    group is taken under a transaction-scoped advisory lock on its key: two workers never
    split one borrower's consolidated message, a worker skips the groups another one is
    claiming (it reads four times `limit` rows to find others), and no row locks are
    taken on rows that are not ours, so workers cannot deadlock. SQLite has one writer at
    a time (BEGIN IMMEDIATE) and needs no lock.
    """
    due = [messages.c.status == "planned", messages.c.not_before <= now]
    if channel is not None:
        due.append(messages.c.channel == channel)
    keys = _due_groups(conn, due, limit)
    if not keys:
        return []
    # Fetch by borrower (one IN list), keep the exact groups: cheaper than a tuple IN.
    candidates = conn.execute(
        select(messages).where(messages.c.borrower_id.in_(sorted({k[0] for k in keys})), *due)
    ).mappings()
    rows = [dict(row) for row in candidates if tuple(row[c.name] for c in GROUP) in keys]
    batch_of: dict[tuple[Any, ...], str] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        key = (row["borrower_id"], row["channel"], row["run_date"])
        batch_of.setdefault(key, f"{row['run_date']:%Y%m%d}-{row['channel']}-{row['id']}")
        row["batch_key"] = batch_of[key]
    if not rows:  # every group we locked was just claimed by another worker
        return []
    conn.execute(
        update(messages)
        .where(messages.c.id == bindparam("row_id"), messages.c.status == "planned")
        .values(status="sending", batch_key=bindparam("row_batch"), claimed_by=worker,
                attempts=messages.c.attempts + 1, updated_at=now),
        [{"row_id": row["id"], "row_batch": row["batch_key"]} for row in rows],
    )  # fmt: skip
    return rows


def _due_groups(conn: Connection, due: list[Any], limit: int) -> set[tuple[Any, ...]]:
    """Up to `limit` group keys with due rows, soonest first, each ours alone.

    On PostgreSQL the window is read and each group's lock tried in one statement: with
    several workers most of the window is being claimed by the others at any moment, and
    a lock refused costs the server a function call instead of a round trip each (four
    workers made ~3 round trips per message that way, half of a worker's claiming time).
    """
    window = select(*GROUP).where(*due).order_by(messages.c.not_before).limit(limit * 4)
    if conn.dialect.name == "postgresql":
        window = _locked(window.subquery("due_window"), limit)
    keys: list[tuple[Any, ...]] = []
    for row in conn.execute(window):
        key = tuple(row)
        if key not in keys:  # a group's second row (its lock is ours already)
            keys.append(key)
            if len(keys) == limit:
                break
    return set(keys)


def _locked(window: Any, limit: int) -> Any:
    """The window's rows whose group lock this transaction took: a transaction-scoped
    advisory lock on "reminder-claim|borrower|channel|YYYY-MM-DD", tried row by row in
    `not_before` order (the subquery's LIMIT keeps the lock calls out of its scan) and no
    further than `limit` rows taken."""
    name = func.concat("reminder-claim|", window.c.borrower_id, "|", window.c.channel, "|",
                       func.to_char(window.c.run_date, "YYYY-MM-DD"))  # fmt: skip
    taken = func.pg_try_advisory_xact_lock(func.hashtextextended(name, 0))
    return select(window.c.borrower_id, window.c.channel, window.c.run_date).where(
        taken).limit(limit)  # fmt: skip


_statements: dict[tuple[int, date, datetime], Any] = {}


def recheck_statement(config: Config, today: date, now: datetime) -> Any:
    """The re-check query for one dispatcher pass (claimed ids and loan ids bound later).

    Building the policy expression costs more than running it, and a pass keeps the
    same `today` and `now`, so each pass builds it once.
    """
    key = (id(config), today, now)
    if key in _statements:
        return _statements[key]
    loan_ids = bindparam("loan_ids", expanding=True)
    state = loan_state(config, today, loan_ids).subquery("state")  # type: ignore[arg-type]
    reason = suppression_reason(
        PolicyInputs(loan_id=messages.c.loan_id, loan_status=loans.c.status,
                     borrower_id=messages.c.borrower_id, channel=messages.c.channel),
        config, today, now,
    )  # fmt: skip
    due_through_episode = (
        select(func.coalesce(func.sum(cents(installments.c.amount_due)), 0))
        .where(installments.c.loan_id == messages.c.loan_id,
               installments.c.due_date <= state.c.episode)
        .scalar_subquery()
    )  # fmt: skip
    amount = case(
        (state.c.overdue_cents > 0, state.c.overdue_cents),
        else_=due_through_episode - state.c.paid_cents,
    )
    statement = (
        select(messages.c.id, reason.label("reason"), state.c.episode,
               amount.label("amount_cents"), borrowers.c.name, borrowers.c.phone,
               borrowers.c.email, loans.c.currency)  # fmt: skip
        .join(loans, loans.c.loan_id == messages.c.loan_id)
        .join(borrowers, borrowers.c.borrower_id == messages.c.borrower_id)
        .outerjoin(state, state.c.loan_id == messages.c.loan_id)
        .where(messages.c.id.in_(bindparam("message_ids", expanding=True)))
    )
    if len(_statements) > 8:
        _statements.clear()
    _statements[key] = statement
    return statement


def recheck(conn: Connection, config: Config, rows: list[dict[str, Any]], today: date,
            now: datetime) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Per claimed row: `reason` it must not go out now (or None), the borrower's address
    and name, and `amount_cents`: what to ask for (the overdue balance, or for an upcoming
    due the unpaid part of the installment falling due)."""
    params = {"loan_ids": sorted({row["loan_id"] for row in rows}),
              "message_ids": [row["id"] for row in rows]}  # fmt: skip
    by_id = {row["id"]: row for row in rows}
    decided: dict[int, dict[str, Any]] = {}
    for found in conn.execute(recheck_statement(config, today, now), params).mappings():
        info = dict(found)
        if info["reason"] is None and info["episode"] != by_id[info["id"]]["episode"]:
            info["reason"] = "no_longer_due"
        decided[info["id"]] = info
    return decided


def outgoing(config: Config, renderer: Renderer, group: list[dict[str, Any]],
             info: dict[int, dict[str, Any]]) -> OutgoingMessage:  # fmt: skip
    """The consolidated message for one group (firmness of its most advanced stage)."""
    first = info[group[0]["id"]]
    channel = group[0]["channel"]
    locale = group[0]["locale"] or config.run.default_locale
    lines = [
        LoanLine(loan_id=row["loan_id"], currency=info[row["id"]]["currency"],
                 amount=from_cents(info[row["id"]]["amount_cents"] or 0),
                 due_date=row["episode"], dpd=row["dpd"], stage=row["stage"])
        for row in group
    ]  # fmt: skip
    lead = max(lines, key=lambda line: line.dpd)
    context = renderer.context({"name": first["name"]}, lines, locale)
    rendered = renderer.render(channel, lead.stage, locale, context)
    headers: dict[str, str] = {}
    if channel == "email" and config.lender.unsubscribe_url:
        headers["List-Unsubscribe"] = f"<{config.lender.unsubscribe_url}>"
        if config.lender.unsubscribe_url.startswith("https://"):
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    return OutgoingMessage(
        message_ids=tuple(row["id"] for row in group), channel=channel,
        to=first["email"] if channel == "email" else first["phone"],
        body=rendered.body, subject=rendered.subject, html=rendered.html, locale=locale,
        reference=group[0]["batch_key"], headers=headers,
    )  # fmt: skip


def claim_and_prepare(
    conn: Connection,
    config: Config,
    renderer: Renderer,
    now: datetime,
    limit: int,
    worker: str,
    channel: str | None = None,
) -> Claimed | None:
    """Claim up to `limit` groups, cancel what is no longer due, render the rest.

    Returns None when nothing was due. Cancelled rows end `suppressed`; a group whose
    template fails to render ends `failed` (error_code `render`); the others stay
    `sending` with their body stored, ready to be handed to the adapter.
    """
    rows = claim(conn, now, limit, worker, channel)
    if not rows:
        return None
    today = now.astimezone(config.run.tz).date()
    decided = recheck(conn, config, rows, today, now)
    claimed = Claimed(rows=len(rows))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    cancelled: list[int] = []
    for row in rows:
        if decided[row["id"]]["reason"] is not None:
            _set(conn, [row["id"]], now, status="suppressed", reason=decided[row["id"]]["reason"])
            cancelled.append(row["id"])
        else:
            groups[row["batch_key"]].append(row)
    claimed.cancelled = len(cancelled)
    record_messages_on_commit(conn, "decision", cancelled, now)  # the re-check's verdict
    bodies: list[dict[str, Any]] = []
    for key, group in groups.items():
        ids = [row["id"] for row in group]
        try:
            message = outgoing(config, renderer, group, decided)
        except Exception as exc:  # a template or data problem: this group fails, others go on
            _set(conn, ids, now, status="failed", error=f"render: {exc}"[:500],
                 error_code="render")  # fmt: skip
            claimed.failed += len(ids)
            claimed.errors.append(f"render {key}: {exc}")
            record_messages_on_commit(conn, "send", ids, now)
            continue
        bodies.extend({"row_id": i, "row_body": message.body, "row_subject": message.subject}
                      for i in ids)  # fmt: skip
        claimed.prepared.append(Prepared(tuple(ids), group[0]["borrower_id"], message.channel,
                                         message, now))  # fmt: skip
    if bodies:
        conn.execute(
            update(messages).where(messages.c.id == bindparam("row_id"))
            .values(body=bindparam("row_body"), subject=bindparam("row_subject")),
            bodies,
        )  # fmt: skip
    return claimed


def _set(conn: Connection, ids: list[int], now: datetime, **values: Any) -> None:
    conn.execute(update(messages).where(messages.c.id.in_(ids)).values(updated_at=now, **values))
