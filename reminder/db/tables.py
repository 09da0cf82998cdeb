"""The schema: SQLAlchemy Core tables (the engine works set-based; there is no ORM).

Every schema change is also an Alembic revision in `reminder/db/migrations/versions/`.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from reminder.db.types import Money, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

borrowers = Table(
    "borrowers",
    metadata,
    Column("borrower_id", String(64), primary_key=True),
    Column("name", String(200)),  # NULL once `reminder forget` erased it
    Column("phone", String(20)),  # E.164
    Column("email", String(254)),
    Column("timezone", String(64)),
    Column("locale", String(16)),
    Column("risk_grade", String(1)),
    Column("consent_sms", Boolean, nullable=False, default=True),
    Column("consent_email", Boolean, nullable=False, default=True),
    Column("consent_voice", Boolean, nullable=False, default=True),
    Column("updated_at", UTCDateTime),
    Index("ix_borrowers_phone", "phone"),
    Index("ix_borrowers_email", "email"),
)

loans = Table(
    "loans",
    metadata,
    Column("loan_id", String(64), primary_key=True),
    Column("borrower_id", String(64), ForeignKey("borrowers.borrower_id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("principal", Money, nullable=False),
    Column("opened_on", Date),
    Column("status", String(16), nullable=False, default="active"),
    CheckConstraint("status IN ('active', 'closed', 'written_off')", name="status"),
    Index("ix_loans_borrower_id", "borrower_id"),
)

installments = Table(
    "installments",
    metadata,
    Column("loan_id", String(64), ForeignKey("loans.loan_id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("due_date", Date, nullable=False),
    Column("amount_due", Money, nullable=False),
    # covering, in the order evaluation reads a loan's schedule (running totals per loan)
    Index("ix_installments_schedule", "loan_id", "due_date", "seq", "amount_due"),
)

payments = Table(
    "payments",
    metadata,
    Column("payment_id", String(64), primary_key=True),
    Column("loan_id", String(64), ForeignKey("loans.loan_id"), nullable=False),
    Column("paid_on", Date, nullable=False),
    Column("amount", Money, nullable=False),
    Column("source", String(16), nullable=False, default="ledger"),
    CheckConstraint("source IN ('ledger', 'agency', 'borrower')", name="source"),
    Index("ix_payments_loan_id", "loan_id", "paid_on"),
)

# What evaluation needs per loan, as of every payment recorded: kept by the daily run for
# the loans listed in `stale_loans`, which database triggers on installments and payments
# fill (migration 0002), so any writer (the importer, agency outcomes, a lender's own ETL)
# is covered. The run reads 1M narrow rows here instead of 6M installments + 3M payments.
loan_balances = Table(
    "loan_balances",
    metadata,
    Column("loan_id", String(64), primary_key=True),
    Column("paid_cents", BigInteger, nullable=False),  # every payment, whatever its date
    Column("last_paid_on", Date),  # a run for an earlier date evaluates this loan in full
    Column("unpaid_from", Date),  # due date of the oldest installment not fully paid
    sqlite_with_rowid=False,
)

stale_loans = Table(
    "stale_loans",
    metadata,
    Column("loan_id", String(64), primary_key=True),
    sqlite_with_rowid=False,
)

runs = Table(
    "runs",
    metadata,
    Column("run_date", Date, primary_key=True),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("owner", String(120)),  # host:pid of the process holding the lease
    Column("lease_until", UTCDateTime),
    Column("summary", JSON),
    Column("error", Text),
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("loan_id", String(64), ForeignKey("loans.loan_id"), nullable=False),
    Column("borrower_id", String(64), nullable=False),
    Column("run_date", Date, nullable=False),
    Column("stage", String(40), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("episode", Date, nullable=False),  # due date of the oldest unpaid installment
    Column("dpd", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(24)),  # suppression reason, NULL unless suppressed
    Column("not_before", UTCDateTime),
    Column("locale", String(16)),
    Column("subject", Text),
    Column("body", Text),
    Column("provider", String(24)),
    Column("provider_id", String(80)),
    Column("batch_key", String(80)),  # rows sent together as one consolidated message
    Column("attempts", Integer, nullable=False, default=0),
    Column("error_code", String(24)),
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("claimed_by", String(120)),
    UniqueConstraint("loan_id", "stage", "channel", "run_date"),
    Index("ix_messages_due", "status", "not_before"),
    Index("ix_messages_borrower", "borrower_id", "channel", "run_date"),
    Index("ix_messages_provider_id", "provider_id"),
)

contact_flags = Table(
    "contact_flags",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("borrower_id", String(64), ForeignKey("borrowers.borrower_id"), nullable=False),
    Column("loan_id", String(64)),  # a dispute may name one loan; NULL = all loans
    # opt_out | dispute | cease | bankruptcy | deceased | bad_address
    Column("kind", String(16), nullable=False),
    Column("channel", String(8)),  # opt_out and bad_address are per channel
    Column("source", String(40), nullable=False),
    Column("note", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("lifted_at", UTCDateTime),
    Column("lifted_note", Text),
    Index("ix_contact_flags_borrower", "borrower_id", "kind"),
)

promises = Table(
    "promises",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("borrower_id", String(64), nullable=False),
    Column("loan_id", String(64)),  # NULL = every loan of the borrower
    Column("promised_on", Date, nullable=False),
    Column("amount", Money),
    Column("source", String(40), nullable=False),
    Column("status", String(12), nullable=False, default="open"),  # open | kept | broken
    Column("created_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime),
    Index("ix_promises_borrower", "borrower_id", "status"),
)

replies = Table(
    "replies",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("provider_ref", String(120), unique=True),  # provider's id: retries are no-ops
    Column("channel", String(8), nullable=False),
    Column("borrower_id", String(64)),
    Column("sender", String(254)),  # masked when no borrower matched
    Column("body", Text),
    Column("intent", String(12), nullable=False),
    Column("promise_date", Date),
    Column("received_at", UTCDateTime, nullable=False),
    Column("needs_person", Boolean, nullable=False, default=False),
    Column("resolved_at", UTCDateTime),
    Column("resolution_note", Text),
    Index("ix_replies_borrower", "borrower_id", "intent", "received_at"),
)

cases = Table(
    "cases",
    metadata,
    Column("case_id", String(80), primary_key=True),
    Column("loan_id", String(64), ForeignKey("loans.loan_id"), nullable=False),
    Column("agency_id", String(64), nullable=False),
    Column("status", String(12), nullable=False),  # open | closed | recalled
    Column("placed_on", Date, nullable=False),
    Column("placed_balance", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("dpd_at_placement", Integer, nullable=False),
    Column("exported_at", UTCDateTime),
    Column("export_file", String(200)),
    Column("closed_on", Date),
    Column("close_reason", String(40)),
    Column("recall_exported_at", UTCDateTime),
    Column("recall_file", String(200)),  # the recall file naming the case (set before sending)
    Index("ix_cases_loan", "loan_id", "status"),
    Index("ix_cases_agency", "agency_id", "status"),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("agency_id", String(64), nullable=False),
    Column("agency_ref", String(120), nullable=False),
    Column("case_id", String(80), ForeignKey("cases.case_id"), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("amount", Money),
    Column("outcome_date", Date, nullable=False),
    Column("note", Text),
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("agency_id", "agency_ref"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("borrower_id", String(64)),
    Column("loan_id", String(64)),
    Column("message_id", BigInteger),
    Column("detail", JSON),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    Index("ix_audit_log_loan", "loan_id"),
    Index("ix_audit_log_borrower_id", "borrower_id"),
)

rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("channel", String(8), primary_key=True),
    Column("window_start", UTCDateTime, nullable=False),
    Column("used", Integer, nullable=False, default=0),
)
