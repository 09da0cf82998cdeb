"""Placing aged loans with agencies: the daily run opens a case per eligible loan.

Eligible: in a `handoff` stage, active, overdue balance >= [handoff] min_balance, no open
case, and no dispute, bankruptcy, deceased or cease flag on the borrower. The agency is
chosen by `reminder.domain.allocation` from the loan id. Files are written by
`reminder handoff export`, not here.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, literal, select

from reminder.config import Config
from reminder.db.tables import cases, contact_flags, loans
from reminder.db.types import from_cents, to_cents
from reminder.domain.allocation import choose_agency
from reminder.services.evaluation import in_range, loan_state, stage_table

BLOCKING_FLAGS = ("dispute", "bankruptcy", "deceased", "cease")


def eligible_loans(config: Config, run_date: date) -> Any:
    """SELECT loan_id, dpd, overdue_cents, currency of loans to place on `run_date`."""
    state = loan_state(config, run_date).cte("loan_state")
    ranges = stage_table(config)
    open_case = exists(
        select(cases.c.case_id).where(cases.c.loan_id == state.c.loan_id, cases.c.status == "open")
    )
    blocked = exists(
        select(contact_flags.c.id).where(
            contact_flags.c.borrower_id == loans.c.borrower_id,
            contact_flags.c.kind.in_(BLOCKING_FLAGS),
            contact_flags.c.lifted_at.is_(None),
        )
    )
    minimum = to_cents(config.handoff.min_balance)
    return (
        select(state.c.loan_id, state.c.dpd, state.c.overdue_cents, loans.c.currency)
        .join(ranges, and_(in_range(state.c.dpd, ranges), ranges.c.handoff == 1))
        .join(loans, loans.c.loan_id == state.c.loan_id)
        .where(
            loans.c.status == "active",
            state.c.overdue_cents >= literal(minimum),
            ~open_case,
            ~blocked,
        )
        .order_by(state.c.loan_id)
    )


def case_id(loan_id: str, placed_on: date) -> str:
    return f"C{placed_on:%Y%m%d}-{loan_id}"


def place_cases(conn: Connection, config: Config, run_date: date) -> int:
    """Open a case for every eligible loan; returns how many were opened."""
    agencies = [(agency.id, agency.share) for agency in config.agencies]
    if not agencies:
        return 0
    rows = [
        {
            "case_id": case_id(loan_id, run_date),
            "loan_id": loan_id,
            "agency_id": choose_agency(loan_id, agencies),
            "status": "open",
            "placed_on": run_date,
            "placed_balance": from_cents(overdue) or Decimal("0.00"),
            "currency": currency,
            "dpd_at_placement": dpd,
        }
        for loan_id, dpd, overdue, currency in conn.execute(eligible_loans(config, run_date))
    ]
    for start in range(0, len(rows), 1000):
        conn.execute(insert(cases), rows[start : start + 1000])
    return len(rows)
