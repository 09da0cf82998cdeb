"""Benchmark `reminder import`: installments per second, first import and re-import.

Generates borrowers, loans (rows / 6) and installments (rows) CSV files, imports them into
a fresh SQLite file database (and into a fresh PostgreSQL database on the server named by
REMINDER_BENCH_POSTGRES_URL, when set) and prints rows/s and the peak RSS of the process.
The target is 100k installment rows/s on SQLite. Wall-clock rates depend on what else the
machine runs; rows per CPU-second (this process's user + system time) do much less.

    python bench/import_bench.py                 # 1,000,000 installments
    python bench/import_bench.py --full          # 6,000,000 installments
    python bench/import_bench.py --rows 200000 --keep-files /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from reminder.db.engine import make_engine
from reminder.db.migrate import upgrade_to_head
from reminder.services.importer import import_file

TARGET = 100_000  # installment rows/s on SQLite


def generate(folder: Path, rows: int) -> dict[str, Path]:
    """Write the three CSV files once per size (re-used on later runs with the same folder)."""
    loans = max(1, -(-rows // 6))
    borrowers = max(1, loans // 2)
    paths = {kind: folder / f"{kind}_{rows}.csv" for kind in ("borrowers", "loans", "installments")}
    if all(path.exists() for path in paths.values()):
        return paths
    with paths["borrowers"].open("w") as out:
        out.write("borrower_id,name,phone,email,timezone,locale,risk_grade\n")
        for b in range(borrowers):
            out.write(
                f"B{b:08d},Borrower {b},+1212555{b % 10000:04d},b{b}@example.com,"
                f"America/New_York,en,{'ABCDE'[b % 5]}\n"
            )
    with paths["loans"].open("w") as out:
        out.write("loan_id,borrower_id,currency,principal,opened_on,status\n")
        for n in range(loans):
            out.write(f"L{n:09d},B{n % borrowers:08d},USD,{600 + n % 5000}.00,2025-01-15,active\n")
    first = date(2025, 2, 15)
    due = [(first + timedelta(days=30 * s)).isoformat() for s in range(6)]
    with paths["installments"].open("w") as out:
        out.write("loan_id,seq,due_date,amount_due\n")
        lines = []
        for i in range(rows):
            n, s = divmod(i, 6)
            lines.append(f"L{n:09d},{s + 1},{due[s]},{100 + n % 900}.{n % 100:02d}\n")
            if len(lines) == 10_000:
                out.write("".join(lines))
                lines.clear()
        out.write("".join(lines))
    return paths


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(url: str, paths: dict[str, Path], label: str) -> None:
    engine = make_engine(url)
    upgrade_to_head(engine)
    for kind in ("borrowers", "loans"):
        report = import_file(engine, kind, paths[kind])
        print(f"{label}: {kind:<12} {report.rows:>10,} rows {report.seconds:7.1f} s")
    for attempt in ("import", "re-import"):
        cpu = time.process_time()
        report = import_file(engine, "installments", paths["installments"])
        cpu = time.process_time() - cpu
        rate = report.rows / report.seconds
        verdict = f"{rate / TARGET:.2f}x target" if label == "sqlite" else ""
        print(
            f"{label}: installments {attempt:<9} {report.rows:>10,} rows {report.seconds:7.1f} s "
            f"{rate:>10,.0f} rows/s  {verdict}  ({report.rows / cpu:,.0f} rows per CPU-second;"
            f" imported={report.imported:,} unchanged={report.unchanged:,}"
            f" rejected={report.rejected_rows:,})  peak RSS {peak_rss_mib():.0f} MiB"
        )
    print(f"{label}: load average during the run {os.getloadavg()[0]:.1f} (2 cores)")
    engine.dispose()


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A database of its own on the server, dropped afterwards."""
    server = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"reminder_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="installment rows")
    parser.add_argument("--full", action="store_true", help="6,000,000 installment rows")
    parser.add_argument("--keep-files", type=Path, help="folder to keep (and re-use) the CSVs")
    args = parser.parse_args()
    rows = 6_000_000 if args.full else args.rows
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep_files or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        paths = generate(folder, rows)
        size = paths["installments"].stat().st_size / 2**20
        print(f"{rows:,} installments ({size:.0f} MiB) for {max(1, -(-rows // 6)):,} loans")
        run(f"sqlite:///{Path(scratch) / 'bench.db'}", paths, "sqlite")
        server = os.environ.get("REMINDER_BENCH_POSTGRES_URL")
        if server:
            with postgres_database(server) as url:
                run(url, paths, "postgresql")


if __name__ == "__main__":
    main()
