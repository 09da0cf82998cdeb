"""Several workers, one budget: the database rate limit and concurrent worker processes.

The rate limit is judged the way a provider judges it: on the instants the grants
happen, no sliding second may hold more than the configured rate, whichever process or
thread took them; and the budget must still be used (at least 85% of the rate).
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import Engine, select

from reminder.db.tables import rate_buckets
from reminder.services.shared_rate import DatabaseRateLimiter

REPO = Path(__file__).resolve().parents[2]


def most_in_one_second(instants: list[float]) -> int:
    """The largest number of instants inside any half-open 1-second sliding window."""
    ordered = sorted(instants)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)),
               default=0)  # fmt: skip


def hammer(limiter: DatabaseRateLimiter, seconds: float, threads: int) -> list[float]:
    """`threads` threads acquiring as fast as they may for `seconds`; the grant instants."""
    granted: list[float] = []
    lock = threading.Lock()
    end = time.time() + seconds

    def run() -> None:
        while time.time() < end:
            limiter.acquire()
            with lock:
                granted.append(time.time())

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return granted


HAMMER = """
import json, sys
from reminder.db.engine import make_engine
from reminder.services.shared_rate import DatabaseRateLimiter
from tests.integration.test_workers import hammer
limiter = DatabaseRateLimiter(make_engine(sys.argv[1]), "sms", 20)
print(json.dumps(hammer(limiter, float(sys.argv[2]), 4)))
"""


def test_threads_share_one_budget_never_over_the_rate(engine: Engine):
    limiter = DatabaseRateLimiter(engine, "sms", 20)
    granted = hammer(limiter, 3.0, 8)
    assert most_in_one_second(granted) <= 20
    assert len(granted) / (max(granted) - min(granted)) >= 17
    with engine.connect() as conn:
        assert conn.execute(select(rate_buckets.c.channel)).scalars().all() == ["sms"]


def test_separate_limiters_of_one_channel_share_the_budget(engine: Engine):
    """Two limiter objects (as two dispatcher passes or processes hold) draw on one row."""
    first, second = DatabaseRateLimiter(engine, "sms", 20), DatabaseRateLimiter(engine, "sms", 20)
    out: list[list[float]] = []
    pair = [threading.Thread(target=lambda lim=lim: out.append(hammer(lim, 2.0, 4)))
            for lim in (first, second)]  # fmt: skip
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join()
    granted = out[0] + out[1]
    assert most_in_one_second(granted) <= 20 and min(len(out[0]), len(out[1])) > 5
    assert len(granted) / (max(granted) - min(granted)) >= 17


def test_channels_have_budgets_of_their_own(engine: Engine):
    sms, email = DatabaseRateLimiter(engine, "sms", 5), DatabaseRateLimiter(engine, "email", 5)
    start = time.monotonic()
    for _ in range(3):
        sms.acquire()
        email.acquire()
    assert time.monotonic() - start < 0.6 + 0.3  # 3 of each at 5/s, not 6 in a row


def test_a_high_rate_reserves_several_slots_per_transaction(engine: Engine):
    limiter = DatabaseRateLimiter(engine, "email", 1000)
    assert limiter.reserve == 20
    granted = hammer(limiter, 1.0, 8)
    assert most_in_one_second(granted) <= 1000 and len(granted) >= 800
    with engine.connect() as conn:
        used = conn.execute(select(rate_buckets.c.used)).scalar_one()
    assert used <= len(granted) / 20 + 8  # about one transaction per 20 grants


def test_processes_share_one_budget(database_url: str, engine: Engine):
    env = os.environ | {"PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, database_url, "3"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    here = hammer(DatabaseRateLimiter(engine, "sms", 20), 3.0, 4)
    theirs = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    granted = here + theirs[0] + theirs[1]
    assert all(len(grants) > 5 for grants in theirs)  # every process got its share
    assert most_in_one_second(granted) <= 20
    assert len(granted) / (max(granted) - min(granted)) >= 17

