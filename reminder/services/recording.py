"""Recording what sends came to: one commit per round of outcomes, and the report.

`sent` with the provider's id; `failed` with the provider's code (and an opt-out flag on
Twilio 21610 / SendGrid unsubscribes); back to `planned` after the retry budget, with the
attempt count, the error and `not_before` pushed back; an unconfirmed send (the provider
may still take it) released to reconciliation; anything else `unknown` with a note.
A commit lost with the database connection is made again on a fresh one: the sends
happened and cannot be taken back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from reminder.bootstrap import App
from reminder.db.tables import messages
from reminder.errors import PermanentSendError, TransientSendError, UnconfirmedSendError
from reminder.services import contact_changes as changes
from reminder.services.audit_records import record_messages_on_commit
from reminder.services.reconcile import UNCONFIRMED
from reminder.services.sending import Outcome

log = logging.getLogger(__name__)
MAX_CLAIMS = 8  # a message still failing transiently after this many passes ends `failed`
RECORD_TRIES = 5  # commits of one round of outcomes tried, the connection having dropped


@dataclass
class DispatchReport:
    sent: int = 0
    failed: int = 0
    cancelled: int = 0
    deferred: int = 0
    unknown: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: DispatchReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.deferred += other.deferred
        self.unknown += other.unknown
        self.errors.extend(other.errors)


def mask(address: str) -> str:
    """A phone number or email address as logs may show it."""
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}" if len(address) > 5 else "***"


def one_line(exc: BaseException) -> str:
    """An error as one line for logs: its type and first line, never SQL or parameters
    (which may carry a phone number or a message body)."""
    inner = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {first}"[:200]


def record_round(app: App, outcomes: list[Outcome], now: datetime, started: float,
                 report: DispatchReport) -> None:  # fmt: skip
    """Record one round in one commit; when the connection drops, again on a fresh one.

    The sends happened and cannot be taken back: losing their outcomes would leave the
    rows to reconciliation, which for a send that failed can only say `unknown`.
    """
    for attempt in range(1, RECORD_TRIES + 1):
        part = DispatchReport()
        try:
            with app.engine.begin() as conn:
                _record_all(conn, outcomes, now, part, started)
        except (OperationalError, InterfaceError) as exc:
            if attempt == RECORD_TRIES:
                raise
            log.warning("recording %d outcomes failed, retrying: %s", len(outcomes),
                        one_line(exc))  # fmt: skip
            time.sleep(0.2 * 2**attempt)
            continue
        report.add(part)
        return


def _record_all(conn: Connection, outcomes: list[Outcome], now: datetime,
                report: DispatchReport, started: float | None = None) -> None:  # fmt: skip
    """Record a round of outcomes in one transaction; the successes in one executemany.

    Every outcome also becomes one audit `send` row per message row (its status at commit).
    """
    record_messages_on_commit(conn, "send", [i for o in outcomes for i in o.prepared.ids], now)
    sent = [
        {"row_id": row_id, "row_status": o.result.status, "row_provider": o.result.provider,
         "row_provider_id": o.result.provider_id}
        for o in outcomes if o.result is not None for row_id in o.prepared.ids
    ]  # fmt: skip
    if sent:
        # A fast status callback may have moved the row on already (delivered), and a
        # claim that went stale may have been marked unknown: the provider's id and the
        # time are recorded either way; the status only moves forward.
        status = messages.c.status  # no IN lists: executemany cannot expand them
        moved_on = and_(status != "sending", status != "unknown")
        conn.execute(
            update(messages)
            .where(messages.c.id == bindparam("row_id"),
                   status != "planned", status != "suppressed")
            .values(status=case((moved_on, status), else_=bindparam("row_status")),
                    error=case((moved_on, messages.c.error), else_=None),
                    error_code=case((moved_on, messages.c.error_code), else_=None),
                    provider=bindparam("row_provider"), provider_id=bindparam("row_provider_id"),
                    sent_at=now, updated_at=now),
            sent,
        )  # fmt: skip
        report.sent += len(sent)
    for outcome in outcomes:
        if outcome.result is None:
            _record_failure(conn, outcome, now, report, started)


def _record_failure(conn: Connection, outcome: Outcome, now: datetime,
                    report: DispatchReport, started: float | None = None) -> None:  # fmt: skip
    prepared, error = outcome.prepared, outcome.error
    ids = list(prepared.ids)
    if isinstance(error, UnconfirmedSendError):
        # Released to reconciliation, stamped with the attempt's start (the pass's `now`
        # moved on by the time since): the lookup window is counted from there.
        elapsed = outcome.attempted - started if started is not None else 0.0
        _set(conn, ids, now, updated_at=now + timedelta(seconds=max(0.0, elapsed)),
             claimed_by=None, error_code=UNCONFIRMED, error=str(error)[:500])  # fmt: skip
        report.deferred += len(ids)
    elif isinstance(error, TransientSendError):
        claims = _claims(conn, ids)
        if claims >= MAX_CLAIMS:
            _set(conn, ids, now, status="failed", error_code=error.code,
                 error=f"gave up after {claims} passes: {error}"[:500])  # fmt: skip
            report.failed += len(ids)
            return
        pause = max(error.retry_after or 0.0, 30.0 * 2 ** (claims - 1))
        _set(conn, ids, now, status="planned", error=str(error)[:500], error_code=error.code,
             not_before=now + timedelta(seconds=min(pause, 3600)))  # fmt: skip
        report.deferred += len(ids)
    elif isinstance(error, PermanentSendError):
        _set(conn, ids, now, status="failed", error=str(error)[:500], error_code=error.code)
        if error.opted_out:
            _opt_out(conn, prepared.borrower_id, prepared.channel, now, error.code or "")
        report.failed += len(ids)
        log.warning("send %s to %s failed: %s", prepared.outgoing.reference,
                    mask(prepared.outgoing.to or ""), error.code)  # fmt: skip
    else:
        note = f"{error}; it may have been sent: check the provider before re-sending"
        _set(conn, ids, now, status="unknown", error=note[:500], error_code="unknown")
        report.unknown += len(ids)


def _claims(conn: Connection, ids: list[int]) -> int:
    found = conn.execute(select(messages.c.attempts).where(messages.c.id.in_(ids))).scalars()
    return max(found, default=1)


def _set(conn: Connection, ids: list[int], now: datetime, **values: Any) -> None:
    conn.execute(
        update(messages)
        .where(messages.c.id.in_(ids), messages.c.status == "sending")
        .values(**{"updated_at": now, **values})
    )


def _opt_out(conn: Connection, borrower_id: str, channel: str, now: datetime, code: str) -> None:
    """Record the provider's word that the borrower unsubscribed (once; audited)."""
    changes.add_flag(conn, borrower_id, "opt_out", channel=channel, source=f"provider:{code}",
                     now=now, note="the provider reports the recipient unsubscribed")
