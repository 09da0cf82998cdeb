"""Column types that keep money exact and times unambiguous on every database.

Money is stored as an integer number of minor units (cents): SQLite has no exact decimal
type (its NUMERIC silently becomes a float), and integer sums are exact and fast in SQL.
Timestamps are stored as naive UTC and always come back timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

CENTS = Decimal(100)


def to_cents(amount: Decimal) -> int:
    """Exact conversion of a validated amount (at most 2 places) to minor units."""
    cents = amount * CENTS
    if cents != cents.to_integral_value():
        raise ValueError(f"{amount} has more than 2 decimal places")
    return int(cents)


def from_cents(cents: int | None) -> Decimal | None:
    return None if cents is None else (Decimal(int(cents)) / CENTS).quantize(Decimal("0.01"))


class Money(TypeDecorator[Decimal]):
    """A Decimal amount with 2 places, stored as integer cents."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, int):
            raise TypeError("Money columns take Decimal, not int (ambiguous units)")
        return to_cents(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return from_cents(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware instant stored as naive UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not accepted; pass an aware instant")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
