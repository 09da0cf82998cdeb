"""Handing one prepared message to its adapter: rate limit, retries, an outcome back.

Runs in the dispatcher's worker threads and never touches the database: the orchestrator
records outcomes. Transient errors are retried with tenacity (exponential backoff with
full jitter, a Retry-After from the provider is a floor, bounded by attempts and by total
time); anything else is returned at once, and so is an `UnconfirmedSendError` (the provider
may still be taking the message: reconciliation looks it up later). Every attempt first
takes a token from the channel's limiter, so retries count against `rate_per_second` too;
a limiter that fails (its database connection dropped) is a transient error of its own:
nothing left, so the attempt is simply tried again.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception

from reminder.errors import SendError, TransientSendError, UnconfirmedSendError
from reminder.ports import OutgoingMessage, Sender, SendResult


class RateLimiter(Protocol):
    """Blocks until one more request may go out (one verb: swap in a shared one later)."""

    def acquire(self) -> None: ...


class NoLimit:
    """For adapters that reach no provider (the local outbox): nothing to protect."""

    def acquire(self) -> None:
        return None


class TokenBucket:
    """An in-process token bucket of `rate` tokens a second, holding at most one token.

    Requests are spaced evenly, and on top of that no sliding second ever holds more than
    `rate` grants, judged on the instants the grants really happen (after the sleep,
    which may overshoot). `margin` stretches both by 5% so that the jitter between here
    and the provider (thread scheduling, the network, a busy CPU) cannot put a 21st
    request of a 20/s limit into one second at the provider's end either: "never
    exceeded" costs 5% of the configured rate.
    """

    def __init__(self, rate: float, margin: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = (1.0 + margin) / rate
        self.per_second = max(1, math.floor(rate))
        self.window = 1.0 + margin
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._granted: deque[float] = deque(maxlen=self.per_second)
        self._next = clock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                delay = self._next - now
                if len(self._granted) == self.per_second:
                    delay = max(delay, self._granted[0] + self.window - now)
                if delay <= 0:
                    self._granted.append(now)
                    self._next = max(self._next, now - self.interval) + self.interval
                    return
            self._sleep(delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the in-pass retries of a transient error."""

    attempts: int = 4
    first_wait: float = 0.5  # seconds; doubles each attempt, with full jitter
    max_wait: float = 8.0
    max_total: float = 30.0  # no retry starts later than this after the first attempt
    sleep: Callable[[float], None] = time.sleep

    def wait(self, state: RetryCallState) -> float:
        """Exponential backoff with full jitter; a Retry-After is honoured as a floor."""
        backoff = min(self.max_wait, self.first_wait * 2 ** (state.attempt_number - 1))
        jittered = random.uniform(backoff / 2, backoff)
        return max(jittered, _retry_after(state) or 0.0)

    def stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.attempts:
            return True
        waited = state.seconds_since_start or 0.0
        return waited + (_retry_after(state) or 0.0) > self.max_total


def _retry_after(state: RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    return exc.retry_after if isinstance(exc, TransientSendError) else None


@dataclass(frozen=True)
class Prepared:
    """A claimed, rechecked, rendered send: the rows it covers and the message itself."""

    ids: tuple[int, ...]
    borrower_id: str
    channel: str
    outgoing: OutgoingMessage
    claimed_at: datetime


@dataclass(frozen=True)
class Outcome:
    """What became of one Prepared send: a result, or the last error."""

    prepared: Prepared
    result: SendResult | None = None
    error: SendError | None = None
    attempts: int = 1
    attempted: float = 0.0  # time.monotonic() when the last attempt started


LIMITER = "limiter"  # the code of a TransientSendError raised before any request left


def _retryable(exc: BaseException) -> bool:
    """Transient, and certainly not taken by the provider (an unconfirmed send waits)."""
    return isinstance(exc, TransientSendError) and not isinstance(exc, UnconfirmedSendError)


def _acquire(limiter: RateLimiter) -> None:
    """Take a token; a limiter failure means nothing was sent, so it is worth a retry."""
    try:
        limiter.acquire()
    except Exception as exc:  # the shared limiter's database went away for a moment
        raise TransientSendError(f"rate limiter: {type(exc).__name__}", LIMITER) from exc


def deliver(sender: Sender, limiter: RateLimiter, prepared: Prepared,
            policy: RetryPolicy) -> Outcome:  # fmt: skip
    """Send with retries; never raises a SendError (it comes back in the Outcome)."""
    retrying = Retrying(
        retry=retry_if_exception(_retryable),
        wait=policy.wait,
        stop=policy.stop,
        sleep=policy.sleep,
        reraise=True,
    )
    started = time.monotonic()
    try:
        for attempt in retrying:
            with attempt:
                _acquire(limiter)
                started = time.monotonic()
                result = sender.send(prepared.outgoing)
        number = retrying.statistics.get("attempt_number", 1)
        return Outcome(prepared, result=result, attempts=number, attempted=started)
    except SendError as exc:
        number = retrying.statistics.get("attempt_number", 1)
        return Outcome(prepared, error=exc, attempts=number, attempted=started)
    except Exception as exc:  # an adapter bug must not kill the pass; it may have sent:
        error = SendError(f"adapter error: {type(exc).__name__}: {exc}", "adapter")
        return Outcome(prepared, error=error, attempted=started)  # recorded `unknown`


class BatchSender(Protocol):
    """An adapter that can put many messages in one request (SendGrid personalizations)."""

    max_batch: int

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | SendError]: ...


def deliver_batch(sender: BatchSender, limiter: RateLimiter, batch: list[Prepared],
                  policy: RetryPolicy) -> list[Outcome]:  # fmt: skip
    """Send up to `max_batch` messages in one request; one Outcome per message.

    The request is retried only when the provider clearly refused all of it (429, 5xx):
    after a timeout it may have been accepted, and re-sending a thousand emails on a
    guess is worse than asking a person (those messages end `unknown`).
    """
    retrying = Retrying(
        retry=retry_if_exception(_refused), wait=policy.wait, stop=policy.stop,
        sleep=policy.sleep, reraise=True,
    )  # fmt: skip
    try:
        for attempt in retrying:
            with attempt:
                for _ in batch:
                    _acquire(limiter)
                results = sender.send_batch([p.outgoing for p in batch])
                if results and all(_refused(r) for r in results):
                    raise results[0]  # type: ignore[misc]
    except SendError as exc:
        results = [exc] * len(batch)
    except Exception as exc:  # an adapter bug: it may have sent
        results = [SendError(f"adapter error: {type(exc).__name__}: {exc}", "adapter")] * len(
            batch)  # fmt: skip
    outcomes = []
    for prepared, result in zip(batch, results, strict=True):
        if isinstance(result, TransientSendError) and not _refused(result):
            result = SendError(f"{result}; the provider may have accepted it", result.code)
        if isinstance(result, SendError):
            outcomes.append(Outcome(prepared, error=result))
        else:
            outcomes.append(Outcome(prepared, result=result))
    return outcomes


def _refused(value: object) -> bool:
    """A transient error in which the provider plainly took nothing (429, 5xx, or the rate
    limiter failing before the request left)."""
    if not isinstance(value, TransientSendError):
        return False
    code = value.code or ""
    return code.isdigit() or code == LIMITER
