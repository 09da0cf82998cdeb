"""Benchmark the daily run's evaluation + planning over a 1,000,000-loan portfolio.

Generates loans with 6 monthly installments each (~15% overdue, spread over every stage of
the default config.toml), payments and partial payments, borrowers over several timezones,
risk grades and locales, and a handful of contact flags, promises, paid claims and open
cases, straight into a file database with bulk inserts. Then, each in a fresh child
process (so peak RSS is the run's own), it measures:

- day D: what `run_day(app, RunOptions(run_date=D, dispatch=False))` does in its planning
  transaction, called piece by piece (settle promises, evaluate once, plan with the whole
  contact policy, close/recall and place cases, stage counts); with --run-day also the
  whole `run_day`, run ledger and audit trail included;
- a rerun of day D (must create no row);
- day D+1 (the cadence now has a day of history to look at);
- a naive per-loan ORM loop on a random sample, extrapolated to the whole portfolio.

The database is reset to the generated state before every repetition; figures are the
median of `--runs` repetitions.

    python bench/daily_run.py                               # 1M loans, SQLite, 3 runs
    python bench/daily_run.py --url postgresql://postgres@127.0.0.1:5432/bench
    python bench/daily_run.py --loans 100000 --db /tmp/b.db --reuse
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, text
from sqlalchemy.engine import make_url

from reminder.config import Config, load_config
from reminder.db.engine import make_engine
from reminder.db.migrate import upgrade_to_head
from reminder.db.tables import (
    cases,
    contact_flags,
    loans,
    messages,
    promises,
    replies,
    runs,
    stale_loans,
)

REPO = Path(__file__).resolve().parent.parent
D = date(2026, 12, 2)  # a Wednesday, no US holiday near
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
SEED = 20261202
CHUNK = 50_000
TARGET_SECONDS, TARGET_RSS_MIB, TARGET_RERUN = 10.0, 400.0, 5.0
ZONES = (
    ["America/New_York"] * 8 + ["America/Chicago"] * 5 + ["America/Denver"] * 2
    + ["America/Los_Angeles"] * 4 + ["America/Phoenix", "America/Anchorage",
    "Pacific/Honolulu", "Pacific/Auckland", "Europe/London", "Asia/Shanghai"]
)
LOCALES = ["en"] * 7 + ["es"] * 2 + ["zh"]
# (stage, share of all loans, dpd low, dpd high) for the ~15% overdue loans
OVERDUE = (("early", 0.045, 1, 7), ("mid", 0.045, 8, 30), ("late", 0.03, 31, 89),
           ("handoff", 0.03, 90, 200))


def config() -> Config:
    return load_config(REPO / "config.toml")


# --- generation -------------------------------------------------------------------------


def _schedule(n: int, rng: random.Random) -> tuple[date, int, int]:
    """(first due date, installments fully paid, partial cents on the next) for loan n."""
    u, low = rng.random(), 0.0
    for _stage, share, lo, hi in OVERDUE:
        if low <= u < low + share:
            dpd, paid = rng.randint(lo, hi), rng.randrange(0, 6)
            partial = rng.randrange(1, 9_000) if rng.random() < 0.3 else 0
            return D - timedelta(days=dpd + 30 * paid), paid, partial
        low += share
    paid = rng.randrange(0, 7)  # current: the next installment falls due in 0..29 days
    first = D + timedelta(days=rng.randrange(0, 30) - 30 * paid)
    partial = rng.randrange(1, 9_000) if paid < 6 and rng.random() < 0.05 else 0
    return first, paid, partial


def portfolio(loans_n: int) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) chunks of plain tuples; dates as `date`, money as integer cents."""
    rng = random.Random(SEED)
    borrowers_n = max(1, loans_n * 4 // 5)
    rows: list[tuple[Any, ...]] = []
    for b in range(borrowers_n):
        rows.append((
            f"B{b:08d}", f"Borrower {b}",
            None if b % 97 == 0 else f"+1212555{b % 10_000:04d}",
            None if b % 61 == 0 else f"b{b}@example.com",
            ZONES[b % len(ZONES)], LOCALES[b % len(LOCALES)], "ABCDE"[(b // 7) % 5],
            b % 53 != 0, True, b % 37 != 0,
        ))
        if len(rows) == CHUNK:
            yield "borrowers", rows
            rows = []
    yield "borrowers", rows
    loan_rows: list[tuple[Any, ...]] = []
    inst_rows: list[tuple[Any, ...]] = []
    pay_rows: list[tuple[Any, ...]] = []
    payment = 0
    for n in range(loans_n):
        loan_id, amount = f"L{n:09d}", 10_000 + (n % 400) * 25
        first, paid, partial = _schedule(n, rng)
        status = "closed" if n % 211 == 0 else "written_off" if n % 401 == 0 else "active"
        loan_rows.append((loan_id, f"B{n % borrowers_n:08d}", "USD", amount * 6,
                          first - timedelta(days=30), status))
        for seq in range(6):
            due = first + timedelta(days=30 * seq)
            inst_rows.append((loan_id, seq + 1, due, amount))
            if seq < paid or (seq == paid and partial):
                payment += 1
                late = rng.randrange(0, 4) if seq < paid else 0
                pay_rows.append((f"P{payment:010d}", loan_id, min(due + timedelta(days=late),
                                 D - timedelta(days=1)),
                                 amount if seq < paid else min(partial, amount - 1), "ledger"))
        if len(loan_rows) == CHUNK:
            yield "loans", loan_rows
            yield "installments", inst_rows
            yield "payments", pay_rows
            loan_rows, inst_rows, pay_rows = [], [], []
    yield "loans", loan_rows
    yield "installments", inst_rows
    yield "payments", pay_rows


COLUMNS = {
    "borrowers": "borrower_id, name, phone, email, timezone, locale, risk_grade, "
                 "consent_sms, consent_email, consent_voice",
    "loans": "loan_id, borrower_id, currency, principal, opened_on, status",
    "installments": "loan_id, seq, due_date, amount_due",
    "payments": "payment_id, loan_id, paid_on, amount, source",
}


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    return int(value) if isinstance(value, bool) else value


def load(engine: Engine, loans_n: int) -> None:
    """Bulk-load the portfolio: sqlite3 executemany, or COPY on PostgreSQL."""
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            cursor = raw.cursor()
            cursor.execute("BEGIN")
            for table, rows in portfolio(loans_n):
                marks = ", ".join("?" * COLUMNS[table].count(",")) + ", ?"
                cursor.executemany(
                    f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})",
                    [tuple(_sqlite_value(v) for v in row) for row in rows],
                )
            cursor.execute("COMMIT")
        else:
            pg = raw.driver_connection
            with pg.cursor() as cursor:
                for table, rows in portfolio(loans_n):
                    with cursor.copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            pg.commit()
    finally:
        raw.close()
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def seed_extras(engine: Engine, loans_n: int) -> None:
    """Flags, promises, paid claims and cases: few rows, so the policy's EXISTS branches fire.

    Also the reset between repetitions: everything a run writes is deleted and re-seeded.
    """
    rng = random.Random(SEED + 1)
    borrowers_n = max(1, loans_n * 4 // 5)

    def borrower() -> str:
        return f"B{rng.randrange(borrowers_n):08d}"

    kinds = ["deceased", "bankruptcy", "cease", "dispute", "opt_out", "bad_address"]
    flag_rows = [
        {"borrower_id": borrower(), "kind": kind, "source": "bench", "created_at": NOW,
         "channel": rng.choice(["sms", "email", "voice"]) if kind in ("opt_out", "bad_address")
         else None, "lifted_at": NOW if i % 10 == 0 else None}
        for i, kind in enumerate(kinds[i % len(kinds)] for i in range(max(6, loans_n // 500)))
    ]
    promise_rows = [
        {"borrower_id": borrower(), "promised_on": D + timedelta(days=rng.randint(-6, 10)),
         "source": "sms", "status": "open", "created_at": NOW - timedelta(days=7)}
        for _ in range(max(1, loans_n // 1000))
    ]
    reply_rows = [
        {"channel": "sms", "borrower_id": borrower(), "body": "PAID", "intent": "paid",
         "received_at": NOW - timedelta(days=rng.randint(0, 5)), "needs_person": True}
        for _ in range(max(1, loans_n // 2000))
    ]
    with engine.begin() as conn:
        for table in (messages, runs, cases, contact_flags, promises, replies):
            conn.execute(delete(table))
        handoff = [row.loan_id for row in conn.execute(
            select(loans.c.loan_id).where(loans.c.status == "active")
            .order_by(loans.c.loan_id).limit(max(1, loans_n // 3000)))]
        case_rows = [
            {"case_id": f"C0-{loan_id}", "loan_id": loan_id, "agency_id": "acme",
             "status": "open", "placed_on": D - timedelta(days=rng.choice([20, 200])),
             "placed_balance": Decimal("100.00"), "currency": "USD", "dpd_at_placement": 90}
            for loan_id in handoff
        ]
        for table, rows in ((contact_flags, flag_rows), (promises, promise_rows),
                            (replies, reply_rows), (cases, case_rows)):
            conn.execute(insert(table), rows)
        # a day's changes: monthly schedules give ~1/30 of the loans a payment each day;
        # the importer's writes list them in stale_loans (triggers), the run refreshes them
        conn.execute(delete(stale_loans))
        conn.execute(insert(stale_loans), [
            {"loan_id": f"L{n:09d}"} for n in sorted(rng.sample(range(loans_n), loans_n // 30))
        ])


def prepare(url: str, loans_n: int, reuse: bool) -> Engine:
    engine = make_engine(url)
    with engine.connect() as conn:
        fresh = not reuse or not conn.dialect.has_table(conn, "loans")
    if not fresh:
        with engine.connect() as conn:
            fresh = conn.execute(select(func.count()).select_from(loans)).scalar() != loans_n
        if fresh:
            sys.exit("--reuse: the database holds a different portfolio; drop it first")
    if fresh:
        started = time.perf_counter()
        upgrade_to_head(engine)
        load(engine, loans_n)
        print(f"generated {loans_n:,} loans in {time.perf_counter() - started:.1f} s")
    upgrade_to_head(engine)  # a database kept with --reuse may predate a revision
    first_refresh(engine)
    seed_extras(engine, loans_n)
    return engine


def first_refresh(engine: Engine) -> None:
    """Bring `loan_balances` up to date once, as the first run after a full import does.

    Every generated loan is stale (the triggers saw its rows written); the measured days
    then start, like a lender's daily run, with only the day's changes to refresh.
    """
    from reminder.services.balances import refresh_balances

    started, cpu = time.perf_counter(), time.process_time()
    with engine.begin() as conn:
        refreshed = refresh_balances(conn)
    if refreshed:
        print(f"first run after the full import: balances of {refreshed:,} loans computed in "
              f"{time.perf_counter() - started:.1f} s (cpu {time.process_time() - cpu:.1f} s)",
              flush=True)


# --- measurements (each in a child process) ----------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rows_written(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(messages)).scalar_one()
                   + conn.execute(select(func.count()).select_from(cases)).scalar_one())


def engine_day(app: Any, day: date) -> dict[str, int]:
    """Evaluation + planning + placement of one day, the pieces of `run_day` directly.

    What the daily run does in its planning transaction, minus the run ledger and the
    audit trail (measured separately with --run-day); returns the stage counts.
    """
    from reminder.services.daily_run import moment_for, settle_promises, stage_counts
    from reminder.services.evaluation import evaluated_day
    from reminder.services.placement import place_cases
    from reminder.services.planning import plan

    moment = moment_for(app, day)
    with app.engine.begin() as conn, evaluated_day(conn, app.config, day):
        settle_promises(conn, app, moment)
        plan(conn, app.config, moment)
        place_cases(conn, app.config, day)
        return stage_counts(conn, app, day)


def measure_days(url: str, days: list[date], whole_run: bool) -> list[dict[str, Any]]:
    """Each day in turn (engine pieces, or the whole `run_day`): seconds, rows, peak RSS."""
    from reminder.bootstrap import bootstrap
    from reminder.clock import FixedClock
    from reminder.services.daily_run import RunOptions, run_day

    engine = make_engine(url)
    app = bootstrap(config(), engine=engine, clock=FixedClock(NOW))
    before, found = _rows_written(engine), []
    base = peak_rss_mib()
    for day in days:
        started, cpu = time.perf_counter(), time.process_time()
        if whole_run:
            stages = run_day(app, RunOptions(run_date=day, dispatch=False))["stages"]
        else:
            stages = engine_day(app, day)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = _rows_written(engine)
        found.append({"seconds": seconds, "cpu": cpu, "rows": after - before,
                      "rss": peak_rss_mib(),
                      "base_rss": base, "stages": stages})
        before = after
    engine.dispose()
    return found


class _Row:
    """A plain mapped class: the ORM-per-loan style the set-based engine replaces."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def naive_loop(url: str, sample: int) -> dict[str, Any]:
    """For each sampled loan: query installments, payments, messages, flags; insert.

    Same decisions as the engine in spirit (dpd oldest-first, stage, grade cadence, the
    flag/consent/promise/claim/case checks) but one ORM round trip per question per loan.
    The transaction is rolled back, so the database is left as it was.
    """
    from sqlalchemy.orm import Session, registry

    from reminder.db import tables as t

    mapper = registry()
    kinds = {name: type(name, (_Row,), {}) for name in
             ("Borrower", "Loan", "Installment", "Payment", "Message", "Flag", "Promise",
              "Reply", "Case")}
    for name, table in (("Borrower", t.borrowers), ("Loan", t.loans),
                        ("Installment", t.installments), ("Payment", t.payments),
                        ("Message", t.messages), ("Flag", t.contact_flags),
                        ("Promise", t.promises), ("Reply", t.replies), ("Case", t.cases)):
        mapper.map_imperatively(kinds[name], table)
    loan_c, inst_c, pay_c, msg_c = (kinds[n] for n in ("Loan", "Installment", "Payment",
                                                        "Message"))
    cfg = config()
    engine = make_engine(url)
    with engine.connect() as conn:
        ids = conn.execute(select(loans.c.loan_id)).scalars().all()
    chosen = random.Random(SEED + 2).sample(ids, min(sample, len(ids)))
    del ids
    created = 0
    started, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session:
        for loan_id in chosen:
            loan = session.get(loan_c, loan_id)
            if loan is None or loan.status == "closed":
                continue
            borrower = session.get(kinds["Borrower"], loan.borrower_id)
            schedule = session.query(inst_c).filter_by(loan_id=loan_id).order_by(
                inst_c.due_date, inst_c.seq).all()
            paid = sum(p.amount for p in session.query(pay_c).filter(
                pay_c.loan_id == loan_id, pay_c.paid_on <= D).all())
            running, episode = Decimal(0), None
            for inst in schedule:
                running += inst.amount_due
                if running > paid:
                    episode = inst.due_date
                    break
            if episode is None:
                continue
            dpd = (D - episode).days
            stage = next((s for s in cfg.stages if s.dpd[0] <= dpd <= s.dpd[1]), None)
            if stage is None or stage.handoff:
                continue
            every, channels = stage.for_grade(borrower.risk_grade)
            blocked = session.query(kinds["Flag"]).filter_by(
                borrower_id=borrower.borrower_id, lifted_at=None).all()
            promised = session.query(kinds["Promise"]).filter_by(
                borrower_id=borrower.borrower_id, status="open").all()
            claims = session.query(kinds["Reply"]).filter_by(
                borrower_id=borrower.borrower_id, intent="paid", resolved_at=None).all()
            placed = session.query(kinds["Case"]).filter_by(loan_id=loan_id,
                                                            status="open").first()
            for channel in channels:
                recent = session.query(msg_c).filter(
                    msg_c.loan_id == loan_id, msg_c.stage == stage.name,
                    msg_c.channel == channel, msg_c.episode == episode,
                    msg_c.status != "suppressed",
                    msg_c.run_date > D - timedelta(days=every)).first()
                if recent is not None:
                    continue
                reason = ("placed" if placed else None) or next(
                    (f.kind for f in blocked if f.channel in (None, channel)), None) or (
                    "paid_claim" if claims else "promise" if promised else None)
                session.add(msg_c(
                    loan_id=loan_id, borrower_id=borrower.borrower_id, run_date=D,
                    stage=stage.name, channel=channel, episode=episode, dpd=dpd,
                    status="suppressed" if reason else "planned", reason=reason,
                    locale=borrower.locale or "en", attempts=0, created_at=NOW,
                    updated_at=NOW))
                created += 1
            session.flush()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        session.rollback()
    engine.dispose()
    return {"seconds": seconds, "cpu": cpu, "loans": len(chosen), "rows": created}


def in_child(function: Any, *args: Any) -> Any:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


# --- report ----------------------------------------------------------------------------


def decisions(engine: Engine, day: date) -> dict[str, int]:
    """Message rows of `day` by status or suppression reason, and cases placed that day."""
    with engine.connect() as conn:
        found = dict(conn.execute(
            select(func.coalesce(messages.c.reason, messages.c.status), func.count())
            .where(messages.c.run_date == day)
            .group_by(func.coalesce(messages.c.reason, messages.c.status))).all())
        found["cases placed"] = conn.execute(
            select(func.count()).where(cases.c.placed_on == day)).scalar_one()
    return {key: int(n) for key, n in sorted(found.items())}


def repeat(engine: Engine, url: str, loans_n: int, runs: int, whole_run: bool) -> Any:
    label = "run_day" if whole_run else "engine"
    results, figures = [], {}
    for attempt in range(runs):
        seed_extras(engine, loans_n)
        results.append(in_child(measure_days, url, [D, D, D + timedelta(days=1)], whole_run))
        first, rerun, nxt = results[-1]
        print(f"{label} run {attempt + 1}: day D {first['seconds']:.2f} s (cpu "
              f"{first['cpu']:.2f} s, {first['rows']:,} "
              f"rows, peak {first['rss']:.0f} MiB) | rerun {rerun['seconds']:.2f} s "
              f"(cpu {rerun['cpu']:.2f} s, {rerun['rows']} rows) | D+1 {nxt['seconds']:.2f} s "
              f"({nxt['rows']:,} rows)",
              flush=True)
        if attempt == 0:
            figures = decisions(engine, D)
    return results, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loans", type=int, default=1_000_000)
    parser.add_argument("--url", help="database URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--db", type=Path, help="SQLite file to use (kept afterwards)")
    parser.add_argument("--reuse", action="store_true", help="keep an already generated db")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample", type=int, default=2_000, help="loans in the naive loop")
    parser.add_argument("--run-day", action="store_true",
                        help="also time the whole run_day (run ledger, audit trail, summary)")
    parser.add_argument("--generate-only", action="store_true", help="stop after generating")
    args = parser.parse_args()
    folder = tempfile.TemporaryDirectory(prefix="reminder-bench-")
    url = args.url or f"sqlite:///{args.db or Path(folder.name) / 'bench.db'}"
    engine = prepare(url, args.loans, args.reuse)
    backend = make_url(url).get_backend_name()
    if args.generate_only:
        return
    results, figures = repeat(engine, url, args.loans, args.runs, whole_run=False)
    whole = repeat(engine, url, args.loans, args.runs, whole_run=True)[0] if args.run_day else []
    seed_extras(engine, args.loans)
    naive = [in_child(naive_loop, url, args.sample) for _ in range(max(1, min(args.runs, 3)))]
    report(backend, args.loans, results, whole, figures, naive)
    engine.dispose()
    folder.cleanup()


def _median(results: list[list[dict[str, Any]]], index: int, key: str) -> float:
    return statistics.median(run[index][key] for run in results)


def report(backend: str, loans_n: int, results: list[list[dict[str, Any]]],
           whole: list[list[dict[str, Any]]], figures: dict[str, int],
           naive: list[dict[str, Any]]) -> None:
    per_loan = statistics.median(n["seconds"] / n["loans"] for n in naive)
    naive_total = per_loan * loans_n
    naive_cpu = statistics.median(n["cpu"] / n["loans"] for n in naive) * loans_n
    day, rerun = _median(results, 0, "seconds"), _median(results, 1, "seconds")
    rss = max(run[0]["rss"] for run in results)
    print()
    print(f"reminder daily-run benchmark: {loans_n:,} loans x 6 installments, {backend}, "
          f"median of {len(results)} runs")
    print(f"  stages on {D}: "
          + ", ".join(f"{k} {v:,}" for k, v in results[0][0]["stages"].items()))
    print("  rows of day D: " + ", ".join(f"{k} {v:,}" for k, v in figures.items()))
    print()
    print(f"  {'measure':<50}{'figure':>12}{'target':>10}")
    lines = [
        ("evaluation + planning + placement, day D (s)", f"{day:.2f}", f"< {TARGET_SECONDS:g}"),
        ("  CPU of the run's process (s)", f"{_median(results, 0, 'cpu'):.2f}", ""),
        ("  rows created (messages + cases)", f"{int(_median(results, 0, 'rows')):,}", ""),
        ("  loans changed since the last run (refreshed)", f"{loans_n // 30:,}", ""),
        ("  peak RSS of the run's process (MiB)", f"{rss:.0f}", f"< {TARGET_RSS_MIB:g}"),
        ("  RSS before the run: interpreter + imports (MiB)",
         f"{_median(results, 0, 'base_rss'):.0f}", ""),
        ("rerun of day D (s)", f"{rerun:.2f}", f"< {TARGET_RERUN:g}"),
        ("  CPU of the run's process (s)", f"{_median(results, 1, 'cpu'):.2f}", ""),
        ("  rows created by the rerun", f"{int(_median(results, 1, 'rows'))}", "0"),
        ("day D+1, with a day of history (s)", f"{_median(results, 2, 'seconds'):.2f}", ""),
        ("  rows created", f"{int(_median(results, 2, 'rows')):,}", ""),
    ]
    if whole:
        lines += [
            ("whole run_day D, with ledger + audit trail (s)",
             f"{_median(whole, 0, 'seconds'):.2f}", ""),
            ("  peak RSS (MiB)", f"{max(run[0]['rss'] for run in whole):.0f}", ""),
            ("  whole run_day rerun (s)", f"{_median(whole, 1, 'seconds'):.2f}", ""),
        ]
    lines += [
        (f"naive ORM loop, {naive[0]['loans']:,}-loan sample (s)",
         f"{statistics.median(n['seconds'] for n in naive):.2f}", ""),
        ("  extrapolated to the portfolio (s)", f"{naive_total:.0f}", ""),
        ("  ratio naive / set-based (day D, wall)", f"{naive_total / day:.0f}x", ""),
        ("  ratio naive / set-based (day D, CPU)",
         f"{naive_cpu / _median(results, 0, 'cpu'):.0f}x", ""),
    ]
    for name, figure, target in lines:
        print(f"  {name:<50}{figure:>12}{target:>10}")
    ok = day < TARGET_SECONDS and rerun < TARGET_RERUN and _median(results, 1, "rows") == 0
    if backend == "sqlite":
        ok = ok and rss < TARGET_RSS_MIB
    print(f"\n  targets {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
