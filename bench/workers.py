"""Benchmark dispatch with 1, 2 and 4 `reminder worker` processes, on SQLite and PostgreSQL.

N SMS (default 20,000, one per borrower) are planned for today and sent by real
`reminder worker` processes through the Twilio adapter to the fake Twilio (a process of
its own, 50 ms per answer), with `rate_per_second` set high so that only the machine
limits. The processes use the real clock: lender and borrowers live in a zone where it
is now mid-day (`tests.scale.midday_zone`), so today's messages are due at once.

Per measurement: a fresh database with the portfolio; the fake; K workers started and
idle; then today's run plans (in this process), and the clock runs from its commit to
the moment no row is left `planned` or `sending`. Reported: msg/s, the ratio to one
worker, and where the CPU went (ms per message: the workers' main threads, which claim,
re-check, render and record; their send threads, which run the Twilio client and the
rate limiter; the fake; the PostgreSQL backends), read from /proc, and how many cores
these processes and the whole machine (other people's work included) kept busy.

    python bench/workers.py                                           # SQLite only
    python bench/workers.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
    python bench/workers.py --messages 5000 --workers 1 2 --repeat 1 --no-sqlite --postgres URL

(With --postgres, a database `bench_workers_<random>` is created on that server for each
measurement and dropped afterwards.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from reminder.bootstrap import bootstrap  # noqa: E402
from reminder.config import load_config  # noqa: E402
from reminder.db.engine import make_engine  # noqa: E402
from reminder.db.migrate import upgrade_to_head  # noqa: E402
from reminder.db.tables import messages  # noqa: E402
from reminder.services.daily_run import RunOptions, run_day  # noqa: E402
from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, read_log  # noqa: E402
from tests.scale import (  # noqa: E402
    CONFIG,
    cpu_seconds,
    fake_twilio_process,
    local_today,
    midday_zone,
    sms_portfolio,
    write_portfolio,
)

ACTIVITY = """SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()"""


@dataclass
class Result:
    """One measurement."""

    backend: str
    workers: int
    messages: int
    seconds: float
    per_worker: list[int]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by part
    load: float = 0.0
    waits: dict[str, float] = field(default_factory=dict)  # PostgreSQL: backends per state

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class CpuMeter:
    """CPU seconds used since `start()` by the workers (main thread / the rest), the fake
    and this database's PostgreSQL backends (sampled as they come and go); and what those
    backends were doing at each sample (`pg_stat_activity`: running, waiting for a lock,
    for the WAL flush, or idle in a transaction while the worker works)."""

    def __init__(self, workers: list[subprocess.Popen[str]], fake_pid: int | None,
                 engine: Engine) -> None:  # fmt: skip
        self.workers, self.fake_pid, self.engine = workers, fake_pid, engine
        self.backends: dict[int, list[float]] = {}  # pid -> [first seen, last seen]
        self.base: dict[str, float] = {}
        self.states: Counter[str] = Counter()
        self.samples = 0

    def _parts(self) -> dict[str, float]:
        main = sum(cpu_seconds(w.pid, w.pid) for w in self.workers)
        whole = sum(cpu_seconds(w.pid) for w in self.workers)
        fake = cpu_seconds(self.fake_pid) if self.fake_pid else 0.0
        return {"worker main": main, "worker send": whole - main, "fake": fake,
                "machine": machine_busy_seconds()}  # fmt: skip

    def sample_backends(self) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.connect() as conn:
            found = conn.execute(text(ACTIVITY)).all()
        for pid, *_ in found:
            seen = cpu_seconds(pid)
            self.backends.setdefault(pid, [seen, seen])[1] = seen
        self.samples += 1
        for _, state, kind, event in found:
            if state == "active":
                self.states["running" if kind is None else f"{kind}:{event}"] += 1
            elif state == "idle in transaction":
                self.states[state] += 1

    def waits(self) -> dict[str, float]:
        """Backends in each state, on average over the samples since `start()`."""
        return {k: n / max(1, self.samples) for k, n in self.states.most_common()}

    def start(self) -> None:
        self.sample_backends()
        for seen in self.backends.values():
            seen[0] = seen[1]  # what a backend used before now (planning) is not counted
        self.states.clear()
        self.samples = 0
        self.base = self._parts()

    def used(self) -> dict[str, float]:
        self.sample_backends()
        now = self._parts()
        parts = {name: now[name] - self.base[name] for name in now}
        if self.engine.dialect.name == "postgresql":
            parts["postgres"] = sum(last - first for first, last in self.backends.values())
        return parts


@contextmanager
def database(backend: str, postgres: str | None, folder: Path) -> Iterator[str]:
    """A fresh, migrated database; dropped (PostgreSQL) afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        engine = make_engine(url)
        upgrade_to_head(engine)
        engine.dispose()
        yield url
        return
    assert postgres is not None
    server = make_url(postgres).set(drivername="postgresql+psycopg")
    name = f"bench_workers_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        upgrade_to_head(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_workers(count: int, config: Path, folder: Path) -> list[subprocess.Popen[str]]:
    """`count` `reminder worker` processes, returned once each has logged its start."""
    env = os.environ | {"PYTHONPATH": str(REPO), "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                        "TWILIO_AUTH_TOKEN": AUTH_TOKEN}  # fmt: skip
    procs = []
    for n in range(count):
        with (folder / f"worker{n}.out").open("w") as out, \
                (folder / f"worker{n}.err").open("w") as err:  # fmt: skip
            command = [sys.executable, "-m", "reminder", "--config", str(config), "worker",
                       "--interval", "0.2", "--json"]  # fmt: skip
            procs.append(subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err))
    deadline = time.monotonic() + 120
    while not all("worker started" in (folder / f"worker{n}.err").read_text()
                  for n in range(count)):  # fmt: skip
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"workers did not start; see {folder}/worker*.err")
        time.sleep(0.1)
    return procs


def left(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(
            messages.c.status.in_(("planned", "sending")))).scalar_one()  # fmt: skip


def measure(backend: str, workers: int, args: argparse.Namespace, root: Path) -> Result:
    folder = Path(tempfile.mkdtemp(prefix=f"{backend}-{workers}-", dir=root))
    zone = midday_zone()
    arrivals = folder / "arrivals.jsonl"
    with database(backend, args.postgres, folder) as url, \
            fake_twilio_process(arrivals, args.latency_ms) as base_url:  # fmt: skip
        engine = make_engine(url)
        write_portfolio(engine, sms_portfolio(args.messages, 0, local_today(zone), zone))
        config = folder / "config.toml"
        config.write_text(CONFIG.format(url=url, zone=zone, base_url=base_url, rate=100_000,
                                        concurrency=args.concurrency))  # fmt: skip
        procs = start_workers(workers, config, folder)
        try:
            meter = CpuMeter(procs, fake_pid(base_url), engine)
            meter.sample_backends()  # the backends' CPU before the run, too
            run_day(bootstrap(load_config(config), engine=engine), RunOptions(dispatch=False))
            meter.start()  # the workers send from the run's commit on: the clock starts
            started = time.monotonic()
            while left(engine):
                meter.sample_backends()
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"not done after {args.timeout} s; see {folder}")
                time.sleep(0.25)
            seconds = time.monotonic() - started
            cpu, waits = meter.used(), meter.waits()
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
            engine.dispose()
        if codes != [0] * workers:
            raise RuntimeError(f"workers exited {codes}; see {folder}")
    per_worker = [json.loads((folder / f"worker{n}.out").read_text())["sent"]
                  for n in range(workers)]  # fmt: skip
    arrived = [a for a in read_log(arrivals) if a["kind"] == "message"]
    if len(arrived) != args.messages or sum(per_worker) != args.messages:
        raise RuntimeError(f"{len(arrived)} arrived, {sum(per_worker)} recorded; see {folder}")
    return Result(backend, workers, args.messages, seconds, per_worker, cpu,
                  os.getloadavg()[0], waits)


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def fake_pid(base_url: str) -> int | None:
    """The fake Twilio's pid, found by the port it listens on (from /proc/net/tcp)."""
    port = int(base_url.rsplit(":", 1)[1])
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state, inode = line.split()[1], line.split()[3], line.split()[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:  # LISTEN
            inodes.add(f"socket:[{inode}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def fmt(waits: dict[str, float]) -> str:
    return ", ".join(f"{state} {n:.2f}" for state, n in list(waits.items())[:5])


def report(results: list[Result]) -> None:
    """The median run per backend and worker count; its CPU split in ms per message."""
    print("\nbackend    workers  msg/s  ratio  runs        | CPU ms/msg: worker main, worker "
          "send, fake, postgres = ours | cores busy: ours, machine")
    for backend in dict.fromkeys(r.backend for r in results):
        mine = [r for r in results if r.backend == backend]
        singles = [r.rate for r in mine if r.workers == 1]
        base = statistics.median(singles) if singles else None
        for workers in sorted({r.workers for r in mine}):
            runs = sorted((r for r in mine if r.workers == workers), key=lambda r: r.rate)
            middle = runs[len(runs) // 2]
            rate = statistics.median(r.rate for r in runs)
            ratio = f"{rate / base:.2f}" if base else "-"
            ms = {k: 1000 * v / middle.messages for k, v in middle.cpu.items()}
            ours = sum(v for k, v in middle.cpu.items() if k != "machine")
            print(f"{backend:<10} {workers:>7} {rate:>6.0f} {ratio:>6}  "
                  f"{', '.join(f'{r.rate:.0f}' for r in runs):<11} | "
                  f"{ms['worker main']:.2f}, {ms['worker send']:.2f}, {ms['fake']:.2f}, "
                  f"{ms.get('postgres', 0.0):.2f} = {1000 * ours / middle.messages:.2f} | "
                  f"{ours / middle.seconds:.2f}, {middle.cpu['machine'] / middle.seconds:.2f}")
            if middle.waits:
                print(f"{'':>18}PostgreSQL backends by state, on average: {fmt(middle.waits)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (median)")
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight per worker")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--postgres", default=os.environ.get("REMINDER_BENCH_POSTGRES_URL"),
                        help="a PostgreSQL server URL (default $REMINDER_BENCH_POSTGRES_URL)")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    backends = ([] if args.no_sqlite else ["sqlite"]) + (["postgresql"] if args.postgres else [])
    print(f"{args.messages} SMS per run, fake Twilio at {args.latency_ms:.0f} ms, concurrency "
          f"{args.concurrency} per worker, {os.cpu_count()} CPUs; backends {backends}")
    results: list[Result] = []
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))  # kept when a run fails: its logs
    for _ in range(args.repeat):  # interleaved: a change in the machine's load hits all
        for backend in backends:
            for workers in args.workers:
                result = measure(backend, workers, args, root)
                results.append(result)
                print(f"  {backend} {workers} worker(s): {result.messages} in "
                      f"{result.seconds:.1f} s = {result.rate:.0f} msg/s, per worker "
                      f"{result.per_worker}, CPU s "
                      f"{ {k: round(v, 1) for k, v in result.cpu.items()} }, "
                      f"load average {result.load:.1f}" + (
                          f"; backends by state {fmt(result.waits)}" if result.waits else ""),
                      flush=True)  # fmt: skip
    shutil.rmtree(root)
    report(results)


if __name__ == "__main__":
    main()
