"""Delinquency evaluation as one set-based query over the whole portfolio.

For an as-of date D, payments dated on or before D are applied to installments oldest
first. The oldest installment whose running total of amounts due exceeds the amount paid
is the oldest unpaid one; its due date is the *episode*, and D minus it is the dpd
(negative for an upcoming due). The overdue balance is what fell due before D minus what
was paid. Everything happens in SQL with a window function: no Python loop over loans.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    String,
    and_,
    case,
    column,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
    values,
)
from sqlalchemy.sql.expression import ColumnElement

from reminder.config import Config
from reminder.db.sqlfn import as_date, days_between
from reminder.db.tables import installments, loans, payments

ZERO = literal_column("0")


def cents(amount: ColumnElement[Any]) -> ColumnElement[int]:
    """A Money column seen as the integer cents it is stored as (exact SQL sums)."""
    return type_coerce(amount, BigInteger)


def lookahead_days(config: Config) -> int:
    """How far ahead of D an installment can matter (the most negative stage dpd)."""
    lows = [stage.dpd[0] for stage in config.stages]
    return max([0, *(-low for low in lows)])


def loan_state(
    config: Config, as_of: date, loan_ids: Sequence[str] | None = None
) -> Select[Any]:
    """One row per evaluated loan: loan_id, episode, dpd, overdue_cents, paid_cents.

    Loans with nothing unpaid up to D + lookahead have episode NULL (current). Closed
    loans are left out; written-off ones are kept so the policy can say why it is silent.
    """
    d = as_date(literal(as_of))
    horizon = as_date(literal(as_of + timedelta(days=lookahead_days(config))))
    paid_filter = payments.c.paid_on <= d
    if loan_ids is not None:
        paid_filter = and_(paid_filter, payments.c.loan_id.in_(loan_ids))
    paid = (
        select(payments.c.loan_id, func.sum(cents(payments.c.amount)).label("paid"))
        .where(paid_filter)
        .group_by(payments.c.loan_id)
        .cte("paid")
    )
    schedule_filter = and_(
        installments.c.due_date <= horizon, loans.c.status != "closed"
    )
    if loan_ids is not None:
        schedule_filter = and_(schedule_filter, installments.c.loan_id.in_(loan_ids))
    running_due = func.sum(cents(installments.c.amount_due)).over(
        partition_by=installments.c.loan_id,
        order_by=(installments.c.due_date, installments.c.seq),
        rows=(None, 0),
    )
    schedule = (
        select(
            installments.c.loan_id,
            installments.c.due_date,
            cents(installments.c.amount_due).label("amount_due"),
            running_due.label("running_due"),
        )
        .join(loans, loans.c.loan_id == installments.c.loan_id)
        .where(schedule_filter)
        .cte("schedule")
    )
    paid_cents = func.coalesce(paid.c.paid, ZERO)
    episode = func.min(case((schedule.c.running_due > paid_cents, schedule.c.due_date)))
    fell_due = func.sum(case((schedule.c.due_date < d, schedule.c.amount_due), else_=ZERO))
    state = (
        select(
            schedule.c.loan_id,
            episode.label("episode"),
            func.max(paid_cents).label("paid_cents"),
            fell_due.label("fell_due_cents"),
        )
        .select_from(schedule.outerjoin(paid, paid.c.loan_id == schedule.c.loan_id))
        .group_by(schedule.c.loan_id)
        .cte("state")
    )
    overdue = case(
        (state.c.fell_due_cents > state.c.paid_cents,
         state.c.fell_due_cents - state.c.paid_cents),
        else_=ZERO,
    )
    return select(
        state.c.loan_id,
        state.c.episode,
        days_between(d, state.c.episode).label("dpd"),
        overdue.label("overdue_cents"),
        state.c.paid_cents,
    )


def stage_table(config: Config) -> Any:
    """The configured stage ranges as an inline VALUES table (name, lo, hi, handoff)."""
    rows = [(s.name, s.dpd[0], s.dpd[1], 1 if s.handoff else 0) for s in config.stages]
    if not rows:
        rows = [("", 1, 0, 0)]  # matches nothing
    return values(
        column("stage", String),
        column("lo", Integer),
        column("hi", Integer),
        column("handoff", Integer),
        name="stage_ranges",
    ).data(rows).cte("stage_ranges")


def cadence_table(config: Config) -> Any:
    """(stage, grade, channel, every_days) for every grade, '' standing for no grade."""
    rows: list[tuple[str, str, str, int]] = []
    for stage in config.stages:
        if stage.handoff:
            continue
        for grade in ("A", "B", "C", "D", "E", ""):
            every, channels = stage.for_grade(grade or None)
            rows.extend((stage.name, grade, channel, every) for channel in channels)
    if not rows:
        rows = [("", "-", "-", 0)]
    return values(
        column("stage", String),
        column("grade", String),
        column("channel", String),
        column("every_days", Integer),
        name="cadence",
    ).data(rows).cte("cadence")


def in_range(dpd: ColumnElement[Any], ranges: Any) -> ColumnElement[bool]:
    return and_(dpd >= ranges.c.lo, dpd <= ranges.c.hi)
