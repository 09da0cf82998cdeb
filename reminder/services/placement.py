"""Placing aged loans with agencies, and taking cases back: run inside the daily run.

Eligible: in a `handoff` stage, active, overdue balance >= [handoff] min_balance, no open
case, no case already placed in the current delinquency episode (a recalled or closed
case is not placed again by itself: that is a person's decision), and no dispute,
bankruptcy, deceased or cease flag on the borrower. The agency is chosen by
`reminder.domain.allocation` from the loan id. Files are written by `reminder handoff
export`, not here.

Before placing, `close_settled_and_recall` ends open cases: a loan whose arrears are gone
is closed (`collected` when only the agency's payments did it) or recalled (`paid_direct`
when the lender was paid), and a case older than `recall_after_days` without any payment
in the last 30 days is recalled (`aged`). A recalled case has status `recalled` and gets
a recall file on the next export.

Reminders after a recall: the contact policy suppresses with `placed` while a case is
`open`. `[handoff] resume_after_recall = true` lets reminders resume once the case is
recalled. With `false` a recalled case should keep suppressing with `placed`;
`suppressing_case` is the condition that says so, for the contact policy to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, literal, or_, select, update
from sqlalchemy.sql.expression import ColumnElement

from reminder.config import Config
from reminder.db.sqlfn import as_date
from reminder.db.tables import cases, contact_flags, loans, payments
from reminder.db.types import from_cents, to_cents
from reminder.domain.allocation import choose_agency
from reminder.services.evaluation import in_range, loan_state, stage_table

BLOCKING_FLAGS = ("dispute", "bankruptcy", "deceased", "cease")
RECENT_PAYMENT_DAYS = 30


def suppressing_case(loan_id: ColumnElement[Any], config: Config) -> ColumnElement[bool]:
    """True when the lender's reminders for `loan_id` are held back by an agency case.

    An open case always holds them; a recalled one (aged out, or paid directly to the
    lender) holds them too unless `[handoff] resume_after_recall` (SPEC section 6).
    """
    statuses = ["open"] if config.handoff.resume_after_recall else ["open", "recalled"]
    return exists(
        select(cases.c.case_id).where(cases.c.loan_id == loan_id, cases.c.status.in_(statuses))
    )


def eligible_loans(config: Config, run_date: date) -> Any:
    """SELECT loan_id, dpd, overdue_cents, currency of loans to place on `run_date`."""
    state = loan_state(config, run_date).cte("loan_state")
    ranges = stage_table(config)
    placed_this_episode = exists(
        select(cases.c.case_id).where(
            cases.c.loan_id == state.c.loan_id,
            or_(cases.c.status == "open", cases.c.placed_on >= state.c.episode),
        )
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
            ~placed_this_episode,
            ~blocked,
        )
        .order_by(state.c.loan_id)
    )


def case_id(loan_id: str, placed_on: date) -> str:
    return f"C{placed_on:%Y%m%d}-{loan_id}"


@dataclass(frozen=True)
class OpenCase:
    """What the closing rules need to know about one open case on the as-of date."""

    case_id: str
    placed_on: date
    loan_closed: bool
    overdue_cents: int
    paid_recently: bool
    paid_lender_since_placement: bool


def closing_decision(case: OpenCase, as_of: date, recall_after_days: int) -> tuple[str, str] | None:
    """(new status, close reason) for a case that should end on `as_of`, else None."""
    if case.loan_closed or case.overdue_cents <= 0:
        if case.paid_lender_since_placement:
            return "recalled", "paid_direct"
        return "closed", "collected"
    if (as_of - case.placed_on).days >= recall_after_days and not case.paid_recently:
        return "recalled", "aged"
    return None


def _open_cases(conn: Connection, config: Config, as_of: date) -> list[OpenCase]:
    state = loan_state(config, as_of).subquery("state")
    day = as_date(literal(as_of))
    recent = exists(
        select(payments.c.payment_id).where(
            payments.c.loan_id == cases.c.loan_id,
            payments.c.paid_on <= day,
            payments.c.paid_on > as_date(literal(as_of - timedelta(days=RECENT_PAYMENT_DAYS))),
        )
    )
    lender_paid = exists(
        select(payments.c.payment_id).where(
            payments.c.loan_id == cases.c.loan_id,
            payments.c.source != "agency",
            payments.c.paid_on >= cases.c.placed_on,
            payments.c.paid_on <= day,
        )
    )
    query = (
        select(
            cases.c.case_id,
            cases.c.placed_on,
            loans.c.status,
            state.c.overdue_cents,
            recent.label("recent"),
            lender_paid.label("lender_paid"),
        )
        .join(loans, loans.c.loan_id == cases.c.loan_id)
        .outerjoin(state, state.c.loan_id == cases.c.loan_id)
        .where(cases.c.status == "open", cases.c.placed_on <= day)
    )
    return [
        OpenCase(
            case_id=row.case_id,
            placed_on=row.placed_on,
            loan_closed=row.status == "closed",
            overdue_cents=int(row.overdue_cents or 0),
            paid_recently=bool(row.recent),
            paid_lender_since_placement=bool(row.lender_paid),
        )
        for row in conn.execute(query)
    ]


def close_settled_and_recall(conn: Connection, config: Config, as_of: date) -> dict[str, int]:
    """Close or recall the open cases the rules end on `as_of`; counts by close reason."""
    counts: dict[str, int] = {}
    decided: dict[tuple[str, str], list[str]] = {}
    for case in _open_cases(conn, config, as_of):
        decision = closing_decision(case, as_of, config.handoff.recall_after_days)
        if decision is not None:
            decided.setdefault(decision, []).append(case.case_id)
    for (status, reason), ids in decided.items():
        counts[reason] = len(ids)
        for start in range(0, len(ids), 1000):
            conn.execute(
                update(cases)
                .where(cases.c.case_id.in_(ids[start : start + 1000]), cases.c.status == "open")
                .values(status=status, closed_on=as_of, close_reason=reason)
            )
    return counts


def place_cases(conn: Connection, config: Config, run_date: date) -> int:
    """End the cases due to end, then open one for every eligible loan; returns how many."""
    close_settled_and_recall(conn, config, run_date)
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
