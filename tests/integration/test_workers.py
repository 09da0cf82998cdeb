"""Several workers, one budget: the database rate limit and concurrent worker processes.

The rate limit is judged the way a provider judges it: on the instants the grants
happen, no sliding second may hold more than the configured rate, whichever process or
thread took them; and the budget must still be used (at least 80% of the limiter's pace,
one grant per `spacing`: rate / 1.10 with the default margin).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from reminder.bootstrap import bootstrap
from reminder.cli import app as cli_app
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import messages, rate_buckets, runs
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.shared_rate import DatabaseRateLimiter
from tests.portfolio import Portfolio

REPO = Path(__file__).resolve().parents[2]
D = date(2026, 12, 2)


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
from tests.portfolio import Portfolio
from tests.integration.test_workers import hammer
limiter = DatabaseRateLimiter(make_engine(sys.argv[1]), "sms", 20)
print(json.dumps(hammer(limiter, float(sys.argv[2]), 4)))
"""


# The budget must still be used: at least 80% of the pace the limiter aims at, one grant
# per `spacing` (rate / 1.10 with the default margin), measured end to end.
def pace(limiter: DatabaseRateLimiter) -> float:
    """The grants per second a fully used budget gives: one per `spacing`."""
    return 1.0 / limiter.spacing


def test_threads_share_one_budget_never_over_the_rate(engine: Engine):
    limiter = DatabaseRateLimiter(engine, "sms", 20)
    granted = hammer(limiter, 3.0, 8)
    assert most_in_one_second(granted) <= 20
    assert len(granted) / (max(granted) - min(granted)) >= 0.8 * pace(limiter)
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
    assert len(granted) / (max(granted) - min(granted)) >= 0.8 * pace(first)


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
    assert most_in_one_second(granted) <= 1000 and len(granted) >= 0.8 * pace(limiter)
    with engine.connect() as conn:
        used = conn.execute(select(rate_buckets.c.used)).scalar_one()
    assert used <= len(granted) / 20 + 8  # about one transaction per 20 grants


def test_processes_share_one_budget(database_url: str, engine: Engine):
    env = os.environ | {"PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, database_url, "3"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    limiter = DatabaseRateLimiter(engine, "sms", 20)
    here = hammer(limiter, 3.0, 4)
    theirs = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    granted = here + theirs[0] + theirs[1]
    assert all(len(grants) > 5 for grants in theirs)  # every process got its share
    assert most_in_one_second(granted) <= 20
    assert len(granted) / (max(granted) - min(granted)) >= 0.8 * pace(limiter)




# --- `reminder worker` ------------------------------------------------------------------------

SEND_AT = datetime(2026, 12, 2, 15, tzinfo=UTC)


@pytest.fixture
def workdir(tmp_path: Path, database_url: str, engine: Engine, config: Config) -> Path:
    """A config file on the test database (outbox providers) and three borrowers planned."""
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    text = text.replace('url = "sqlite:///reminder.db"', f'url = "{database_url}"')
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    p = Portfolio()
    for n in range(3):
        p.loan(f"L{n}", p.borrower(f"B{n}", phone=f"+1212555{n:04d}"),
               first_due=D - timedelta(days=2), count=1)  # fmt: skip
    p.save(engine)
    run_day(bootstrap(config, engine=engine, clock=FixedClock(SEND_AT)),
            RunOptions(run_date=D, dispatch=False))  # fmt: skip
    return tmp_path


def statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(messages.c.status)).scalars())


def test_worker_once_sends_what_is_due_and_reports_json(workdir: Path, engine: Engine):
    args = ["--config", str(workdir / "config.toml"), "worker", "--once", "--json"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sent"] == 6 and report["errors"] == []  # an SMS and an email each
    assert statuses(engine) == ["sent"] * 6
    again = json.loads(CliRunner().invoke(cli_app, args).stdout)
    assert again["sent"] == 0


def test_worker_loops_until_sigterm_then_exits_cleanly(workdir: Path, engine: Engine):
    worker = subprocess.Popen(
        [sys.executable, "-m", "reminder", "--config", str(workdir / "config.toml"), "worker",
         "--interval", "0.2", "--json"],
        cwd=workdir, env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while statuses(engine) != ["sent"] * 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # a few idle passes
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert json.loads(out)["sent"] == 6 and statuses(engine) == ["sent"] * 6


def test_a_failing_pass_does_not_stop_the_worker(
    tmp_path: Path, config: Config, caplog: pytest.LogCaptureFixture
):
    """A database not there yet (no tables): passes fail, each logged in one line without
    SQL, the worker backs off and goes on; once the database is back, the next pass
    sends. `--once` reports the failure."""
    from reminder.cli import worker as module
    from reminder.cli.worker import work
    from reminder.db.engine import make_engine
    from reminder.db.migrate import upgrade_to_head

    engine = make_engine(f"sqlite:///{tmp_path / 'late.db'}")
    app = bootstrap(config, engine=engine, clock=FixedClock(SEND_AT))
    with pytest.raises(Exception, match="no such table"):  # `--once`: exit code != 0
        work(app, once=True)
    stop = threading.Event()

    def database_comes_back() -> None:
        time.sleep(0.4)  # a few failing passes first
        upgrade_to_head(engine)
        p = Portfolio()
        p.loan("L1", p.borrower("B1", phone="+12125550100"), first_due=D - timedelta(days=2),
               count=1)  # fmt: skip
        p.save(engine)
        run_day(app, RunOptions(run_date=D, dispatch=False))
        deadline = time.monotonic() + 30
        while "planned" in statuses(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()

    helper = threading.Thread(target=database_comes_back)
    helper.start()
    with caplog.at_level(logging.INFO, logger=module.__name__):
        report = work(app, interval=0.05, stop=stop)
    helper.join()
    logged = [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]
    assert len(logged) == len(report.errors)
    assert all("\n" not in m and "SELECT" not in m and "+1212" not in m for m in logged)
    assert report.errors and all(e.startswith("pass failed: OperationalError") for e in
                                 report.errors)  # fmt: skip
    assert all("SELECT" not in error for error in report.errors)  # one line, no SQL
    assert report.sent == 2 and statuses(engine) == ["sent", "sent"]  # an SMS and an email
    engine.dispose()


# --- two daily runs at once, on PostgreSQL --------------------------------------------------
# (4 `reminder worker` and 2 `reminder serve` processes over 50,000 messages to the fake
# Twilio: tests/e2e/test_workers_at_scale.py)

RUN = """
import json, os, sys, threading, time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from reminder.bootstrap import bootstrap
from reminder.clock import FixedClock
from reminder.config import load_config
from reminder.db.engine import make_engine
from reminder.errors import RunInProgress
from reminder.ports import SendResult
from reminder.services.daily_run import RunOptions, run_day

url, config_path, log_path, go = sys.argv[1:5]


class FileSender:
    # Appends one JSON line per send (O_APPEND: lines of all processes never interleave).
    provider = "fake"
    lookup_window = timedelta(0)

    def __init__(self):
        self.fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self.count, self.lock = 0, threading.Lock()

    def send(self, message):
        with self.lock:
            self.count += 1
            number = self.count
        line = {"ref": message.reference, "ids": list(message.message_ids),
                "t": time.time(), "pid": os.getpid()}
        os.write(self.fd, (json.dumps(line) + "\\n").encode())
        return SendResult("fake", f"{os.getpid()}-{number}")

    def lookup(self, message, since):
        return None


sender = FileSender()
app = bootstrap(load_config(Path(config_path)), engine=make_engine(url),
                clock=FixedClock(datetime(2026, 12, 2, 15, tzinfo=UTC)),
                senders={"sms": sender, "email": sender, "voice": sender})
time.sleep(max(0.0, float(go) - time.time()))  # both processes start at the same instant
try:
    summary = run_day(app, RunOptions(run_date=date(2026, 12, 2), skip_if_done=True))
    print(json.dumps({"run": summary.get("skipped", "ran")}))
except RunInProgress:
    print(json.dumps({"run": "busy"}))
"""


@pytest.mark.postgres
def test_two_daily_runs_at_once_one_plans_the_other_skips(
    database_url: str, engine: Engine, tmp_path: Path
):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serializes the two runs; tested elsewhere")
    p = Portfolio()
    for n in range(300):
        p.loan(f"L{n}", p.borrower(f"B{n}", phone=f"+1212{n:07d}"),
               first_due=D - timedelta(days=2), count=1)  # fmt: skip
    p.save(engine)
    go = str(time.time() + 3)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RUN, database_url,
                               str(REPO / "config.toml"), str(tmp_path / "sent.jsonl"), go],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    ran = sorted(json.loads(proc.communicate(timeout=60)[0])["run"] for proc in procs)
    with engine.connect() as conn:
        assert conn.execute(select(runs.c.run_date, runs.c.status)).all() == [(D, "done")]
    assert ran in (["busy", "ran"], ["already done", "ran"])
