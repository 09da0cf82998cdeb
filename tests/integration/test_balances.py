"""Kept balances (`loan_balances`, `stale_loans`) give the same evaluation as the full one.

The run evaluates from per-loan balances that triggers mark stale whenever installments or
payments change; these tests hold it to the full evaluation over installments and
payments, on SQLite and PostgreSQL, for any writer (plain SQL here, not the importer).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select, update

from reminder.config import Config
from reminder.db.tables import (
    borrowers,
    installments,
    loan_balances,
    loans,
    payments,
    stale_loans,
)
from reminder.services.balances import refresh_balances
from reminder.services.evaluation import evaluated_day, loan_state
from tests.portfolio import Portfolio

D = date(2026, 12, 2)


def _open_states(engine: Engine, config: Config, as_of: date) -> tuple[set[Any], set[Any]]:
    """(what the run reads inside `evaluated_day`, the full evaluation's open loans)."""
    with engine.begin() as conn:
        full = {tuple(row) for row in conn.execute(loan_state(config, as_of))
                if row.episode is not None}
        with evaluated_day(conn, config, as_of):
            kept = {tuple(row) for row in conn.execute(loan_state(config, as_of))}
    return kept, full


def _stale(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(stale_loans.c.loan_id)).scalars())


loan_plans = st.lists(
    st.tuples(
        st.lists(  # installments: (days from D, cents)
            st.tuples(st.integers(-120, 40), st.integers(1, 50_000)), min_size=0, max_size=5
        ),
        st.lists(  # payments: (days from D, cents); some after D
            st.tuples(st.integers(-130, 20), st.integers(1, 60_000)), min_size=0, max_size=4
        ),
        st.sampled_from(["active", "active", "closed", "written_off"]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=loan_plans, shift=st.integers(-10, 10))
def test_the_kept_balances_evaluate_every_portfolio_like_the_full_evaluation(
    engine: Engine, config: Config, plans: list[Any], shift: int
) -> None:
    with engine.begin() as conn:
        for table in (payments, installments, loans, borrowers, loan_balances, stale_loans):
            conn.execute(delete(table))
    p = Portfolio()
    p.borrower("B1")
    for n, (schedule, paid, status) in enumerate(plans):
        p.loans.append({"loan_id": f"L{n}", "borrower_id": "B1", "currency": "USD",
                        "principal": Decimal("1.00"), "opened_on": D, "status": status})
        p.installments += [{"loan_id": f"L{n}", "seq": seq, "due_date": D + timedelta(days=days),
                            "amount_due": Decimal(amount) / 100}
                           for seq, (days, amount) in enumerate(schedule, start=1)]
        p.payments += [{"payment_id": f"P{n}-{k}", "loan_id": f"L{n}",
                        "paid_on": D + timedelta(days=days), "amount": Decimal(amount) / 100}
                       for k, (days, amount) in enumerate(paid)]
    p.save(engine)
    # a first run brings the balances up to date; the second day reads them as kept
    _open_states(engine, config, D)
    kept, full = _open_states(engine, config, D + timedelta(days=shift))
    assert kept == full


def test_any_change_to_a_schedule_or_a_payment_marks_the_loan_stale(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=10), count=2)
    p.loan("L2", p.borrower("B2"), first_due=D - timedelta(days=10), count=2)
    p.save(engine)
    assert _stale(engine) == {"L1", "L2"}
    with engine.begin() as conn:
        assert refresh_balances(conn) == 2
    assert _stale(engine) == set()
    writes = [
        insert(payments).values(payment_id="P1", loan_id="L1", paid_on=D, amount=Decimal("5")),
        update(payments).where(payments.c.payment_id == "P1").values(amount=Decimal("6")),
        delete(payments).where(payments.c.payment_id == "P1"),
        update(installments).where(installments.c.loan_id == "L2", installments.c.seq == 1)
        .values(amount_due=Decimal("1.00")),
        delete(installments).where(installments.c.loan_id == "L2", installments.c.seq == 2),
    ]
    for write in writes:
        with engine.begin() as conn:
            conn.execute(write)
        assert _stale(engine), write
        with engine.begin() as conn:
            refresh_balances(conn)
    assert _stale(engine) == set()


def test_a_payment_written_straight_into_the_database_counts_in_the_next_run(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=40), count=3)
    p.save(engine)
    kept, _full = _open_states(engine, config, D)
    (before,) = kept
    assert before[1] == D - timedelta(days=40)  # episode: the first installment
    with engine.begin() as conn:  # a lender's ETL, not our importer
        conn.execute(insert(payments).values(payment_id="ETL-1", loan_id="L1", paid_on=D,
                                             amount=Decimal("100.00")))
    kept, full = _open_states(engine, config, D)
    assert kept == full
    (after,) = kept
    assert after[1] == D - timedelta(days=10)  # the second installment is now the oldest


def test_a_run_for_an_earlier_date_ignores_payments_made_after_it(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=40), count=3)
    p.pay("P1", "L1", D, "300.00")
    p.save(engine)
    assert _open_states(engine, config, D)[0] == set()  # paid in full today
    kept, full = _open_states(engine, config, D - timedelta(days=5))
    assert kept == full
    assert {row[0] for row in kept} == {"L1"}  # five days ago it was 35 days past due
