"""The contact policy as one SQL CASE: the first suppression reason that applies, or NULL.

The order is the contract (SPEC section 4) and lives in `reminder.domain.reasons.ORDER`;
this module only says how each reason is detected in the database. The same expression
serves planning (whole portfolio) and the dispatcher's re-check just before a send.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, literal, null, or_, select, union
from sqlalchemy.sql.expression import ColumnElement

from reminder.config import Config
from reminder.db.sqlfn import as_date
from reminder.db.tables import borrowers, cases, contact_flags, loans, promises, replies
from reminder.db.types import UTCDateTime
from reminder.domain.reasons import ORDER
from reminder.services.placement import suppressing_case

FLAG_REASONS = ("deceased", "bankruptcy", "cease")


@dataclass(frozen=True)
class PolicyInputs:
    """Column expressions naming the contact being judged (from a query's FROM clause)."""

    loan_id: ColumnElement[Any]
    loan_status: ColumnElement[Any]
    borrower_id: ColumnElement[Any]
    channel: ColumnElement[Any]
    holiday: ColumnElement[Any] | None = None  # truthy when the slot's local date is one
    weekend: ColumnElement[Any] | None = None
    cap_reached: ColumnElement[Any] | None = None
    # truthy when the borrower is one `attention()` lists; without it every lookup below
    # runs for every contact (fine for one message, slow for a whole portfolio)
    attention: ColumnElement[Any] | None = None


def attention() -> Any:
    """Borrowers with an unlifted flag, an open promise, an unresolved paid claim or a case.

    A superset of whom the policy's lookups can match (cases in any status but closed):
    planning joins it so that the lookups run only for these few borrowers.
    """
    return union(
        select(contact_flags.c.borrower_id).where(contact_flags.c.lifted_at.is_(None)),
        select(promises.c.borrower_id).where(promises.c.status == "open"),
        select(replies.c.borrower_id).where(
            replies.c.intent == "paid", replies.c.resolved_at.is_(None)
        ),
        select(loans.c.borrower_id)
        .join(cases, cases.c.loan_id == loans.c.loan_id)
        .where(cases.c.status != "closed"),
    ).cte("attention")


def _flag(kind: str, borrower_id: ColumnElement[Any], *extra: Any) -> ColumnElement[bool]:
    return exists(
        select(contact_flags.c.id).where(
            contact_flags.c.borrower_id == borrower_id,
            contact_flags.c.kind == kind,
            contact_flags.c.lifted_at.is_(None),
            *extra,
        )
    )


def conditions(
    inputs: PolicyInputs, config: Config, run_date: date, run_at: datetime
) -> dict[str, ColumnElement[bool]]:
    """Each reason's condition, keyed by reason; `borrowers` must be in the FROM clause."""
    loan_id, borrower_id, channel = inputs.loan_id, inputs.borrower_id, inputs.channel
    claim_since = literal(run_at - timedelta(days=config.policy.paid_claim_days), UTCDateTime)
    promise_from = as_date(literal(run_date - timedelta(days=config.policy.promise_grace_days)))
    loan_scope = or_(contact_flags.c.loan_id.is_(None), contact_flags.c.loan_id == loan_id)

    def looked_up(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return condition if inputs.attention is None else and_(inputs.attention, condition)

    found: dict[str, ColumnElement[bool]] = {
        "written_off": inputs.loan_status == "written_off",
        "placed": looked_up(suppressing_case(loan_id, config)),
        **{kind: looked_up(_flag(kind, borrower_id)) for kind in FLAG_REASONS},
        "dispute": looked_up(_flag("dispute", borrower_id, loan_scope)),
        "opted_out": looked_up(
            _flag("opt_out", borrower_id, contact_flags.c.channel == channel)
        ),
        "no_consent": or_(
            and_(channel == "sms", borrowers.c.consent_sms.is_(False)),
            and_(channel == "email", borrowers.c.consent_email.is_(False)),
            and_(channel == "voice", borrowers.c.consent_voice.is_(False)),
        ),
        "no_address": or_(
            and_(channel.in_(("sms", "voice")), borrowers.c.phone.is_(None)),
            and_(channel == "email", borrowers.c.email.is_(None)),
            looked_up(_flag("bad_address", borrower_id, contact_flags.c.channel == channel)),
        ),
        "paid_claim": looked_up(exists(
            select(replies.c.id).where(
                replies.c.borrower_id == borrower_id,
                replies.c.intent == "paid",
                replies.c.resolved_at.is_(None),
                replies.c.received_at >= claim_since,
            )
        )),
        "promise": looked_up(exists(
            select(promises.c.id).where(
                promises.c.borrower_id == borrower_id,
                promises.c.status == "open",
                or_(promises.c.loan_id.is_(None), promises.c.loan_id == loan_id),
                promises.c.promised_on >= promise_from,
            )
        )),
    }
    if inputs.holiday is not None:
        found["holiday"] = inputs.holiday == 1
    if inputs.weekend is not None:
        found["weekend"] = inputs.weekend == 1
    if inputs.cap_reached is not None:
        found["cap"] = inputs.cap_reached == 1
    return found


def suppression_reason(
    inputs: PolicyInputs, config: Config, run_date: date, run_at: datetime
) -> ColumnElement[Any]:
    """CASE WHEN <first reason in ORDER> THEN 'reason' ... ELSE NULL END."""
    found = conditions(inputs, config, run_date, run_at)
    whens = [(found[reason], literal(reason)) for reason in ORDER if reason in found]
    return case(*whens, else_=null())
