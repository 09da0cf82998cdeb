"""One daily run: settle promises, evaluate and plan, place aged cases, dispatch what is due.

Planning and placement happen in one transaction, so a crash leaves either the whole
plan or none of it; a rerun of the same day inserts nothing new (unique keys) and the
summary it prints describes the day as a whole, so it reads the same both times.
The run records itself in `runs` (start, end, summary) so `serve` can tell a day was done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from reminder.bootstrap import App
from reminder.db.sqlfn import as_date
from reminder.db.tables import cases, messages, promises, runs
from reminder.errors import RunInProgress
from reminder.services import audit_records as audit
from reminder.services.dispatch import dispatch_due, worker_name
from reminder.services.evaluation import evaluated_day, in_range, loan_state, stage_table
from reminder.services.placement import place_cases
from reminder.services.planning import RunMoment, plan

SENT_STATUSES = ("sent", "delivered")
FAILED_STATUSES = ("failed", "undeliverable", "unknown")


LEASE = timedelta(hours=1)


@dataclass(frozen=True)
class RunOptions:
    run_date: date | None = None  # None: today's run, happening now
    dry_run: bool = False
    dispatch: bool = True
    skip_if_done: bool = False  # the scheduler: a day already done is not run again


def moment_for(app: App, run_date: date | None) -> RunMoment:
    """`--date D` happens at [run] time on D in the lender's timezone; else now."""
    if run_date is None:
        now = app.clock.now()
        return RunMoment(now.astimezone(app.config.run.tz).date(), now)
    at = datetime.combine(run_date, app.config.run.run_time, tzinfo=app.config.run.tz)
    return RunMoment(run_date, at)


def settle_promises(conn: Connection, app: App, moment: RunMoment) -> None:
    """Promises whose date + grace has passed become kept (loan current) or broken.

    Each settled promise gets a `promise` audit row, written when the run commits.
    """
    grace = app.config.policy.promise_grace_days
    expired = promises.c.promised_on < as_date_literal(moment.run_date - timedelta(days=grace))
    due = conn.execute(
        select(promises.c.id, promises.c.borrower_id, promises.c.loan_id,
               promises.c.promised_on, promises.c.amount, promises.c.source)
        .where(promises.c.status == "open", expired)
    ).all()  # fmt: skip
    if not due:
        return
    state = loan_state(app.config, moment.run_date).subquery("state")
    from reminder.db.tables import loans

    still_overdue = {
        row.borrower_id
        for row in conn.execute(
            select(loans.c.borrower_id)
            .join(state, state.c.loan_id == loans.c.loan_id)
            .where(state.c.overdue_cents > 0)
        )
    }
    for promise_id, borrower_id, loan_id, promised_on, amount, source in due:
        status = "broken" if borrower_id in still_overdue else "kept"
        conn.execute(
            update(promises)
            .where(promises.c.id == promise_id)
            .values(status=status, closed_at=moment.run_at)
        )
        audit.append_on_commit(
            conn, "promise", borrower_id=borrower_id, loan_id=loan_id, at=moment.run_at,
            detail={"promise_id": promise_id, "outcome": status, "promised_on": promised_on,
                    "amount": amount, "source": source, "run_date": moment.run_date},
        )  # fmt: skip


def as_date_literal(value: date) -> Any:
    from sqlalchemy import literal

    return as_date(literal(value))


def stage_counts(conn: Connection, app: App, run_date: date) -> dict[str, int]:
    state = loan_state(app.config, run_date).subquery("state")
    ranges = stage_table(app.config)
    query = (
        select(ranges.c.stage, func.count())
        .select_from(state)
        .join(ranges, in_range(state.c.dpd, ranges))
        .where(state.c.episode.is_not(None))
        .group_by(ranges.c.stage)
    )
    found = dict(conn.execute(query).all())
    return {stage.name: int(found.get(stage.name, 0)) for stage in app.config.stages}


def day_summary(
    conn: Connection, app: App, run_date: date, stages: dict[str, int] | None = None
) -> dict[str, Any]:
    """The `reminder run --json` document for `run_date`, from what the database holds.

    `stages` are the stage counts when the caller already has them (see `_plan_day`).
    """
    on_day = messages.c.run_date == as_date_literal(run_date)
    by_status = dict(
        conn.execute(
            select(messages.c.status, func.count()).where(on_day).group_by(messages.c.status)
        ).all()
    )
    suppressed = dict(
        conn.execute(
            select(messages.c.reason, func.count())
            .where(on_day, messages.c.status == "suppressed")
            .group_by(messages.c.reason)
        ).all()
    )
    placed = conn.execute(
        select(func.count()).where(cases.c.placed_on == as_date_literal(run_date))
    ).scalar_one()
    return {
        "date": run_date.isoformat(),
        "stages": stages if stages is not None else stage_counts(conn, app, run_date),
        "planned": sum(n for status, n in by_status.items() if status != "suppressed"),
        "suppressed": {reason: int(n) for reason, n in sorted(suppressed.items())},
        "sent": sum(by_status.get(status, 0) for status in SENT_STATUSES),
        "failed": sum(by_status.get(status, 0) for status in FAILED_STATUSES),
        "placed": int(placed),
    }


def _claim_ledger(conn: Connection, moment: RunMoment, now: datetime) -> str:
    """Take the day's run lease: 'mine', 'done' (finished before) or 'busy' (live elsewhere).

    The ledger row is the lock: a fresh day is inserted, a day whose lease expired (a run
    that died half-way) is taken over and resumed, a live lease is left alone. Works the
    same on SQLite and PostgreSQL, with any number of `serve` processes.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    me, until = worker_name(), now + LEASE
    inserted = conn.execute(  # RETURNING: psycopg reports rowcount -1 for this statement
        dialect.insert(runs)
        .values(run_date=moment.run_date, status="running", started_at=now, owner=me,
                lease_until=until)
        .on_conflict_do_nothing(index_elements=["run_date"])
        .returning(runs.c.run_date)
    ).first()
    if inserted is not None:
        return "mine"
    row = conn.execute(
        select(runs.c.status, runs.c.owner, runs.c.lease_until)
        .where(runs.c.run_date == moment.run_date)
        .with_for_update()
    ).one()
    if row.status == "done":
        return "done"
    if row.status == "running" and row.lease_until is not None and row.lease_until > now \
            and row.owner != me:
        return "busy"
    conn.execute(
        update(runs).where(runs.c.run_date == moment.run_date)
        .values(status="running", owner=me, lease_until=until)
    )
    return "mine"


def _rerun_ledger(conn: Connection, moment: RunMoment, now: datetime) -> None:
    conn.execute(
        update(runs).where(runs.c.run_date == moment.run_date)
        .values(status="running", owner=worker_name(), lease_until=now + LEASE)
    )


def _finish_ledger(
    conn: Connection, moment: RunMoment, summary: dict[str, Any], now: datetime
) -> None:
    conn.execute(
        update(runs)
        .where(runs.c.run_date == moment.run_date)
        .values(status="done", finished_at=now, summary=summary, lease_until=None)
    )


def run_day(app: App, options: RunOptions) -> dict[str, Any]:
    """Carry out (or with dry_run, only compute) one daily run; returns its summary."""
    moment = moment_for(app, options.run_date)
    if options.dry_run:
        with app.engine.connect() as conn:
            transaction = conn.begin()
            try:
                stages = _plan_day(conn, app, moment)
                return day_summary(conn, app, moment.run_date, stages) | {"dry_run": True}
            finally:
                transaction.rollback()
    now = app.clock.now()
    with app.engine.begin() as conn:
        claimed = _claim_ledger(conn, moment, now)
        if claimed == "busy":
            owner = conn.execute(
                select(runs.c.owner).where(runs.c.run_date == moment.run_date)).scalar()
            raise RunInProgress(moment.run_date, owner)
        if claimed == "done":
            if options.skip_if_done:
                return day_summary(conn, app, moment.run_date) | {"skipped": "already done"}
            _rerun_ledger(conn, moment, now)
        stages = _plan_day(conn, app, moment)
    if options.dispatch:
        dispatch_due(app, moment.run_at if options.run_date else None)
    with app.engine.begin() as conn:
        summary = day_summary(conn, app, moment.run_date, stages)
        _finish_ledger(conn, moment, summary, app.clock.now())
    return summary


def _plan_day(conn: Connection, app: App, moment: RunMoment) -> dict[str, int]:
    """Settle, plan and place on one evaluation of the portfolio; returns the stage counts."""
    with evaluated_day(conn, app.config, moment.run_date):
        settle_promises(conn, app, moment)
        last_id = audit.last_message_id(conn)
        placed = audit.case_snapshot(conn, moment.run_date)
        plan(conn, app.config, moment)
        place_cases(conn, app.config, moment.run_date)
        stages = stage_counts(conn, app, moment.run_date)
    # the audit trail: a decision per new message row, a placement per case opened or ended
    audit.record_decisions(conn, moment.run_date, last_id, moment.run_at)
    audit.record_placements(conn, moment.run_date, placed, moment.run_at)
    return stages


def day_was_run(conn: Connection, run_date: date) -> bool:
    return bool(
        conn.execute(
            select(exists().where(and_(runs.c.run_date == run_date, runs.c.status == "done")))
        ).scalar()
    )
