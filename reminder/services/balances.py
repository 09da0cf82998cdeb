"""Per-loan balances the daily run evaluates from, kept up to date from `stale_loans`.

Triggers on `installments` and `payments` (migration 0002) list every loan whose schedule
or payments changed, whoever wrote them. `refresh_balances` recomputes those loans, as of
every payment recorded, in one set-based pass: what was paid, the last payment's date and
the due date of the oldest installment the payments do not cover (payments applied oldest
first, as in `evaluation`). A run for day D then reads these narrow rows instead of the
whole schedule; loans with a payment dated after D are evaluated in full (see
`evaluation.open_loan_state`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, MetaData, String, Table, delete, func, insert, select

from reminder.db.sqlfn import ZERO, cents
from reminder.db.tables import installments, loan_balances, loans, payments, stale_loans

_ANALYZE_AFTER = 50_000  # refreshed loans

refresh_ids = Table(
    "refresh_ids",
    MetaData(),
    Column("loan_id", String(64), primary_key=True),
    prefixes=["TEMPORARY"],
)


def _take_stale(conn: Connection) -> None:
    """Move the stale loan ids into `refresh_ids`, emptying `stale_loans`.

    PostgreSQL deletes and reads in one statement: a loan marked stale by a transaction
    committing meanwhile is not deleted unseen (its insert waits for this transaction, or
    its row stays for the next run). SQLite holds the only write lock already.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "WITH gone AS (DELETE FROM stale_loans RETURNING loan_id) "
            "INSERT INTO refresh_ids (loan_id) SELECT loan_id FROM gone"
        )
        return
    conn.execute(insert(refresh_ids).from_select(["loan_id"], select(stale_loans.c.loan_id)))
    conn.execute(delete(stale_loans))


def refresh_balances(conn: Connection) -> int:
    """Recompute `loan_balances` for every stale loan, inside the caller's transaction."""
    refresh_ids.drop(conn, checkfirst=True)
    refresh_ids.create(conn)
    try:
        _take_stale(conn)
        count = conn.execute(select(func.count()).select_from(refresh_ids)).scalar_one()
        if count:
            # with its size known, a day's few changed loans are probed, not scanned for
            conn.exec_driver_sql("ANALYZE refresh_ids")
            conn.execute(
                delete(loan_balances).where(
                    loan_balances.c.loan_id.in_(select(refresh_ids.c.loan_id))
                )
            )
            conn.execute(
                insert(loan_balances).from_select(
                    [c.name for c in loan_balances.c], _recomputed()
                )
            )
        if conn.dialect.name == "postgresql" and count >= _ANALYZE_AFTER:
            # the first run after a large import: statistics from before it would make the
            # planner read the rewritten table as nearly empty
            conn.exec_driver_sql("ANALYZE loan_balances")
        return int(count)
    finally:
        refresh_ids.drop(conn, checkfirst=True)


def running_due() -> Any:
    """Each installment's amount due plus every earlier one's, per loan (oldest first)."""
    return func.sum(cents(installments.c.amount_due)).over(
        partition_by=installments.c.loan_id,
        order_by=(installments.c.due_date, installments.c.seq),
        rows=(None, 0),
    )


def _recomputed() -> object:
    paid = (
        select(
            payments.c.loan_id,
            func.sum(cents(payments.c.amount)).label("paid"),
            func.max(payments.c.paid_on).label("last_paid_on"),
        )
        .join(refresh_ids, refresh_ids.c.loan_id == payments.c.loan_id)
        .group_by(payments.c.loan_id)
        .cte("paid")
    )
    schedule = (
        select(
            installments.c.loan_id,
            installments.c.due_date,
            running_due().label("running_due"),
        )
        .join(refresh_ids, refresh_ids.c.loan_id == installments.c.loan_id)
        .cte("schedule")
    )
    unpaid = (
        select(schedule.c.loan_id, func.min(schedule.c.due_date).label("unpaid_from"))
        .outerjoin(paid, paid.c.loan_id == schedule.c.loan_id)
        .where(schedule.c.running_due > func.coalesce(paid.c.paid, ZERO))
        .group_by(schedule.c.loan_id)
        .cte("unpaid")
    )
    return (
        select(
            refresh_ids.c.loan_id,
            func.coalesce(paid.c.paid, ZERO),
            paid.c.last_paid_on,
            unpaid.c.unpaid_from,
        )
        .join(loans, loans.c.loan_id == refresh_ids.c.loan_id)
        .outerjoin(paid, paid.c.loan_id == refresh_ids.c.loan_id)
        .outerjoin(unpaid, unpaid.c.loan_id == refresh_ids.c.loan_id)
    )
