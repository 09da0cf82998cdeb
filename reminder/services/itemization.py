"""The Reg F itemization of a debt (12 CFR 1006.34), computed from the ledger.

An agency must tell the borrower what was owed on an *itemization date* and what changed
since, so the figures come from installments and payments, never from a stored field:

- itemization date: the date of the last payment on or before the as-of date; when there
  was none, the due date of the first missed installment;
- balance then: everything scheduled (due or not) minus what was paid up to and including
  that date — the whole debt, as a validation notice states it;
- interest and fees since: always 0.00, because the ledger of `reminder` records neither
  (installments carry principal and any interest already scheduled); they are reported as
  explicit zeros so an agency's loader sees the field and knows it was considered;
- payments since: payments dated after the itemization date, up to the as-of date;
- credits since: 0.00 for the same reason (the ledger has no credit entries).

So `balance_then + interest + fees - payments - credits` equals `current_balance`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import Connection, select

from reminder.db.tables import installments, payments

ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Itemization:
    """One loan's itemization and the last payment, as of a date."""

    itemization_date: date | None
    balance_then: Decimal
    interest_since: Decimal
    fees_since: Decimal
    payments_since: Decimal
    credits_since: Decimal
    current_balance: Decimal
    last_payment_date: date | None
    last_payment_amount: Decimal | None


def itemize(
    schedule: Sequence[tuple[date, Decimal]],
    paid: Sequence[tuple[date, Decimal]],
    as_of: date,
) -> Itemization:
    """Itemize one loan from its (due_date, amount_due) and (paid_on, amount) rows."""
    owed = sum((amount for _, amount in schedule), ZERO)
    paid = sorted((day, amount) for day, amount in paid if day <= as_of)
    last_date = paid[-1][0] if paid else None
    last_amount = sum((a for d, a in paid if d == last_date), ZERO) if paid else None
    anchor = last_date if last_date is not None else _first_missed(schedule, as_of)
    paid_by_anchor = sum((a for d, a in paid if anchor is not None and d <= anchor), ZERO)
    paid_total = sum((a for _, a in paid), ZERO)
    return Itemization(
        itemization_date=anchor,
        balance_then=owed - paid_by_anchor,
        interest_since=ZERO,
        fees_since=ZERO,
        payments_since=paid_total - paid_by_anchor,
        credits_since=ZERO,
        current_balance=owed - paid_total,
        last_payment_date=last_date,
        last_payment_amount=last_amount,
    )


def _first_missed(schedule: Sequence[tuple[date, Decimal]], as_of: date) -> date | None:
    """The due date of the first installment that fell due before `as_of` (none was paid)."""
    due = sorted(day for day, _ in schedule if day < as_of)
    return due[0] if due else None


def itemize_loans(
    conn: Connection, loan_dates: Iterable[tuple[str, date]]
) -> dict[str, Itemization]:
    """Itemize many loans, each as of its own date, with two queries per 1,000 loans."""
    wanted = dict(loan_dates)
    ids = sorted(wanted)
    schedule: dict[str, list[tuple[date, Decimal]]] = defaultdict(list)
    paid: dict[str, list[tuple[date, Decimal]]] = defaultdict(list)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for loan_id, due, amount in conn.execute(
            select(installments.c.loan_id, installments.c.due_date, installments.c.amount_due)
            .where(installments.c.loan_id.in_(chunk))
        ):
            schedule[loan_id].append((due, amount))
        for loan_id, day, amount in conn.execute(
            select(payments.c.loan_id, payments.c.paid_on, payments.c.amount)
            .where(payments.c.loan_id.in_(chunk))
        ):
            paid[loan_id].append((day, amount))
    return {
        loan_id: itemize(schedule[loan_id], paid[loan_id], wanted[loan_id]) for loan_id in ids
    }
