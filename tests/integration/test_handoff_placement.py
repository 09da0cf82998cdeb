"""Placement, closing and recall rules on SQLite and PostgreSQL (through the daily run)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from reminder.bootstrap import bootstrap
from reminder.clock import FixedClock
from reminder.config import Config, HandoffConfig
from reminder.db.tables import cases, contact_flags, messages
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.placement import OpenCase, closing_decision
from tests.portfolio import Portfolio

D0 = date(2026, 3, 2)  # first due date of every test loan
PLACED = D0 + timedelta(days=95)


def _run(engine: Engine, config: Config, day: date) -> dict[str, Any]:
    clock = FixedClock(datetime.combine(day, datetime.min.time(), tzinfo=UTC))
    return run_day(bootstrap(config, engine=engine, clock=clock),
                   RunOptions(run_date=day, dispatch=False))  # fmt: skip


def _cases(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["loan_id"]: dict(r) for r in conn.execute(select(cases)).mappings()}


def _pay(engine: Engine, payment_id: str, loan_id: str, day: date, amount: str,
         source: str = "ledger") -> None:
    from decimal import Decimal

    from reminder.db.tables import payments
    with engine.begin() as conn:
        conn.execute(insert(payments).values(payment_id=payment_id, loan_id=loan_id, paid_on=day,
                                             amount=Decimal(amount), source=source))  # fmt: skip


def test_places_only_eligible_loans_and_names_the_blocking_flag(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L-ok", p.borrower("B1"), first_due=D0)
    p.loan("L-small", p.borrower("B2"), first_due=D0, amount="15.00")  # 45.00 < 50.00
    p.loan("L-late", p.borrower("B3"), first_due=D0 + timedelta(days=10))  # dpd 85
    p.loan("L-disputed", p.borrower("B4"), first_due=D0)
    p.loan("L-off", p.borrower("B5"), first_due=D0, status="written_off")
    p.save(engine)
    with engine.begin() as conn:
        conn.execute(insert(contact_flags).values(
            borrower_id="B4", kind="dispute", source="test",
            created_at=datetime(2026, 5, 1, tzinfo=UTC)))  # fmt: skip
    summary = _run(engine, config, PLACED)
    assert summary["placed"] == 1
    placed = _cases(engine)
    assert list(placed) == ["L-ok"]
    case = placed["L-ok"]
    assert (case["status"], str(case["placed_balance"]), case["dpd_at_placement"]) == (
        "open", "300.00", 95)


def test_a_rerun_of_the_day_places_nothing_twice(engine: Engine, config: Config) -> None:
    p = Portfolio()
    for i in range(30):
        p.loan(f"L{i:02}", p.borrower(f"B{i:02}"), first_due=D0)
    p.save(engine)
    _run(engine, config, PLACED)
    first = _cases(engine)
    _run(engine, config, PLACED)
    _run(engine, config, PLACED + timedelta(days=1))
    assert _cases(engine) == first
    assert {c["agency_id"] for c in first.values()} == {"acme", "beacon"}


def test_an_aged_case_without_recent_payment_is_recalled_and_not_placed_again(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L-quiet", p.borrower("B1"), first_due=D0)
    p.loan("L-paying", p.borrower("B2"), first_due=D0, count=6)
    p.save(engine)
    _run(engine, config, PLACED)
    recall_day = PLACED + timedelta(days=config.handoff.recall_after_days)
    _pay(engine, "P1", "L-paying", recall_day - timedelta(days=20), "10.00", source="agency")
    _run(engine, config, recall_day - timedelta(days=1))
    assert {c["status"] for c in _cases(engine).values()} == {"open"}
    _run(engine, config, recall_day)
    _run(engine, config, recall_day + timedelta(days=1))
    found = _cases(engine)
    assert (found["L-quiet"]["status"], found["L-quiet"]["close_reason"]) == ("recalled", "aged")
    assert found["L-quiet"]["closed_on"] == recall_day
    assert found["L-paying"]["status"] == "open"
    assert len(found) == 2  # the recalled loan was not placed again


def test_arrears_paid_to_the_lender_recall_and_paid_to_the_agency_close(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L-direct", p.borrower("B1"), first_due=D0)
    p.loan("L-agency", p.borrower("B2"), first_due=D0)
    p.save(engine)
    _run(engine, config, PLACED)
    _pay(engine, "P1", "L-direct", PLACED + timedelta(days=3), "300.00")
    _pay(engine, "P2", "L-agency", PLACED + timedelta(days=3), "300.00", source="agency")
    _run(engine, config, PLACED + timedelta(days=4))
    found = _cases(engine)
    assert (found["L-direct"]["status"], found["L-direct"]["close_reason"]) == (
        "recalled", "paid_direct")
    assert (found["L-agency"]["status"], found["L-agency"]["close_reason"]) == (
        "closed", "collected")


def test_reminders_are_suppressed_as_placed_while_the_case_is_open(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D0, count=12)
    p.save(engine)
    _run(engine, config, PLACED)
    _pay(engine, "P1", "L1", PLACED + timedelta(days=2), "300.00", source="agency")
    day = PLACED + timedelta(days=10)  # oldest unpaid: the 4th installment, dpd 15 (mid)
    _run(engine, config, day)
    with engine.connect() as conn:
        rows = conn.execute(select(messages.c.status, messages.c.reason)
                            .where(messages.c.run_date == day)).all()  # fmt: skip
    assert rows and {tuple(r) for r in rows} == {("suppressed", "placed")}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (OpenCase("C", D0, False, 100, False, False), None),
        (OpenCase("C", D0, False, 0, False, False), ("closed", "collected")),
        (OpenCase("C", D0, True, 100, False, True), ("recalled", "paid_direct")),
        (OpenCase("C", D0 - timedelta(days=180), False, 100, False, False), ("recalled", "aged")),
        (OpenCase("C", D0 - timedelta(days=179), False, 100, False, False), None),
        (OpenCase("C", D0 - timedelta(days=400), False, 100, True, False), None),
    ],
)
def test_closing_decision(case: OpenCase, expected: tuple[str, str] | None) -> None:
    assert closing_decision(case, D0, HandoffConfig().recall_after_days) == expected


def _recalled_then_upcoming(engine: Engine, config: Config) -> set[tuple[str, str | None]]:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D0, count=12)
    p.save(engine)
    _run(engine, config, PLACED)
    _pay(engine, "P1", "L1", PLACED + timedelta(days=2), "400.00")  # paid to the lender
    _run(engine, config, PLACED + timedelta(days=3))
    assert _cases(engine)["L1"]["status"] == "recalled"
    day = D0 + timedelta(days=120 - 3)  # the 5th installment is 3 days away
    _run(engine, config, day)
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(messages.c.status, messages.c.reason).where(messages.c.run_date == day))}


def test_reminders_resume_after_a_recall_when_the_config_says_so(
    engine: Engine, config: Config
) -> None:
    config = config.model_copy(update={"handoff": HandoffConfig(resume_after_recall=True)})
    assert _recalled_then_upcoming(engine, config) == {("planned", None)}


def test_a_recalled_case_keeps_reminders_suppressed_as_placed_by_default(
    engine: Engine, config: Config
) -> None:
    assert not config.handoff.resume_after_recall
    assert _recalled_then_upcoming(engine, config) == {("suppressed", "placed")}
