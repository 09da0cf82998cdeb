"""Date arithmetic that reads the same in Python on SQLite and PostgreSQL.

SQLite stores dates as ISO text and has `julianday`/`date`; PostgreSQL has a real DATE
type where `date - date` is an integer and `date - int` is a date.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Date, Integer, func, literal_column, type_coerce
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement


class days_between(FunctionElement[int]):  # noqa: N801 - reads as a SQL function
    """Whole days from `start` to `end` (end - start), both dates."""

    type = Integer()
    inherit_cache = True


@compiles(days_between)
def _days_between_default(element: days_between, compiler: Any, **kw: Any) -> str:
    end, start = list(element.clauses)
    return f"({compiler.process(end, **kw)} - {compiler.process(start, **kw)})"


@compiles(days_between, "sqlite")
def _days_between_sqlite(element: days_between, compiler: Any, **kw: Any) -> str:
    end, start = list(element.clauses)
    return (
        f"CAST(julianday({compiler.process(end, **kw)}) - "
        f"julianday({compiler.process(start, **kw)}) AS INTEGER)"
    )


class date_minus_days(FunctionElement[Any]):  # noqa: N801
    """`day` minus `days` days (days may be a column)."""

    type = Date()
    inherit_cache = True


@compiles(date_minus_days)
def _date_minus_default(element: date_minus_days, compiler: Any, **kw: Any) -> str:
    day, days = list(element.clauses)
    return f"(CAST({compiler.process(day, **kw)} AS DATE) - {compiler.process(days, **kw)})"


@compiles(date_minus_days, "sqlite")
def _date_minus_sqlite(element: date_minus_days, compiler: Any, **kw: Any) -> str:
    day, days = list(element.clauses)
    return (
        f"date({compiler.process(day, **kw)}, '-' || ({compiler.process(days, **kw)}) "
        "|| ' days')"
    )


class as_date(FunctionElement[Any]):  # noqa: N801
    """A bound value typed as DATE: CAST on PostgreSQL, left as ISO text on SQLite.

    (In SQLite, CAST(x AS DATE) has NUMERIC affinity and would turn '2026-12-04' into 2026.)
    """

    type = Date()
    inherit_cache = True


@compiles(as_date)
def _as_date_default(element: as_date, compiler: Any, **kw: Any) -> str:
    (value,) = list(element.clauses)
    return f"CAST({compiler.process(value, **kw)} AS DATE)"


@compiles(as_date, "sqlite")
def _as_date_sqlite(element: as_date, compiler: Any, **kw: Any) -> str:
    (value,) = list(element.clauses)
    return str(compiler.process(value, **kw))


def true_() -> ColumnElement[Any]:
    return literal_column("1") == literal_column("1")


ZERO = literal_column("0")


def cents(amount: ColumnElement[Any]) -> ColumnElement[int]:
    """A Money column seen as the integer cents it is stored as (exact SQL sums)."""
    return type_coerce(amount, BigInteger)


__all__ = ["days_between", "date_minus_days", "as_date", "func", "true_", "cents", "ZERO"]
