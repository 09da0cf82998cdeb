"""Crash test: a dispatcher killed with SIGKILL at random moments never sends a message twice.

2,000 SMS go through the Twilio adapter to the fake Twilio (its own process, logging every
accepted message as a JSON line). A dispatcher process is SIGKILLed at a random moment 20
times, each time replaced by a fresh one (forked from a warm launcher, so the 20 rounds
cost seconds, not 20 interpreter start-ups), then a last one runs to the end. The
provider's log must show no message twice, and every row must end `sent` (with the id
the provider logged) or `unknown` with a note for a person, never anything the provider
has no record of.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from reminder.bootstrap import bootstrap
from reminder.config import load_config
from reminder.db.engine import make_engine
from reminder.db.tables import messages
from reminder.services.daily_run import RunOptions, run_day
from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, duplicate_callbacks, read_log
from tests.portfolio import Portfolio

REPO = Path(__file__).resolve().parents[2]
D = date(2026, 12, 2)
MESSAGES, KILLS = 2000, 20

CONFIG = """
[run]
timezone = "America/New_York"
[policy]
holidays = ""
caps = {{ sms = [100, 7], email = [100, 7], voice = [100, 7] }}
[[stages]]
name = "early"
dpd = [1, 7]
every_days = 3
channels = ["sms"]
[channels.sms]
provider = "twilio"
from = "+15005550001"
base_url = "{base_url}"
rate_per_second = 150
concurrency = 16
timeout_seconds = 5
lookup_window_seconds = 1
[server]
public_url = "https://bot.lender.example"
"""


def dispatch_until_done(config_path: str) -> None:
    """One dispatcher: dispatch until nothing is planned or sending any more."""
    from sqlalchemy import func

    from reminder.services.dispatch import dispatch_due

    app = bootstrap(config_path=Path(config_path))
    app.check_channels()
    while True:
        dispatch_due(app)
        with app.engine.connect() as conn:
            left = conn.execute(select(func.count()).where(
                messages.c.status.in_(("planned", "sending")))).scalar_one()  # fmt: skip
        if not left:
            return
        time.sleep(0.2)  # rows waiting out the lookup window


def launcher(config_path: str, delays: list[float]) -> None:
    """Fork a dispatcher per delay and SIGKILL it after that long; then one to the end.

    Imports happen once, here, before any fork: a dispatcher process starts in
    milliseconds, so 20 rounds cost what the sending costs, not 20 interpreter start-ups.
    """
    import reminder.services.dispatch  # noqa: F401 - warm every import before forking
    from integrations import twilio_sms  # noqa: F401

    for delay in [*delays, None]:
        pid = os.fork()
        if pid == 0:
            try:
                dispatch_until_done(config_path)
            finally:
                os._exit(0)
        if delay is None:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.fixture
def fake_twilio(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "accepted.jsonl"
    command = [sys.executable, "-m", "tests.fakes.fake_twilio", "--port", "0",
               "--latency-ms", "50", "--log", str(log)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert found, line
    yield found.group(0), log
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.slow
def test_sigkilled_dispatchers_never_send_a_message_twice(tmp_path, database_url, fake_twilio):
    started = time.monotonic()
    base_url, log = fake_twilio
    config_path = tmp_path / "config.toml"
    config_path.write_text(CONFIG.format(base_url=base_url), encoding="utf-8")
    env = {**os.environ, "REMINDER_DATABASE_URL": database_url,
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}  # fmt: skip
    engine = make_engine(database_url)
    portfolio = Portfolio()
    for n in range(MESSAGES):
        borrower = portfolio.borrower(f"B{n}", phone=f"+1212{n:07d}")
        portfolio.loan(f"L{n}", borrower, first_due=D - timedelta(days=2), count=1)
    portfolio.save(engine)
    run_day(bootstrap(load_config(config_path), engine=engine), RunOptions(run_date=D,
                                                                          dispatch=False))

    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261204")))
    delays = [round(rng.uniform(0.15, 0.8), 3) for _ in range(KILLS)]
    planned_at = time.monotonic()
    code = ("from tests.e2e.test_dispatch_crash import launcher; "
            f"launcher({str(config_path)!r}, {delays!r})")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=120,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    finished_at = time.monotonic()

    accepted = [r for r in read_log(log) if r["kind"] == "message"]
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(messages)).mappings()]
    engine.dispose()
    refs = Counter(r["status_callback"].rsplit("ref=", 1)[1] for r in accepted)
    assert [ref for ref, n in refs.items() if n > 1] == [], "a message was sent twice"
    assert duplicate_callbacks(accepted) == []
    assert len(Counter((r["to"], r["body"]) for r in accepted)) == len(accepted)
    by_sid = {r["sid"]: r for r in accepted}
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) <= {"sent", "unknown"}, statuses
    for row in rows:
        if row["status"] == "sent":
            assert by_sid[row["provider_id"]]["to"] == row_phone(row)
        else:
            assert row["error"] and "check the provider" in row["error"]
            assert row["batch_key"] not in refs  # unknown only when the provider has nothing
    assert statuses["sent"] == len(accepted) and len(rows) == MESSAGES
    elapsed = time.monotonic() - started
    summary = {"kills": KILLS, "sent": statuses["sent"], "unknown": statuses["unknown"],
               "seconds": round(elapsed, 1),
               "crash_phase_seconds": round(finished_at - planned_at, 1)}  # fmt: skip
    print(json.dumps(summary))  # the time is a figure to read, not a pass/fail (STYLE:
    # speed targets live in bench/; on an idle 2-core machine this takes 25-45 s)


def row_phone(row: dict[str, object]) -> str:
    return f"+1212{int(str(row['borrower_id'])[1:]):07d}"
