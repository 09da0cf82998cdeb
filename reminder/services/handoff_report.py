"""`reminder handoff report`: reconciliation and commission per agency and currency.

What the lender checks before paying an agency's invoice: how many cases are open and
closed, the balance placed, what the agency collected (its `payment` outcomes, which are
also the payments booked with source `agency`), the collection rate, the commission owed
at the agency's `commission_rate`, and the open cases with no outcome for 30 days (the
agency is not working them). Amounts are per currency: they are never added across.
Commission is rounded half-up to the cent, once per agency and currency.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, case, func, literal, select

from reminder.config import Config
from reminder.db.sqlfn import as_date
from reminder.db.tables import cases, outcomes
from reminder.services.evaluation import cents

CENT = Decimal("0.01")
STALE_DAYS = 30


def _money(value: int | None) -> Decimal:
    return (Decimal(int(value or 0)) / 100).quantize(CENT)


def _stale(conn: Connection, today: date) -> dict[tuple[str, str | None], list[str]]:
    """Open cases whose last outcome (or placement, when none) is 30 or more days old."""
    last = (
        select(outcomes.c.case_id, func.max(outcomes.c.outcome_date).label("last"))
        .group_by(outcomes.c.case_id)
        .subquery("last_outcome")
    )
    cutoff = as_date(literal(today - timedelta(days=STALE_DAYS)))
    query = (
        select(cases.c.agency_id, cases.c.currency, cases.c.case_id)
        .outerjoin(last, last.c.case_id == cases.c.case_id)
        .where(cases.c.status == "open", func.coalesce(last.c.last, cases.c.placed_on) <= cutoff)
        .order_by(cases.c.case_id)
    )
    found: dict[tuple[str, str | None], list[str]] = {}
    for agency_id, currency, case_id in conn.execute(query):
        found.setdefault((agency_id, currency), []).append(case_id)
    return found


def commission_report(conn: Connection, config: Config, today: date) -> list[dict[str, Any]]:
    """One entry per agency and currency (agencies with no case get a zero entry)."""
    counts = conn.execute(
        select(
            cases.c.agency_id,
            cases.c.currency,
            func.sum(case((cases.c.status == "open", 1), else_=0)),
            func.count(),
            func.sum(cents(cases.c.placed_balance)),
        ).group_by(cases.c.agency_id, cases.c.currency)
    ).all()
    collected = dict(
        ((agency_id, currency), total)
        for agency_id, currency, total in conn.execute(
            select(cases.c.agency_id, cases.c.currency, func.sum(cents(outcomes.c.amount)))
            .join(cases, cases.c.case_id == outcomes.c.case_id)
            .where(outcomes.c.outcome == "payment", outcomes.c.agency_id == cases.c.agency_id)
            .group_by(cases.c.agency_id, cases.c.currency)
        )
    )
    stale = _stale(conn, today)
    by_key = {(a, c): (int(o or 0), int(n), p) for a, c, o, n, p in counts}
    report: list[dict[str, Any]] = []
    for agency in config.agencies:
        currencies: list[str | None] = sorted(c for a, c in by_key if a == agency.id) or [None]
        for currency in currencies:
            key = (agency.id, currency)
            opened, total, placed = by_key.get(key, (0, 0, 0))
            placed_amount = _money(placed)
            got = _money(collected.get(key))
            rate = (got / placed_amount).quantize(Decimal("0.0001")) if placed_amount else None
            stale_ids = stale.get(key, [])
            report.append({
                "agency": agency.id, "name": agency.name, "currency": currency,
                "cases_open": opened, "cases_closed": total - opened,
                "balance_placed": placed_amount, "collected": got, "collection_rate": rate,
                "commission_rate": agency.commission_rate,
                "commission_owed": (got * agency.commission_rate).quantize(CENT, ROUND_HALF_UP),
                "stale_cases": len(stale_ids), "stale_case_ids": stale_ids,
            })  # fmt: skip
    return report
