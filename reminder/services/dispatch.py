"""The dispatcher: sends planned messages whose `not_before` has come, never twice.

A send is three committed steps. (1) Claim (`claiming`): the due rows of one borrower,
channel and run date move `planned -> sending` together with a shared `batch_key` (one
consolidated message, our reference at the provider); in the same commit the policy is
re-checked (a payment at 07:30 cancels the 08:00 SMS) and the rendered body is stored.
(2) Send (`sending`, in a bounded thread pool per channel): each attempt takes a token
from the channel's rate limiter; transient errors are retried with backoff.
(3) Record (`recording`): `sent` with the provider's id; `failed` with the provider's
code (and an opt-out flag on Twilio 21610 / SendGrid unsubscribes); back to `planned`
after the retry budget, with the attempt count, the error and `not_before` pushed back.
Each pass starts by reconciling rows a crashed dispatcher left in `sending` (`reconcile`).
A pass that fails (the database connection dropped) first records what its sends in
flight came to, retrying the commit, then raises; anything it could not record is stale
for the next pass at once (its claims carry the pass's own name).

The guarantee. After a crash, a row left in `sending` is never sent again: it becomes
`sent` when the provider lists it (Twilio, the outbox), else `unknown`, with a note, for a
person. Within a pass, an attempt whose fate is unclear (a timeout or a dropped
connection after the request left) is never retried on the spot: the Twilio adapters look
it up at once, and what they cannot find yet (`UnconfirmedSendError`: the provider may
still take it) is handed to reconciliation, which sends it again only if the provider
still does not list it after the lookup window; a SendGrid batch in that state is not
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
from datetime import datetime
from typing import Any

from reminder.bootstrap import App
from reminder.errors import ReminderError
from reminder.rendering import Renderer
from reminder.services.claiming import claim_and_prepare
from reminder.services.reconcile import claim_name, reconcile_sending
from reminder.services.recording import DispatchReport, one_line, record_round
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    started = time.monotonic()  # `now` moves on with it (see `recording._record_failure`)
    retry = retry or RetryPolicy()
    report = DispatchReport()
    settled = reconcile_sending(app, now)
    report.sent, report.unknown = settled.sent, settled.unknown
    renderer = Renderer(app.config)
    lanes = [_lane(app, c, (limiters or {}).get(c)) for c in CHANNELS]
    with claim_name() as worker:
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
                outcomes = [outcome for future in done for outcome in future.result()]
                record_round(app, outcomes, now, started, report)
                for lane in lanes:  # recorded: no longer in flight (else the drain tries)
                    for future in done:
                        lane.inflight.pop(future, None)
        except BaseException:
            _record_in_flight(app, lanes, now, started, report)
            raise
        finally:
            for lane in lanes:
                lane.pool.shutdown(wait=True, cancel_futures=False)


def _record_in_flight(app: App, lanes: list[_Lane], now: datetime, started: float,
                      report: DispatchReport) -> None:  # fmt: skip
    """A failing pass: wait for the sends in flight and record them (best effort)."""
    for lane in lanes:
        lane.pool.shutdown(wait=True, cancel_futures=False)
    futures = [future for lane in lanes for future in lane.inflight]
    outcomes = [o for f in futures if f.exception() is None for o in f.result()]
    if not outcomes:
        return
    try:
        record_round(app, outcomes, now, started, report)
    except Exception as exc:  # the next pass reconciles them: this pass's claims are stale
        log.error("%d outcomes left to reconciliation: %s", len(outcomes), one_line(exc))


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
