"""`reminder serve`: the daily-run job's settings, its next fire time, a clean Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from reminder.bootstrap import bootstrap
from reminder.config import Config
from reminder.scheduler import MISFIRE_GRACE_SECONDS, build_scheduler

REPO = Path(__file__).resolve().parents[2]


def test_the_daily_run_is_scheduled_at_run_time_in_the_lenders_timezone(
    config: Config, database_url: str
) -> None:
    from reminder.db.engine import make_engine

    app = bootstrap(config, engine=make_engine(database_url))
    scheduler = build_scheduler(app)
    job = scheduler.get_job("daily_run")
    assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (
        True, 1, MISFIRE_GRACE_SECONDS)
    after = datetime(2026, 3, 7, 13, 0, tzinfo=UTC)  # 08:00 New York, the day before DST
    fire = job.trigger.get_next_fire_time(None, after)
    assert fire.astimezone(UTC) == datetime(2026, 3, 8, 11, 0, tzinfo=UTC)  # 07:00 EDT
    assert scheduler.get_job("dispatch") is not None


def test_serve_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-c", "from reminder.cli import main; main()",
         "--config", str(tmp_path / "config.toml"), "serve", "--no-web"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        seen = ""
        while time.monotonic() < deadline and "scheduler started" not in seen:
            seen += process.stdout.readline()
        assert "scheduler started" in seen
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_scheduler_started_after_run_time_catches_up_a_missed_day(
    config: Config, database_url: str
) -> None:
    from reminder.clock import FixedClock
    from reminder.db.engine import make_engine
    from reminder.services.daily_run import RunOptions, run_day

    engine = make_engine(database_url)
    late = FixedClock(datetime(2026, 12, 2, 15, 0, tzinfo=UTC))  # 10:00 in New York
    app = bootstrap(config, engine=engine, clock=late)
    assert build_scheduler(app).get_job("catch_up") is not None
    run_day(app, RunOptions())  # today's run happens
    assert build_scheduler(app).get_job("catch_up") is None
    early = bootstrap(config, engine=engine,
                      clock=FixedClock(datetime(2026, 12, 3, 11, 0, tzinfo=UTC)))  # 06:00 NY
    assert build_scheduler(early).get_job("catch_up") is None
    engine.dispose()


def test_serve_without_dispatch_plans_the_day_and_leaves_the_sending_to_workers(
    config: Config, database_url: str
) -> None:
    from datetime import date, timedelta

    from sqlalchemy import select

    from reminder.clock import FixedClock
    from reminder.db.engine import make_engine
    from reminder.db.tables import messages
    from tests.portfolio import Portfolio

    engine = make_engine(database_url)
    p = Portfolio()
    p.loan("L1", p.borrower("B1", phone="+12125550101"), first_due=date(2026, 11, 30), count=1)
    p.save(engine)
    now = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # 10:00 in New York: due at once
    scheduler = build_scheduler(bootstrap(config, engine=engine, clock=FixedClock(now)),
                                dispatch=False)  # fmt: skip
    assert scheduler.get_job("dispatch") is None
    catch_up = scheduler.get_job("catch_up")
    catch_up.func(*catch_up.args)  # what the scheduler runs at once
    with engine.connect() as conn:
        rows = conn.execute(select(messages.c.status, messages.c.not_before)).all()
    assert rows and {status for status, _ in rows} == {"planned"}
    assert all(not_before <= now + timedelta(seconds=1) for _, not_before in rows)
    engine.dispose()
