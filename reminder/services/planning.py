"""Planning: turn the day's evaluation into message rows, in one INSERT ... SELECT.

Per (loan, stage, channel) the cadence asks for a contact when no message for the same
episode was planned or sent within the last `every_days - 1` days. The contact policy
then gives each row exactly one status: `planned` (with `not_before`) or `suppressed`
(with the first reason). The unique key (loan, stage, channel, run date) makes a rerun
of the same day insert nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    String,
    and_,
    case,
    column,
    distinct,
    exists,
    func,
    literal,
    or_,
    select,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import ColumnElement

from reminder.config import Config
from reminder.db.sqlfn import as_date, date_minus_days
from reminder.db.tables import borrowers, loans, messages
from reminder.db.types import UTCDateTime
from reminder.domain.contact_window import Slot, slot_for
from reminder.services.evaluation import cadence_table, in_range, loan_state, stage_table
from reminder.services.policy import PolicyInputs, attention, suppression_reason


@dataclass(frozen=True)
class RunMoment:
    """Which day is being run and the instant it happens (aware)."""

    run_date: date
    run_at: datetime


def contact_slots(conn: Connection, config: Config, run_at: datetime) -> list[Slot]:
    """The first allowed contact instant for every timezone borrowers live in."""
    lender_tz = config.run.timezone
    zones = conn.execute(
        select(func.coalesce(borrowers.c.timezone, lender_tz)).distinct()
    ).scalars()
    policy = config.policy
    return [
        slot_for(run_at, zone, policy.window, policy.holidays, policy.skip_weekends)
        for zone in {*zones, lender_tz}
    ]


def _slot_table(slots: list[Slot]) -> Any:
    table = values(
        column("timezone", String),
        column("not_before", UTCDateTime),
        column("holiday", Integer),
        column("weekend", Integer),
        name="slots",
    ).data([(s.timezone, s.not_before, int(bool(s.holiday)), int(s.weekend)) for s in slots])
    return table.cte("slots")


def _cap_reached(
    config: Config, run_date: date, borrower_id: Any, channel: Any
) -> ColumnElement[Any]:
    """1 when the borrower's contacts (distinct days) on `channel` fill its rolling cap.

    One index range scan of (borrower_id, channel, run_date) per contact judged: the cost
    does not grow with the history kept, and needs no row estimate from the planner.
    """
    day = as_date(literal(run_date))
    whens = []
    for name, (count, days) in config.policy.caps.items():
        used = (
            select(func.count(distinct(messages.c.run_date)))
            .where(
                messages.c.borrower_id == borrower_id,
                messages.c.channel == name,
                messages.c.status != "suppressed",
                messages.c.run_date >= as_date(literal(run_date - timedelta(days=days - 1))),
                messages.c.run_date < day,
            )
            .scalar_subquery()
        )
        # a borrower with no contact in the window is never capped, even by a cap of 0
        whens.append((and_(channel == name, used >= max(count, 1)), 1))
    return case(*whens, else_=0) if whens else literal(0)


def planning_select(
    config: Config, moment: RunMoment, slots: list[Slot], guard_lookups: bool = True
) -> Any:
    """SELECT producing one row per contact the cadence calls for, with its decision.

    `guard_lookups` skips the policy's lookups for borrowers `attention()` does not list
    (SQLite; PostgreSQL may plan the IN list as a scan per row, its lookups are cheap).
    """
    run_date, run_at = moment.run_date, moment.run_at
    state = loan_state(config, run_date).cte("loan_state")
    ranges, cadence, slot = stage_table(config), cadence_table(config), _slot_table(slots)
    # the open loans in a reminder stage: the query is driven from these rows (see `plan`)
    staged = (
        select(state.c.loan_id, state.c.episode, state.c.dpd, ranges.c.stage)
        .select_from(state)
        .join(ranges, and_(in_range(state.c.dpd, ranges), ranges.c.handoff == 0))
        .where(state.c.episode.is_not(None))
        .cte("staged")
    )
    earlier = messages.alias("earlier")
    already = exists(
        select(earlier.c.id).where(
            earlier.c.loan_id == staged.c.loan_id,
            earlier.c.stage == staged.c.stage,
            earlier.c.channel == cadence.c.channel,
            earlier.c.episode == staged.c.episode,
            earlier.c.status != "suppressed",
            or_(
                cadence.c.every_days == 0,
                earlier.c.run_date > date_minus_days(literal(run_date), cadence.c.every_days),
            ),
        )
    )
    noted = attention()
    zone = func.coalesce(borrowers.c.timezone, config.run.timezone)
    cap_reached = _cap_reached(config, run_date, loans.c.borrower_id, cadence.c.channel)
    reason = suppression_reason(
        PolicyInputs(
            loan_id=staged.c.loan_id,
            loan_status=loans.c.status,
            borrower_id=loans.c.borrower_id,
            channel=cadence.c.channel,
            holiday=slot.c.holiday,
            weekend=slot.c.weekend,
            cap_reached=cap_reached,
            attention=loans.c.borrower_id.in_(select(noted.c.borrower_id))
            if guard_lookups
            else None,
        ),
        config,
        run_date,
        run_at,
    )
    now = literal(run_at, UTCDateTime)
    decided = (
        select(
            staged.c.loan_id,
            loans.c.borrower_id,
            staged.c.stage,
            cadence.c.channel,
            staged.c.episode,
            staged.c.dpd,
            reason.label("reason"),
            slot.c.not_before,
            func.coalesce(borrowers.c.locale, config.run.default_locale).label("locale"),
        )
        .select_from(staged)
        .join(loans, loans.c.loan_id == staged.c.loan_id)
        .join(borrowers, borrowers.c.borrower_id == loans.c.borrower_id)
        .join(
            cadence,
            and_(
                cadence.c.stage == staged.c.stage,
                cadence.c.grade == func.coalesce(borrowers.c.risk_grade, ""),
            ),
        )
        .join(slot, slot.c.timezone == zone)
        .where(~already)
        .cte("decided")
        # computed once: inlined, the policy CASE would run again for `status`
        .prefix_with("MATERIALIZED")
    )
    return select(
        decided.c.loan_id,
        decided.c.borrower_id,
        as_date(literal(run_date)).label("run_date"),
        decided.c.stage,
        decided.c.channel,
        decided.c.episode,
        decided.c.dpd,
        case((decided.c.reason.is_(None), "planned"), else_="suppressed").label("status"),
        decided.c.reason,
        decided.c.not_before,
        decided.c.locale,
        literal(0).label("attempts"),
        now.label("created_at"),
        now.label("updated_at"),
    ).where(literal(True))


PLAN_COLUMNS = (
    "loan_id", "borrower_id", "run_date", "stage", "channel", "episode", "dpd", "status",
    "reason", "not_before", "locale", "attempts", "created_at", "updated_at",
)


def plan(conn: Connection, config: Config, moment: RunMoment) -> int:
    """Insert the day's message rows; safe to run twice. Returns the driver's rowcount
    (new rows on SQLite; psycopg says -1 for INSERT ... ON CONFLICT DO NOTHING)."""
    slots = contact_slots(conn, config, moment.run_at)
    query = planning_select(config, moment, slots, conn.dialect.name != "postgresql")
    columns = [messages.c[name] for name in PLAN_COLUMNS]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(messages)
        .from_select(columns, query)
        .on_conflict_do_nothing(index_elements=["loan_id", "stage", "channel", "run_date"])
    )
    if conn.dialect.name != "postgresql":
        return conn.execute(statement).rowcount or 0
    # PostgreSQL misjudges joins with the VALUES tables (cadence by grade) and would start
    # from every borrower; joined in the written order, it starts from the staged loans.
    # Fresh statistics for `messages` (a run or a rerun just changed a large part of it):
    # with a stale "nearly empty", the cadence check became a scan per contact.
    conn.exec_driver_sql("ANALYZE messages")
    # And no sequential scans: on a first run `messages` is empty when planned, so the
    # cadence check became a scan per contact of the rows this very statement inserts
    # (55,000 contacts: 102 s; with index probes 4 s).
    settings = {"join_collapse_limit": "1", "enable_seqscan": "off"}
    before = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in settings}
    for name, value in settings.items():
        conn.exec_driver_sql(f"SET LOCAL {name} = '{value}'")
    try:
        return conn.execute(statement).rowcount or 0
    finally:
        for name, value in before.items():
            conn.exec_driver_sql(f"SET LOCAL {name} = '{value}'")
