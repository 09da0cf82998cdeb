"""loan balances kept for the daily run; audit rows by borrower

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 18:40:00

`loan_balances` holds, per loan, what evaluation needs as of every payment recorded; the
daily run brings it up to date for the loans in `stale_loans`, which triggers on
`installments` and `payments` fill whoever writes (importer, agency outcomes, an ETL
straight into the database). Every existing loan starts stale, so the first run after
the upgrade computes them all. `ix_installments_due_date` has been unused since the
engine reads schedules through `ix_installments_schedule`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WATCHED = ("installments", "payments")

# PostgreSQL: statement-level triggers with transition tables (one INSERT per statement,
# not one per row: the importer writes with COPY + one upsert per chunk).
PG_FUNCTIONS = {
    "reminder_stale_new": "SELECT loan_id FROM new_rows",
    "reminder_stale_old": "SELECT loan_id FROM old_rows",
    "reminder_stale_both": "SELECT loan_id FROM new_rows UNION SELECT loan_id FROM old_rows",
}
PG_EVENTS = (
    ("insert", "INSERT", "NEW TABLE AS new_rows", "reminder_stale_new"),
    ("update", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", "reminder_stale_both"),
    ("delete", "DELETE", "OLD TABLE AS old_rows", "reminder_stale_old"),
)
# SQLite has row triggers only; INSERT OR IGNORE into a WITHOUT ROWID key is cheap.
SQLITE_EVENTS = (
    ("insert", "INSERT", ("NEW",)),
    ("update", "UPDATE", ("OLD", "NEW")),
    ("delete", "DELETE", ("OLD",)),
)


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, source in PG_FUNCTIONS.items():
            op.execute(
                f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN INSERT INTO stale_loans (loan_id) SELECT DISTINCT loan_id "
                f"FROM ({source}) AS changed ORDER BY loan_id ON CONFLICT DO NOTHING; "
                f"RETURN NULL; END $$"
            )
        for table in WATCHED:
            for suffix, event, referencing, function in PG_EVENTS:
                op.execute(
                    f"CREATE TRIGGER {table}_stale_{suffix} AFTER {event} ON {table} "
                    f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
                )
        return
    for table in WATCHED:
        for suffix, event, sides in SQLITE_EVENTS:
            body = " ".join(
                f"INSERT OR IGNORE INTO stale_loans (loan_id) VALUES ({side}.loan_id);"
                for side in sides
            )
            op.execute(
                f"CREATE TRIGGER {table}_stale_{suffix} AFTER {event} ON {table} "
                f"FOR EACH ROW BEGIN {body} END"
            )


def _drop_triggers() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in WATCHED:
        for suffix, *_ in SQLITE_EVENTS:
            on = f" ON {table}" if postgres else ""
            op.execute(f"DROP TRIGGER IF EXISTS {table}_stale_{suffix}{on}")
    if postgres:
        for name in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")


def upgrade() -> None:
    op.create_table(
        "loan_balances",
        sa.Column("loan_id", sa.String(length=64), nullable=False),
        sa.Column("paid_cents", sa.BigInteger(), nullable=False),
        sa.Column("last_paid_on", sa.Date(), nullable=True),
        sa.Column("unpaid_from", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("loan_id", name=op.f("pk_loan_balances")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "stale_loans",
        sa.Column("loan_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("loan_id", name=op.f("pk_stale_loans")),
        sqlite_with_rowid=False,
    )
    _create_triggers()
    op.execute("INSERT INTO stale_loans (loan_id) SELECT loan_id FROM loans")
    # plain index statements: a batch (table copy) on SQLite would lose the triggers
    op.create_index("ix_audit_log_borrower_id", "audit_log", ["borrower_id"])
    op.drop_index("ix_installments_due_date", table_name="installments")


def downgrade() -> None:
    op.create_index("ix_installments_due_date", "installments", ["due_date"])
    op.drop_index("ix_audit_log_borrower_id", table_name="audit_log")
    _drop_triggers()
    op.drop_table("stale_loans")
    op.drop_table("loan_balances")
