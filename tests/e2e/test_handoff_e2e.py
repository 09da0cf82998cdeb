"""End to end: 10,000 loans age past 90 days, are placed, exported, worked and reconciled.

Two agencies (acme share 2, beacon share 1, the shipped config) receive files through the
folder transport; acme sends an outcome file (payments, a dispute, a duplicate row) that is
imported twice; a beacon borrower pays the lender directly and is recalled. Balances,
flags, reminders and the commission report are checked to the cent.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from reminder.bootstrap import App, bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import cases, contact_flags, messages, payments
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.evaluation import loan_state
from reminder.services.handoff_export import build_transports, export
from reminder.services.handoff_report import commission_report
from reminder.services.outcomes import ingest, read_outcome_file
from tests.portfolio import Portfolio

pytestmark = pytest.mark.slow

LOANS = 10_000
D0 = date(2026, 1, 5)  # every loan's first due date; 6 monthly installments of 100.00


def day(offset: int) -> date:
    return D0 + timedelta(days=offset)


class World:
    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.config = config
        self.clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
        self.app: App = bootstrap(config, engine=engine, clock=self.clock)

    def at(self, offset: int) -> App:
        self.clock.set(datetime.combine(day(offset), datetime.min.time(), tzinfo=UTC)
                       + timedelta(hours=16))  # fmt: skip
        return self.app

    def run(self, offset: int) -> dict[str, Any]:
        return run_day(self.at(offset), RunOptions(day(offset), dispatch=False))

    def state(self, loan_id: str, offset: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            query = loan_state(self.config, day(offset), [loan_id])
            return dict(conn.execute(query).mappings().one())

    def rows(self, loan_id: str, offset: int) -> set[tuple[str, str, str | None]]:
        with self.engine.connect() as conn:
            found = conn.execute(select(messages.c.channel, messages.c.status, messages.c.reason)
                                 .where(messages.c.loan_id == loan_id,
                                        messages.c.run_date == day(offset)))  # fmt: skip
            return {tuple(r) for r in found}  # type: ignore[misc]


def _files(folder: Path) -> dict[str, list[dict[str, str]]]:
    return {p.name: list(csv.DictReader(io.StringIO(p.read_text())))
            for p in sorted(folder.glob("*.csv"))}  # fmt: skip


def test_portfolio_to_commission(engine: Engine, config: Config, tmp_path: Path) -> None:
    config = config.model_copy(update={
        "handoff": config.handoff.model_copy(update={"resume_after_recall": True})})
    p = Portfolio()
    for i in range(LOANS):
        p.loan(f"L{i:05}", p.borrower(f"B{i:05}"), first_due=D0, count=6)
    p.save(engine)
    world = World(engine, config)

    # Ageing: reminders while late, nothing placed before 90 days, everything at 90.
    assert world.run(5)["stages"]["early"] == LOANS
    late = world.run(89)
    assert (late["stages"]["late"], late["placed"]) == (LOANS, 0)
    placed = world.run(90)
    assert (placed["stages"]["handoff"], placed["placed"]) == (LOANS, LOANS)
    with engine.connect() as conn:
        owner = dict(conn.execute(select(cases.c.loan_id, cases.c.agency_id)).all())
    acme = sorted(loan for loan, agency in owner.items() if agency == "acme")
    beacon = sorted(loan for loan, agency in owner.items() if agency == "beacon")
    share = len(acme) / LOANS
    print(f"\nallocation on {LOANS} loans: acme {len(acme)} ({share:.2%}, configured 66.67%), "
          f"beacon {len(beacon)}")  # fmt: skip
    assert abs(share - 2 / 3) <= 0.02

    # Export: one file per agency, every case exactly once, manifests that add up.
    started = time.perf_counter()
    report = export(world.at(90), build_transports(config))
    print(f"export of {LOANS} cases: {time.perf_counter() - started:.2f} s")
    assert not report.failed
    assert {(f.agency, f.row_count, f.total_balance) for f in report.files} == {
        ("acme", len(acme), f"{300 * len(acme)}.00"),
        ("beacon", len(beacon), f"{300 * len(beacon)}.00")}
    placements = {a: _files(tmp_path / "placements" / a) for a in ("acme", "beacon")}
    exported = [r["loan_id"] for files in placements.values() for rows in files.values()
                for r in rows]  # fmt: skip
    assert sorted(exported) == sorted(owner)
    assert export(world.at(91), build_transports(config)).files == []

    # Acme's outcomes: A1 pays all arrears, A2 a part, A3 disputes, A4 two installments.
    a1, a2, a3, a4 = acme[:4]
    case = {loan: f"C{day(90):%Y%m%d}-{loan}" for loan in owner}
    lines = [
        "case_id,outcome,amount,date,agency_ref,note",
        f"{case[a1]},payment,100.00,{day(100)},R1,",
        f"{case[a1]},payment,300.00,{day(110)},R2,settled in full",
        f"{case[a2]},payment,50.00,{day(105)},R3,",
        f"{case[a3]},dispute,,{day(106)},R4,not my debt",
        f"{case[a2]},payment,50.00,{day(105)},R3,",  # the duplicate row
        f"{case[a4]},payment,200.00,{day(108)},R5,",
        f"{case[beacon[0]]},payment,10.00,{day(108)},R6,",  # not acme's case
    ]  # fmt: skip
    outcome_file = tmp_path / "acme_outcomes.csv"
    outcome_file.write_text("\n".join(lines) + "\n")
    first = ingest(world.at(111), "acme", read_outcome_file(outcome_file)).as_dict()
    second = ingest(world.at(111), "acme", read_outcome_file(outcome_file)).as_dict()
    rejected = [
        {"line": 8, "column": "case_id", "reason": "the case is placed with another agency"}]
    assert first == {"imported": 5, "unchanged": 1, "rejected": rejected}
    assert second == {"imported": 0, "unchanged": 6, "rejected": rejected}

    # A beacon borrower pays the lender directly: arrears and the 4th installment.
    b1 = beacon[0]
    with engine.begin() as conn:
        conn.execute(insert(payments).values(payment_id="LENDER-1", loan_id=b1, paid_on=day(112),
                                             amount=Decimal("400.00"), source="ledger"))
    world.run(113)
    recall = export(world.at(113), build_transports(config))
    assert [(f.agency, f.kind, f.row_count) for f in recall.files] == [("beacon", "recalls", 1)]
    (recall_rows,) = [r for n, r in _files(tmp_path / "placements" / "beacon").items()
                      if "_recalls_" in n]  # fmt: skip
    assert [(r["loan_id"], r["reason"], r["recalled_on"]) for r in recall_rows] == [
        (b1, "paid_direct", str(day(113)))]

    # Reminders: B1's resume once recalled (upcoming installment 5); A4's stay `placed`.
    world.run(117)
    assert world.rows(b1, 117) == {("sms", "planned", None), ("email", "planned", None)}
    world.run(120)
    assert world.rows(a4, 120) == {(ch, "suppressed", "placed") for ch in ("sms", "email", "voice")}

    # Balances (installments 1-4 fell due before day 120) and flags.
    expected = {a1: (0, 0), a2: (35000, 120), a3: (40000, 120), a4: (20000, 60), b1: (0, 0)}
    assert {loan: (world.state(loan, 120)["overdue_cents"], world.state(loan, 120)["dpd"])
            for loan in expected} == expected  # fmt: skip
    with engine.connect() as conn:
        flags = conn.execute(select(contact_flags.c.borrower_id, contact_flags.c.kind,
                                    contact_flags.c.loan_id)).all()  # fmt: skip
        status = dict(conn.execute(select(cases.c.loan_id, cases.c.status)).all())
    assert [tuple(f) for f in flags] == [(f"B{a3[1:]}", "dispute", a3)]
    assert (status[a1], status[b1], status[a2]) == ("closed", "recalled", "open")

    # The commission report, to the cent.
    with engine.connect() as conn:
        rows = {r["agency"]: r for r in commission_report(conn, config, day(120))}
    placed_acme = Decimal(300 * len(acme))
    assert {k: v for k, v in rows["acme"].items() if k != "stale_case_ids"} == {
        "agency": "acme", "name": "Acme Recovery", "currency": "USD",
        "cases_open": len(acme) - 1, "cases_closed": 1,
        "balance_placed": placed_acme.quantize(Decimal("0.01")),
        "collected": Decimal("650.00"),
        "collection_rate": (Decimal("650") / placed_acme).quantize(Decimal("0.0001")),
        "commission_rate": Decimal("0.25"), "commission_owed": Decimal("162.50"),
        "stale_cases": len(acme) - 4,
    }  # fmt: skip
    assert (rows["beacon"]["cases_open"], rows["beacon"]["cases_closed"],
            rows["beacon"]["collected"], rows["beacon"]["commission_owed"],
            rows["beacon"]["stale_cases"]) == (len(beacon) - 1, 1, Decimal("0.00"),
                                               Decimal("0.00"), len(beacon) - 1)  # fmt: skip
    json.dumps(rows, default=str)  # the report is JSON-serialisable as the CLI prints it
