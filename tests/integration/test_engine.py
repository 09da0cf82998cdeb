"""The delinquency engine on SQLite and PostgreSQL: dpd, stages, payments, cadence, reruns."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select

from reminder.bootstrap import bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import messages
from reminder.db.types import from_cents
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.evaluation import loan_state
from tests.portfolio import Portfolio

D = date(2026, 12, 2)  # a Wednesday, no US holiday near


def _state(engine: Engine, config: Config, as_of: date) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {row["loan_id"]: dict(row) for row in
                conn.execute(loan_state(config, as_of)).mappings()}


def _rows(engine: Engine, **where: object) -> list[dict[str, object]]:
    query = select(messages).order_by(messages.c.run_date, messages.c.loan_id, messages.c.channel)
    for name, value in where.items():
        query = query.where(messages.c[name] == value)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _run(engine: Engine, config: Config, clock: FixedClock, day: date) -> dict[str, object]:
    app = bootstrap(config, engine=engine, clock=clock)
    return run_day(app, RunOptions(run_date=day, dispatch=False))


@pytest.mark.parametrize(
    ("dpd", "stage"),
    [(-4, None), (-3, "upcoming"), (-1, "upcoming"), (0, None), (1, "early"), (7, "early"),
     (8, "mid"), (30, "mid"), (31, "late"), (89, "late"), (90, "handoff")],
)
def test_each_stage_boundary_puts_the_loan_in_the_configured_stage(
    engine: Engine, config: Config, clock: FixedClock, dpd: int, stage: str | None
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=dpd), count=1)
    p.save(engine)
    summary = _run(engine, config, clock, D)
    counts = summary["stages"]
    assert isinstance(counts, dict)
    assert {name: n for name, n in counts.items() if n} == ({stage: 1} if stage else {})
    stages = {row["stage"] for row in _rows(engine)}
    assert stages == (set() if stage in (None, "handoff") else {stage})


def test_payments_are_applied_to_the_oldest_installment_first(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=60), count=3, every_days=20)
    p.pay("P1", "L1", D - timedelta(days=50), "150.00")  # pays #1 and half of #2
    p.save(engine)
    state = _state(engine, config, D)["L1"]
    assert state["episode"] == D - timedelta(days=40)  # installment 2 is the oldest unpaid
    assert state["dpd"] == 40
    assert from_cents(state["overdue_cents"]) == Decimal("150.00")  # 300 fell due - 150 paid


def test_a_partial_payment_keeps_the_installment_overdue(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=5), count=1, amount="100.00")
    p.pay("P1", "L1", D - timedelta(days=1), "99.99")
    p.save(engine)
    state = _state(engine, config, D)["L1"]
    assert state["dpd"] == 5
    assert from_cents(state["overdue_cents"]) == Decimal("0.01")


def test_payments_after_the_as_of_date_are_not_applied(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=5), count=1)
    p.pay("P1", "L1", D + timedelta(days=1), "100.00")
    p.save(engine)
    assert _state(engine, config, D)["L1"]["dpd"] == 5
    assert _state(engine, config, D + timedelta(days=1))["L1"]["episode"] is None


def test_a_fully_paid_loan_is_current_and_gets_nothing(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=5), count=1)
    p.pay("P1", "L1", D - timedelta(days=5), "100.00")
    p.save(engine)
    assert _state(engine, config, D)["L1"]["episode"] is None
    _run(engine, config, clock, D)
    assert _rows(engine) == []


def test_a_closed_loan_is_not_evaluated(engine: Engine, config: Config, clock: FixedClock) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=5), count=1, status="closed")
    p.save(engine)
    _run(engine, config, clock, D)
    assert _rows(engine) == []


def test_rerunning_the_same_day_creates_nothing_new(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    for n in range(5):
        p.loan(f"L{n}", p.borrower(f"B{n}"), first_due=D - timedelta(days=2 + n), count=1)
    p.save(engine)
    first = _run(engine, config, clock, D)
    rows = _rows(engine)
    second = _run(engine, config, clock, D)
    assert _rows(engine) == rows
    assert first == second
    assert first["planned"] == 10  # 5 loans x sms + email


def test_cadence_repeats_every_n_days_within_a_stage(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=8), count=1)  # mid: every 4
    p.save(engine)
    for offset in range(9):
        _run(engine, config, clock, D + timedelta(days=offset))
    sms_days = [row["run_date"] for row in _rows(engine, channel="sms")
                if row["status"] != "suppressed"]
    assert sms_days == [D, D + timedelta(days=4), D + timedelta(days=8)]


def test_a_missed_run_is_caught_up_by_the_next_one(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=8), count=1)
    p.save(engine)
    _run(engine, config, clock, D)
    # runs on D+4 and D+5 are missed; D+6 must contact (due since D+4)
    _run(engine, config, clock, D + timedelta(days=6))
    days = [row["run_date"] for row in _rows(engine, channel="sms")]
    assert days == [D, D + timedelta(days=6)]


def test_risk_grade_override_changes_cadence_and_channels(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    p.loan("LE", p.borrower("BE", risk_grade="E"), first_due=D - timedelta(days=2), count=1)
    p.loan("LB", p.borrower("BB", risk_grade="B"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    _run(engine, config, clock, D)
    _run(engine, config, clock, D + timedelta(days=1))
    grade_e = {(row["run_date"], row["channel"]) for row in _rows(engine, loan_id="LE")}
    grade_b = {(row["run_date"], row["channel"]) for row in _rows(engine, loan_id="LB")}
    every_channel = ("sms", "email", "voice")
    assert grade_e == {(D + timedelta(days=k), c) for k in (0, 1) for c in every_channel}
    assert grade_b == {(D, "sms"), (D, "email")}


def test_a_new_episode_starts_the_cadence_again(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=1), count=2, every_days=1)
    p.save(engine)
    _run(engine, config, clock, D)  # episode D-1, dpd 1
    with engine.begin() as conn:
        from sqlalchemy import insert

        from reminder.db.tables import payments
        conn.execute(insert(payments).values(payment_id="P1", loan_id="L1", paid_on=D,
                                             amount=Decimal("100.00"), source="ledger"))
    _run(engine, config, clock, D + timedelta(days=1))  # episode D now, dpd 1 again
    sms = _rows(engine, channel="sms")
    assert [(row["run_date"], row["episode"]) for row in sms] == [
        (D, D - timedelta(days=1)), (D + timedelta(days=1), D)]


def test_planned_messages_wait_for_the_borrowers_contact_window(
    engine: Engine, config: Config, clock: FixedClock
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    _run(engine, config, clock, D)
    row = _rows(engine, channel="sms")[0]
    local = row["not_before"].astimezone(config.run.tz)
    assert (local.date(), local.hour, local.minute) == (D, 8, 0)


def test_money_is_exact_in_storage(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=3), count=3, amount="0.10")
    p.pay("P1", "L1", D - timedelta(days=4), "0.20")
    p.save(engine)
    state = _state(engine, config, D)["L1"]
    assert from_cents(state["overdue_cents"]) == Decimal("0.00")
