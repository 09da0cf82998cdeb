"""At scale on PostgreSQL: 4 `reminder worker` and 2 `reminder serve --no-dispatch` processes.

50,000 SMS (one per borrower; 5,000 borrowers have two overdue loans, so 55,000 message
rows) go through the real Twilio adapter to the fake Twilio, a process of its own that
logs every arrival. Nothing is planned when the processes start: both schedulers,
started after `[run] time` on a day not yet run, add a catch-up daily run at once, and
the run ledger lets exactly one of them plan. The workers, already polling, then share
the sending. The processes run on the real clock, so the lender and the borrowers live
in a zone where it is now mid-day (`tests.scale.midday_zone`).

Checked at the provider's end: every consolidated message arrived exactly once, no
sliding second held more than `rate_per_second`; in the database: every row `sent`
with the provider's id for its message, one run, done; and each process exits 0 on
SIGTERM. It takes a couple of minutes (50,000 messages at <= 400/s): marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine, func, select

from reminder.db.tables import messages, runs
from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, read_log
from tests.scale import (
    CONFIG,
    busiest_second,
    cpu_seconds,
    fake_twilio_process,
    local_today,
    midday_zone,
    sms_portfolio,
    write_portfolio,
)

REPO = Path(__file__).resolve().parents[2]
MESSAGES, DOUBLES = 50_000, 5_000  # SMS sent; borrowers among them with two loans
# msg/s for the channel, all workers together: below what 4 workers reach here (~600-860),
# so the limiter, not a saturated CPU, sets the pace (at 500 the fake itself, starved of
# CPU, read arrivals in bursts: 514 in one second once)
RATE = 400
CONCURRENCY = 16  # sends in flight per worker (4 x 16 against 50 ms: far above the rate)
LATENCY_MS = 50
STALL_SECONDS = 60  # the run done and nothing sent for this long: stuck, fail



class Process:
    """A `reminder` command in its own process, its output in files (never a full pipe)."""

    def __init__(self, folder: Path, name: str, config: Path, *args: str) -> None:
        self.name = name
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        env = os.environ | {"PYTHONPATH": str(REPO), "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                            "TWILIO_AUTH_TOKEN": AUTH_TOKEN}  # fmt: skip
        with self.out.open("w") as out, self.err.open("w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "reminder", "--config", str(config), *args],
                cwd=folder, env=env, stdout=out, stderr=err,
            )  # fmt: skip
        self.cpu = 0.0

    def terminate(self) -> None:
        """SIGTERM (noting the CPU the process used first)."""
        self.cpu = cpu_seconds(self.popen.pid) or self.cpu
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        """Its exit code; a process that does not stop is killed (and fails the test)."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return -9

    def log(self) -> str:
        return self.err.read_text(errors="replace")


def progress(engine: Engine) -> tuple[bool, Counter[str]]:
    """Whether today's run is done, and the message rows by status."""
    with engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(runs)
                            .where(runs.c.status == "done")).scalar_one()  # fmt: skip
        by_status = select(messages.c.status, func.count()).group_by(messages.c.status)
        counts = Counter(dict(conn.execute(by_status).all()))
    return bool(done), counts


def wait_until_sent(engine: Engine, processes: list[Process], err: IO[str]) -> None:
    """Until the day is planned and nothing is left planned or sending (or stuck)."""
    last, moved, shown = -1, time.monotonic(), 0.0
    while True:
        time.sleep(1.0)
        gone = [p.name for p in processes if p.popen.poll() is not None]
        assert not gone, f"exited early: {gone}"
        done, counts = progress(engine)
        if done and counts and not counts["planned"] and not counts["sending"]:
            return
        if counts["sent"] != last or not done:
            last, moved = counts["sent"], time.monotonic()
        if time.monotonic() - moved > STALL_SECONDS:
            pytest.fail(f"stuck: nothing sent for {STALL_SECONDS} s; rows {dict(counts)}")
        if time.monotonic() - shown >= 10:
            shown = time.monotonic()
            print(f"  rows by status: {dict(counts)}", file=err, flush=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_and_two_schedulers_send_50000_messages_once_within_the_rate(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("several worker processes are a PostgreSQL deployment: SQLite has one "
                    "writer at a time and no advisory locks to share claims with")  # fmt: skip
    zone = midday_zone()
    today = local_today(zone)
    write_portfolio(engine, sms_portfolio(MESSAGES, DOUBLES, today, zone))
    arrivals_log = tmp_path / "arrivals.jsonl"
    with fake_twilio_process(arrivals_log, LATENCY_MS) as base_url:
        config = tmp_path / "config.toml"
        config.write_text(CONFIG.format(url=database_url, zone=zone, base_url=base_url,
                                        rate=RATE, concurrency=CONCURRENCY))  # fmt: skip
        started = time.monotonic()
        servers = [Process(tmp_path, f"serve{n}", config, "serve", "--no-dispatch", "--no-web")
                   for n in range(2)]  # fmt: skip
        workers = [Process(tmp_path, f"worker{n}", config, "worker", "--interval", "0.5",
                           "--json") for n in range(4)]  # fmt: skip
        try:
            wait_until_sent(engine, servers + workers, sys.stderr)
            elapsed = time.monotonic() - started
        finally:
            for process in servers + workers:
                process.terminate()
            codes = {p.name: p.wait() for p in servers + workers}
    logs = {p.name: p.log() for p in servers + workers}
    assert codes == dict.fromkeys(codes, 0), {n: logs[n][-2000:] for n in codes if codes[n]}

    # the provider's end: each consolidated message once, never over the rate
    arrived = [a for a in read_log(arrivals_log) if a["kind"] == "message"]
    refs = Counter(parse_qs(urlsplit(a["status_callback"]).query)["ref"][0] for a in arrived)
    assert len(refs) == MESSAGES and refs.most_common(1)[0][1] == 1
    assert len({a["to"] for a in arrived}) == MESSAGES  # one SMS per borrower
    moments = [a["arrived_at"] for a in arrived]
    busiest = busiest_second(moments)
    assert busiest <= RATE

    # the database: every row sent, with the provider's id of the message it went in
    with engine.connect() as conn:
        rows = conn.execute(select(messages.c.status, messages.c.batch_key,
                                   messages.c.provider_id, messages.c.channel)).all()  # fmt: skip
        days = conn.execute(select(runs.c.run_date, runs.c.status, runs.c.owner, runs.c.summary,
                                   runs.c.started_at, runs.c.finished_at)).all()  # fmt: skip
    assert len(rows) == MESSAGES + DOUBLES
    assert Counter(r.status for r in rows) == {"sent": MESSAGES + DOUBLES}
    assert {r.channel for r in rows} == {"sms"}
    sid_of = {parse_qs(urlsplit(a["status_callback"]).query)["ref"][0]: a["sid"] for a in arrived}
    assert all(r.provider_id == sid_of[r.batch_key] for r in rows)
    assert sorted(Counter(Counter(r.batch_key for r in rows).values()).items()) == [
        (1, MESSAGES - DOUBLES), (2, DOUBLES)]  # fmt: skip

    # one daily run, by one of the schedulers; both tried (each added its catch-up run)
    assert [(d.run_date, d.status) for d in days] == [(today, "done")]
    assert days[0].summary["planned"] == MESSAGES + DOUBLES  # (sent: what workers did meanwhile)
    assert days[0].owner.rsplit(":", 1)[1] in {str(s.popen.pid) for s in servers}
    for server in servers:
        assert "catch-up daily run" in logs[server.name], logs[server.name][-2000:]
        assert "daily run failed" not in logs[server.name], logs[server.name][-2000:]

    # the sending was shared
    reports = [json.loads(p.out.read_text()) for p in workers]
    assert all(r["errors"] == [] for r in reports), [r["errors"][:3] for r in reports]
    per_worker = [r["sent"] for r in reports]
    assert sum(per_worker) == MESSAGES + DOUBLES
    assert sum(1 for n in per_worker if n) >= 3, per_worker

    span = max(moments) - min(moments)
    planning = (days[0].finished_at - days[0].started_at).total_seconds()
    print(f"\n{MESSAGES} messages ({MESSAGES + DOUBLES} rows) through 4 workers in {span:.1f} s "
          f"at the provider = {MESSAGES / span:.0f} msg/s (limit {RATE}/s, busiest second "
          f"{busiest}); {elapsed:.1f} s from the processes' start (the daily run, by "
          f"{days[0].owner}: {planning:.1f} s); rows per worker {per_worker}; worker CPU s "
          f"{[round(p.cpu, 1) for p in workers]}; load average {os.getloadavg()[0]:.1f}")
