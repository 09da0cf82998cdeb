"""A rate limit shared by every dispatcher process: one `rate_buckets` row per channel.

Why not the in-process `TokenBucket`: with four workers each holding its own bucket of
20/s, the provider sees 80/s. The budget has to live where all workers meet, which is
the database (no home-made coordination outside it).

The algorithm is GCRA ("virtual scheduling"). The row's `window_start` holds the next
free slot. One short transaction locks the row, takes slot `t = max(now, next_free)`,
stores `t + spacing` and commits; the caller then sleeps until `t`. Successive grants
are therefore `spacing = (1 + margin) / rate` apart across every process, so no sliding
second holds more than `rate` grants. The 10% margin absorbs the jitter between the
grant here and the request's arrival at the provider: a worker paused after its grant
(a garbage collection, a busy core) sends late and bunches with the next grants; with 5%
the provider's busiest second reached the limit exactly in the 50,000-message test.

On PostgreSQL the lock, read and write are a single `UPDATE ... RETURNING` (the UPDATE
takes the row lock just as `SELECT ... FOR UPDATE` would, in one round trip) and `now`
is the server's `clock_timestamp()`: workers on different machines share one clock, so
their own clock skew cannot bunch grants. SQLite has one machine and one writer at a
time (`BEGIN IMMEDIATE`), so the local UTC clock is read inside the transaction.

At high rates one transaction reserves a few consecutive slots (about 20 ms' worth) and
hands them to this process's threads, to keep the database round trips per send low.
A reserved slot that is never used is simply lost: the limit errs on the safe side.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, func, literal, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite

from reminder.db.tables import rate_buckets
from reminder.db.types import UTCDateTime

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
RESERVE_SECONDS = 0.02  # at high rates, one transaction reserves this much time's slots
MAX_RESERVE = 50


class DatabaseRateLimiter:
    """`acquire()` blocks until this process may send one more request on `channel`.

    Args:
        engine: The shared database; every worker must point at the same one.
        channel: The `rate_buckets` key (one budget per channel).
        rate: Requests per second allowed across all processes together.
        margin: Stretch of the spacing; 0.10 gives up ~9% of the rate for "never exceeded".
        sleep: Injected by tests; defaults to `time.sleep`.
    """

    def __init__(self, engine: Engine, channel: str, rate: float, margin: float = 0.10,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.engine, self.channel, self.rate = engine, channel, rate
        self.spacing = (1.0 + margin) / rate
        # grants at least `spacing` apart, each used at most `lateness` after its slot:
        # a sliding second then holds < (1 + lateness) / spacing + 1 <= rate of them; the
        # the rest of the margin is left for the request's way to the provider
        self.lateness = 0.25 * margin
        self.reserve = max(1, min(MAX_RESERVE, math.floor(rate * RESERVE_SECONDS)))
        self._sleep = sleep
        self._lock = threading.Lock()
        self._slots: deque[float] = deque()  # reserved grant instants, time.monotonic()

    def acquire(self) -> None:
        """Take the next slot (from this process's reserve, else from the database); wait.

        A slot this process reaches too late (descheduled on a busy machine) is dropped
        for a fresh one: sent late, it would crowd the next grants into one second.
        """
        while True:
            with self._lock:
                if not self._slots:
                    start = time.monotonic() + self._take(self.reserve)
                    self._slots.extend(start + i * self.spacing for i in range(self.reserve))
                slot = self._slots.popleft()
            delay = slot - time.monotonic()
            if delay > 0:
                self._sleep(delay)
            if time.monotonic() - slot <= self.lateness:
                return

    def _take(self, count: int) -> float:
        """Reserve `count` consecutive slots; returns the seconds until the first."""
        span = timedelta(seconds=self.spacing * count)
        for _ in range(2):
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    found = _take_postgresql(conn, self.channel, span)
                else:
                    found = _take_locally(conn, self.channel, span)
                if found is not None:
                    slot, now = found
                    return max(0.0, (slot - now).total_seconds())
                _create_row(conn, self.channel)
        raise RuntimeError(f"rate_buckets row for {self.channel!r} could not be created")


def _take_postgresql(conn: Connection, channel: str,
                     span: timedelta) -> tuple[datetime, datetime] | None:  # fmt: skip
    """One statement: lock the row, move `next_free` on by `span`, return slot and now."""
    now = type_coerce(func.timezone("UTC", func.clock_timestamp()), UTCDateTime)
    column = rate_buckets.c.window_start
    row = conn.execute(
        update(rate_buckets)
        .where(rate_buckets.c.channel == channel)
        .values(window_start=func.greatest(column, now) + literal(span),
                used=rate_buckets.c.used + 1)
        .returning(column, now.label("db_now"))
    ).one_or_none()
    if row is None:
        return None
    return row.window_start - span, row.db_now


def _take_locally(conn: Connection, channel: str,
                  span: timedelta) -> tuple[datetime, datetime] | None:  # fmt: skip
    """SQLite: the transaction already holds the write lock; read, then move on."""
    next_free = conn.execute(
        select(rate_buckets.c.window_start).where(rate_buckets.c.channel == channel)
        .with_for_update()
    ).scalar_one_or_none()
    if next_free is None:
        return None
    now = datetime.now(UTC)
    slot = max(now, next_free)
    conn.execute(
        update(rate_buckets).where(rate_buckets.c.channel == channel)
        .values(window_start=slot + span, used=rate_buckets.c.used + 1)
    )
    return slot, now


def _create_row(conn: Connection, channel: str) -> None:
    """First use of a channel's budget: its row, free at once (a racing insert is fine)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(rate_buckets)
        .values(channel=channel, window_start=EPOCH, used=0)
        .on_conflict_do_nothing(index_elements=["channel"])
    )
