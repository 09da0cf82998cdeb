"""Real processes on the real clock, at scale: what tests/e2e and bench/ share.

`reminder worker` and `reminder serve` read the wall clock, so a portfolio meant to be
sent "now" is built around today in a zone where it is now mid-day (`midday_zone`): the
day's run, planned after `[run] time`, has its messages due at once inside the contact
window. The rows are written with COPY on PostgreSQL (`write_portfolio`), the fake
Twilio runs as a process of its own (`fake_twilio_process`), and the figures come from
its arrival log (`busiest_second`) and from /proc (`cpu_seconds`).
"""

from __future__ import annotations

import bisect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table

from reminder.db.tables import borrowers, installments, loans, payments
from tests.portfolio import Portfolio

REPO = Path(__file__).resolve().parents[1]
LOCAL_HOUR = 12  # where `midday_zone` puts "now": hours from the run time and the window's ends


# A lender and its borrowers in `zone`, one SMS stage, the Twilio adapter on `base_url`.
CONFIG = """
[database]
url = "{url}"
[run]
time = "06:00"
timezone = "{zone}"
[policy]
contact_window = ["08:00", "21:00"]
skip_weekends = false
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
rate_per_second = {rate}
concurrency = {concurrency}
[server]
public_url = "https://bot.lender.example"
"""


def midday_zone(now: datetime | None = None) -> str:
    """An `Etc/GMT±N` zone where it is now LOCAL_HOUR o'clock (POSIX signs: GMT+5 = UTC-5)."""
    offset = LOCAL_HOUR - (now or datetime.now(UTC)).astimezone(UTC).hour  # -11 .. +12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def local_today(zone: str, now: datetime | None = None) -> date:
    from zoneinfo import ZoneInfo

    return (now or datetime.now(UTC)).astimezone(ZoneInfo(zone)).date()


def sms_portfolio(messages: int, doubles: int, today: date, zone: str) -> Portfolio:
    """`messages` borrowers each due one SMS today (dpd 2); the first `doubles` have a
    second overdue loan (dpd 3), so their SMS is one consolidated message for two rows."""
    p = Portfolio()
    for n in range(messages):
        borrower = p.borrower(f"B{n:06d}", phone=f"+1212{n:07d}", timezone=zone,
                              consent_email=False, consent_voice=False)  # fmt: skip
        p.loan(f"L{n:06d}a", borrower, first_due=today - timedelta(days=2), count=1)
        if n < doubles:
            p.loan(f"L{n:06d}b", borrower, first_due=today - timedelta(days=3), count=1)
    return p


def write_portfolio(engine: Engine, portfolio: Portfolio) -> None:
    """Write the portfolio in one transaction: COPY on PostgreSQL, else `Portfolio.save`."""
    if engine.dialect.name != "postgresql":
        portfolio.save(engine)
        return
    tables: list[tuple[Table, list[dict[str, Any]]]] = [
        (borrowers, portfolio.borrowers), (loans, portfolio.loans),
        (installments, portfolio.installments), (payments, portfolio.payments),
    ]  # fmt: skip
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            for table, rows in tables:
                if not rows:
                    continue
                # each value as the column type stores it (Money: integer cents)
                columns = [(name, table.c[name].type.bind_processor(engine.dialect))
                           for name in rows[0]]  # fmt: skip
                names = ", ".join(name for name, _ in columns)
                with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([bind(row[n]) if bind else row[n] for n, bind in columns])
            for table, rows in tables:
                if rows:
                    cursor.execute(f"ANALYZE {table.name}")
        driver.commit()
    finally:
        raw.close()


@contextmanager
def fake_twilio_process(log: Path, latency_ms: float) -> Iterator[str]:
    """The fake Twilio in its own process, appending a JSON line per accepted message to
    `log`; yields its base URL; stopped (SIGTERM) on exit."""
    command = [sys.executable, "-m", "tests.fakes.fake_twilio", "--port", "0",
               "--latency-ms", str(latency_ms), "--log", str(log)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        found = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert found, "the fake Twilio did not start"
        yield found.group(0)
    finally:
        process.terminate()
        process.wait(timeout=30)


def busiest_second(instants: list[float]) -> int:
    """The most instants inside any half-open sliding 1-second window."""
    ordered = sorted(instants)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)),
               default=0)  # fmt: skip


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a live process, or of one of its threads (`thread` is
    the thread's id; the main thread's is the pid); 0.0 once it is gone."""
    try:
        path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
