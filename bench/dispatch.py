"""Benchmark the dispatcher: SMS through the Twilio adapter to the fake Twilio (50 ms).

Two figures, both measured at the provider's end (the fake's JSON log of arrivals):

1. Throughput: 10,000 SMS planned and dispatched with `rate_per_second` set high and a
   bounded pool (`concurrency`, default 64): messages per second, end to end (claim,
   re-check, render, send, record), target >= 500 msg/s.
2. Rate adherence: with `rate_per_second = 20`, the most messages that arrived in any
   sliding one-second window (must be <= 20) and the mean rate.

    python bench/dispatch.py                      # 10,000 + 300 at 20/s
    python bench/dispatch.py --messages 2000 --rated 100 --concurrency 32
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reminder.bootstrap import bootstrap  # noqa: E402
from reminder.config import load_config  # noqa: E402
from reminder.db.engine import make_engine  # noqa: E402
from reminder.db.migrate import upgrade_to_head  # noqa: E402
from reminder.services.daily_run import RunOptions, run_day  # noqa: E402
from reminder.services.dispatch import dispatch_due  # noqa: E402
from reminder.services.sending import TokenBucket  # noqa: E402
from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, read_log  # noqa: E402
from tests.portfolio import Portfolio  # noqa: E402

D = date(2026, 12, 2)
CONFIG = """
[run]
timezone = "America/New_York"
[policy]
holidays = ""
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


def start_fake(log: Path, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tests.fakes.fake_twilio", "--port", "0",
               "--latency-ms", str(latency_ms), "--log", str(log)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    found = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
    assert found, "the fake Twilio did not start"
    return process, found.group(0)


def run(folder: Path, count: int, rate: float, concurrency: int, latency_ms: float) -> dict:
    """Plan `count` SMS, dispatch them all, return the figures from the fake's log."""
    log = folder / f"accepted-{rate}.jsonl"
    fake, base_url = start_fake(log, latency_ms)
    try:
        config_path = folder / f"config-{rate}.toml"
        config_path.write_text(CONFIG.format(base_url=base_url, rate=rate,
                                             concurrency=concurrency), encoding="utf-8")
        engine = make_engine(f"sqlite:///{folder / f'bench-{rate}.db'}")
        upgrade_to_head(engine)
        portfolio = Portfolio()
        for n in range(count):
            borrower = portfolio.borrower(f"B{n}", phone=f"+1212{n:07d}")
            portfolio.loan(f"L{n}", borrower, first_due=D - timedelta(days=2), count=1)
        portfolio.save(engine)
        app = bootstrap(load_config(config_path), engine=engine)
        run_day(app, RunOptions(run_date=D, dispatch=False))
        limiter = GrantLog(TokenBucket(rate))  # a fresh bucket: no credit from an earlier run
        started = time.monotonic()
        report = dispatch_due(app, limiters={"sms": limiter})
        elapsed = time.monotonic() - started
        engine.dispose()
    finally:
        fake.terminate()
        fake.wait()
    arrivals = sorted(r["arrived_at"] for r in read_log(log) if r["kind"] == "message")
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return {"sent": report.sent, "accepted": len(arrivals), "seconds": elapsed,
            "per_second": report.sent / elapsed, "busiest_second": busiest_second(arrivals),
            "busiest_granted": busiest_second(sorted(limiter.times)),
            "provider_rate": (len(arrivals) - 1) / span if span else 0.0}  # fmt: skip


class GrantLog:
    """Wraps a limiter and notes when each request was let through (our side's figure)."""

    def __init__(self, limiter: TokenBucket) -> None:
        self.limiter, self.times = limiter, []  # type: list[float]

    def acquire(self) -> None:
        self.limiter.acquire()
        self.times.append(time.monotonic())


def busiest_second(moments: list[float]) -> int:
    """The most instants in any sliding one-second window (moments sorted)."""
    busiest, start = 0, 0
    for end, moment in enumerate(moments):
        while moment - moments[start] >= 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rated", type=int, default=300, help="messages for the 20/s run")
    args = parser.parse_args()
    os.environ.setdefault("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    os.environ.setdefault("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fast = run(folder, args.messages, 100_000, args.concurrency, args.latency_ms)
        print(f"throughput: {fast['sent']} SMS in {fast['seconds']:.1f} s = "
              f"{fast['per_second']:.0f} msg/s (rate_per_second high, concurrency "
              f"{args.concurrency}, {args.latency_ms:.0f} ms provider latency; target >= 500)")
        slow = run(folder, args.rated, 20, args.concurrency, args.latency_ms)
        verdict = "OK" if slow["busiest_second"] <= 20 else "EXCEEDED"
        print(f"rate 20/s: {slow['accepted']} SMS, busiest 1-second window: "
              f"{slow['busiest_granted']} let through by the limiter, "
              f"{slow['busiest_second']} arriving at the provider ({verdict}); "
              f"mean {slow['provider_rate']:.2f} msg/s at the provider")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs (arrival jitter grows with it)")


if __name__ == "__main__":
    main()
