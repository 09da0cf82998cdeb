"""Delinquency evaluation as one set-based query over the whole portfolio.

For an as-of date D, payments dated on or before D are applied to installments oldest
first. The oldest installment whose running total of amounts due exceeds the amount paid
is the oldest unpaid one; its due date is the *episode*, and D minus it is the dpd
(negative for an upcoming due). The overdue balance is what fell due before D minus what
was paid. Everything happens in SQL with a window function: no Python loop over loans.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    case,
    column,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    values,
)
from sqlalchemy.sql.expression import ColumnElement

from reminder.config import Config
from reminder.db.sqlfn import ZERO, as_date, cents, days_between
from reminder.db.tables import installments, loan_balances, loans, payments
from reminder.services.balances import refresh_balances, running_due


def lookahead_days(config: Config) -> int:
    """How far ahead of D an installment can matter (the most negative stage dpd)."""
    lows = [stage.dpd[0] for stage in config.stages]
    return max([0, *(-low for low in lows)])


def _evaluation(
    config: Config, as_of: date, loan_ids: Sequence[str] | Select[Any] | None
) -> tuple[Any, Any]:
    """(totals, episodes): amounts per evaluated loan, and the state of the unpaid ones.

    A cheap pass first sums, per loan, what falls due up to D + lookahead and what was paid
    up to D; only loans owing something there ("open") go through the running-total window
    that finds the oldest unpaid installment. The others are current by construction.
    """
    d = as_date(literal(as_of))
    horizon = as_date(literal(as_of + timedelta(days=lookahead_days(config))))
    paid_filter = payments.c.paid_on <= d
    due_filter = installments.c.due_date <= horizon
    if loan_ids is not None:
        paid_filter = and_(paid_filter, payments.c.loan_id.in_(loan_ids))
        due_filter = and_(due_filter, installments.c.loan_id.in_(loan_ids))
    paid = (
        select(payments.c.loan_id, func.sum(cents(payments.c.amount)).label("paid"))
        .where(paid_filter)
        .group_by(payments.c.loan_id)
        .cte("paid")
    )
    due = (
        select(installments.c.loan_id, func.sum(cents(installments.c.amount_due)).label("due"))
        .where(due_filter)
        .group_by(installments.c.loan_id)
        .cte("due")
    )
    totals = (
        select(
            due.c.loan_id,
            due.c.due,
            func.coalesce(paid.c.paid, ZERO).label("paid"),
        )
        .outerjoin_from(due, paid, paid.c.loan_id == due.c.loan_id)
        .cte("totals")
    )
    unpaid = (
        select(totals.c.loan_id, totals.c.paid)
        .where(totals.c.due > totals.c.paid)
        .cte("unpaid")
        .prefix_with("MATERIALIZED")  # inlined, the window would see every installment
    )
    schedule = (
        select(
            installments.c.loan_id,
            installments.c.due_date,
            cents(installments.c.amount_due).label("amount_due"),
            running_due().label("running_due"),
            unpaid.c.paid,
        )
        .join(unpaid, unpaid.c.loan_id == installments.c.loan_id)
        .where(due_filter)
        .cte("schedule")
    )
    episode = func.min(case((schedule.c.running_due > schedule.c.paid, schedule.c.due_date)))
    fell_due = func.sum(case((schedule.c.due_date < d, schedule.c.amount_due), else_=ZERO))
    episodes = (
        select(
            schedule.c.loan_id,
            episode.label("episode"),
            func.max(schedule.c.paid).label("paid_cents"),
            fell_due.label("fell_due_cents"),
        )
        .group_by(schedule.c.loan_id)
        .cte("episodes")
    )
    return totals, episodes


def _state_columns(as_of: date, episode: Any, fell_due: Any, paid: Any) -> list[Any]:
    overdue = case((fell_due > paid, fell_due - paid), else_=ZERO)
    return [
        episode.label("episode"),
        days_between(as_date(literal(as_of)), episode).label("dpd"),
        overdue.label("overdue_cents"),
        paid.label("paid_cents"),
    ]


def open_loan_state(config: Config, as_of: date, paid_later: bool = True) -> Select[Any]:
    """`loan_state` restricted to the loans owing something up to D + lookahead.

    Read from `loan_balances` (brought up to date by `refresh_balances` first): the
    episode is the loan's oldest unpaid due date when its payments are all dated on or
    before D; only the loans paid after D (a run for an earlier date) go through the full
    evaluation (`paid_later=False` says there are none: PostgreSQL would otherwise scan
    every installment for them). The overdue part sums the open loans' installments due
    before D.
    """
    d = as_date(literal(as_of))
    horizon = as_date(literal(as_of + timedelta(days=lookahead_days(config))))
    fell_due = (
        select(func.coalesce(func.sum(cents(installments.c.amount_due)), ZERO))
        .where(installments.c.loan_id == loan_balances.c.loan_id, installments.c.due_date < d)
        .scalar_subquery()
    )
    current = (
        select(
            loan_balances.c.loan_id,
            *_state_columns(
                as_of, loan_balances.c.unpaid_from, fell_due, loan_balances.c.paid_cents
            ),
        )
        .join(loans, loans.c.loan_id == loan_balances.c.loan_id)
        .where(
            loan_balances.c.unpaid_from <= horizon,
            or_(loan_balances.c.last_paid_on.is_(None), loan_balances.c.last_paid_on <= d),
            loans.c.status != "closed",
        )
    )
    if not paid_later:
        return current
    later = select(loan_balances.c.loan_id).where(loan_balances.c.last_paid_on > d)
    _totals, episodes = _evaluation(config, as_of, later)
    in_full = (
        select(
            episodes.c.loan_id,
            *_state_columns(
                as_of, episodes.c.episode, episodes.c.fell_due_cents, episodes.c.paid_cents
            ),
        )
        .join(loans, loans.c.loan_id == episodes.c.loan_id)
        .where(episodes.c.episode.is_not(None), loans.c.status != "closed")
    )
    return union_all(current, in_full)


def loan_state(
    config: Config, as_of: date, loan_ids: Sequence[str] | None = None
) -> Select[Any]:
    """One row per evaluated loan: loan_id, episode, dpd, overdue_cents, paid_cents.

    Loans with nothing unpaid up to D + lookahead have episode NULL (current). Closed
    loans are left out; written-off ones are kept so the policy can say why it is silent.
    Inside `evaluated_day` for the same day, the day's materialized state is read instead
    (open loans only: every reader in a run looks at those alone).
    """
    materialized = _DAY.get()
    if loan_ids is None and materialized is not None and materialized == (config, as_of):
        return select(
            day_state.c.loan_id,
            day_state.c.episode,
            day_state.c.dpd,
            day_state.c.overdue_cents,
            day_state.c.paid_cents,
        )
    totals, episodes = _evaluation(config, as_of, loan_ids)
    return (
        select(
            totals.c.loan_id,
            *_state_columns(
                as_of,
                episodes.c.episode,
                func.coalesce(episodes.c.fell_due_cents, ZERO),
                totals.c.paid,
            ),
        )
        .join(loans, loans.c.loan_id == totals.c.loan_id)
        .outerjoin(episodes, episodes.c.loan_id == totals.c.loan_id)
        .where(loans.c.status != "closed")
    )


day_state = Table(
    "day_state",
    MetaData(),
    Column("loan_id", String(64), primary_key=True),
    Column("episode", Date),
    Column("dpd", Integer),
    Column("overdue_cents", BigInteger),
    Column("paid_cents", BigInteger),
    prefixes=["TEMPORARY"],
)
_DAY: ContextVar[tuple[Config, date] | None] = ContextVar("evaluated_day", default=None)


@contextmanager
def evaluated_day(conn: Connection, config: Config, as_of: date) -> Iterator[None]:
    """Evaluate the portfolio once for a run: `loan_state(config, as_of)` reads the result.

    The loans changed since the last run get their balances recomputed first; the open
    loans' state goes into a TEMP table on `conn` (inside the run's transaction);
    planning, placement and the stage counts then read it instead of evaluating again.
    """
    refresh_balances(conn)
    paid_later = conn.execute(
        select(literal(1)).where(loan_balances.c.last_paid_on > as_date(literal(as_of))).limit(1)
    ).first()
    day_state.drop(conn, checkfirst=True)
    day_state.create(conn)
    conn.execute(
        insert(day_state).from_select(
            [c.name for c in day_state.c],
            open_loan_state(config, as_of, paid_later=paid_later is not None),
        )
    )
    conn.exec_driver_sql("ANALYZE day_state")
    token = _DAY.set((config, as_of))
    try:
        yield
    finally:
        _DAY.reset(token)
        day_state.drop(conn, checkfirst=True)


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
