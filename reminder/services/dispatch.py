"""The dispatcher: sends planned messages whose `not_before` has come, never twice.

A send is three committed steps. (1) Claim (`claiming`): the due rows of one borrower,
channel and run date move `planned -> sending` together with a shared `batch_key` (one
consolidated message, our reference at the provider); in the same commit the policy is
re-checked (a payment at 07:30 cancels the 08:00 SMS) and the rendered body is stored.
(2) Send (`sending`, in a bounded thread pool per channel): each attempt takes a token
from the channel's rate limiter; transient errors are retried with backoff.
(3) Record: `sent` with the provider's id; `failed` with the provider's code (and an
opt-out flag on Twilio 21610 / SendGrid unsubscribes); back to `planned` after the retry
budget, with the attempt count, the error and `not_before` pushed back.
Each pass starts by reconciling rows a crashed dispatcher left in `sending` (`reconcile`).

The guarantee. After a crash, a row left in `sending` is never sent again: it becomes
`sent` when the provider lists it (Twilio, the outbox), else `unknown`, with a note, for a
person. Within a pass, an attempt whose fate is unclear (a timeout or a dropped
connection after the request left) is retried only once the provider has said it does
not have it (the Twilio adapters look it up first); a SendGrid batch in that state is not
retried but left `unknown`. The one remaining gap: SMTP cannot be asked, so an SMTP
submission timing out after the server took it may be submitted again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, select, update

from reminder.bootstrap import App
from reminder.db.tables import messages
from reminder.errors import PermanentSendError, ReminderError, TransientSendError
from reminder.rendering import Renderer
from reminder.services import contact_changes as changes
from reminder.services.audit_records import record_messages_on_commit
from reminder.services.claiming import claim_and_prepare
from reminder.services.reconcile import reconcile_sending
from reminder.services.sending import (
    NoLimit,
    Outcome,
    Prepared,
    RateLimiter,
    RetryPolicy,
    deliver,
    deliver_batch,
)
from reminder.services.shared_rate import DatabaseRateLimiter

log = logging.getLogger(__name__)
CHANNELS = ("sms", "email", "voice")
DEFAULT_CONCURRENCY = 32
RECORD_EVERY = 0.01  # seconds to gather finished sends before one commit records them
MAX_CLAIMS = 8  # a message still failing transiently after this many passes ends `failed`


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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mask(address: str) -> str:
    """A phone number or email address as logs may show it."""
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}" if len(address) > 5 else "***"


@dataclass
class _Lane:
    """One channel's share of a pass: its pool, limiter and what is in flight."""

    channel: str
    pool: ThreadPoolExecutor
    limiter: RateLimiter
    target: int  # claimed and not yet recorded, at most
    refill_at: int  # claim more when no more than this many are left
    inflight: dict[Future[list[Outcome]], int] = field(default_factory=dict)  # -> messages
    exhausted: bool = False

    @property
    def pending(self) -> int:
        return sum(self.inflight.values())


def _lane(app: App, channel: str, limiter: RateLimiter | None) -> _Lane:
    settings = app.config.channel(channel)
    size = int((settings.model_extra or {}).get("concurrency", DEFAULT_CONCURRENCY))
    if limiter is None and not _rate_limited(app, channel):
        limiter = NoLimit()  # a local outbox protects no provider's limit
    # the budget lives in the database: it holds across every worker process, not per process
    bucket = limiter or DatabaseRateLimiter(app.engine, channel, settings.rate_per_second)
    pool = ThreadPoolExecutor(size, f"send-{channel}")
    if settings.rate_per_second >= size:  # the pool is the limit: keep one round queued
        return _Lane(channel, pool, bucket, target=2 * size, refill_at=size)
    second = max(1, math.ceil(settings.rate_per_second))  # the rate is: about a second's work
    return _Lane(channel, pool, bucket, target=second, refill_at=second // 2)


def _rate_limited(app: App, channel: str) -> bool:
    try:
        return bool(getattr(app.sender(channel), "rate_limited", True))
    except ReminderError:
        return True  # `_refill` reports the unbuildable channel and claims nothing


def dispatch_due(
    app: App,
    now: datetime | None = None,
    *,
    retry: RetryPolicy | None = None,
    limiters: dict[str, RateLimiter] | None = None,
) -> DispatchReport:
    """Reconcile interrupted sends, then send everything due at `now` (default: the clock).

    Channels run side by side. A rate-limited channel keeps about a second's worth of
    sends claimed, so a crash leaves few claims to reconcile; one whose rate exceeds its
    `concurrency` keeps a second round queued so the pool never waits on a claim.
    """
    now = now or app.clock.now()
    retry = retry or RetryPolicy()
    report = DispatchReport()
    settled = reconcile_sending(app, now)
    report.sent, report.unknown = settled.sent, settled.unknown
    renderer = Renderer(app.config)
    worker = worker_name()
    lanes = [_lane(app, c, (limiters or {}).get(c)) for c in CHANNELS]
    try:
        while True:
            claimed_any = False
            for lane in lanes:
                if not lane.exhausted and lane.pending <= lane.refill_at:
                    claimed_any |= _refill(app, renderer, lane, now, worker, retry, report)
            running = {future for lane in lanes for future in lane.inflight}
            if not running:
                if claimed_any:  # a claim may be all cancellations: claim again
                    continue
                return report
            wait(running, return_when=FIRST_COMPLETED)
            time.sleep(RECORD_EVERY)  # let a few more finish: one commit records them all
            done = {future for future in running if future.done()}
            for lane in lanes:
                for future in done:
                    lane.inflight.pop(future, None)
            outcomes = [outcome for future in done for outcome in future.result()]
            with app.engine.begin() as conn:
                _record_all(conn, outcomes, now, report)
    finally:
        for lane in lanes:
            lane.pool.shutdown(wait=True, cancel_futures=False)


def _refill(app: App, renderer: Renderer, lane: _Lane, now: datetime, worker: str,
            retry: RetryPolicy, report: DispatchReport) -> bool:  # fmt: skip
    """Claim and submit more of `lane`'s due sends; False when there was nothing to claim."""
    try:
        sender = app.sender(lane.channel)  # before claiming: a bad config claims nothing
    except ReminderError as exc:
        lane.exhausted = True
        report.errors.append(f"{lane.channel}: {exc}")
        log.error("not sending %s: %s", lane.channel, exc)
        return False
    limit = lane.target - lane.pending
    with app.engine.begin() as conn:
        claimed = claim_and_prepare(conn, app.config, renderer, now, limit, worker, lane.channel)
    if claimed is None:
        lane.exhausted = True
        return False
    report.cancelled += claimed.cancelled
    report.failed += claimed.failed
    report.errors.extend(claimed.errors)
    size = int(getattr(sender, "max_batch", 1)) if hasattr(sender, "send_batch") else 1
    if size > 1:  # SendGrid: many personalizations in one request
        for start in range(0, len(claimed.prepared), size):
            batch = claimed.prepared[start : start + size]
            future = lane.pool.submit(deliver_batch, sender, lane.limiter, batch, retry)
            lane.inflight[future] = len(batch)
        return True
    for prepared in claimed.prepared:
        lane.inflight[lane.pool.submit(_deliver_one, sender, lane.limiter, prepared, retry)] = 1
    return True


def _deliver_one(sender: Any, limiter: RateLimiter, prepared: Prepared,
                 retry: RetryPolicy) -> list[Outcome]:  # fmt: skip
    return [deliver(sender, limiter, prepared, retry)]


def _record_all(conn: Connection, outcomes: list[Outcome], now: datetime,
                report: DispatchReport) -> None:  # fmt: skip
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
            _record_failure(conn, outcome, now, report)


def _record_failure(conn: Connection, outcome: Outcome, now: datetime,
                    report: DispatchReport) -> None:  # fmt: skip
    prepared, error = outcome.prepared, outcome.error
    ids = list(prepared.ids)
    if isinstance(error, TransientSendError):
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
        .values(updated_at=now, **values)
    )


def _opt_out(conn: Connection, borrower_id: str, channel: str, now: datetime, code: str) -> None:
    """Record the provider's word that the borrower unsubscribed (once; audited)."""
    changes.add_flag(conn, borrower_id, "opt_out", channel=channel, source=f"provider:{code}",
                     now=now, note="the provider reports the recipient unsubscribed")
