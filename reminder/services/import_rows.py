"""Validation of import rows, a chunk at a time: raw strings in, storage tuples out.

Pure code, no database. Each field has a per-value parser (the source of truth: it turns
one value into what the column stores, e.g. E.164 phones, `zh-CN` tags, integer cents, ISO
dates, or raises `Invalid` with the reason shown to the user) and may have a column fast
path that checks a whole chunk's column at C speed and gives up (returns None) at the
first doubt, so the per-value parser decides every hard case. Millions of rows per minute
need the fast path; the reasons come from the slow one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from itertools import repeat
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies

KINDS = ("borrowers", "loans", "installments", "payments")
MAX_CENTS = 10**17  # far above any loan, well inside BIGINT
SEP = "\x00"  # joins a column for whole-column checks (NUL is never a valid value)


class Invalid(ValueError):
    """A field value that cannot be stored; the message is the reason shown to the user."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One problem with one row: `line` in the file (header = 1), `column` (None = row)."""

    line: int
    column: str | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "reason": self.reason}


Parser = Callable[[str], object]
Column = Sequence[str | None]
FastPath = Callable[[Column], Sequence[object] | None]


@dataclass(frozen=True, slots=True)
class Field:
    """A column of an import kind: its parser, fast path and what an empty value means."""

    name: str
    parse: Parser
    fast: FastPath | None = None
    required: bool = False
    default: object = None


# -- per-value parsers, each with its column fast path -----------------------------------

_MONEY = re.compile(r"(-?)(\d+)(?:\.(\d+))?", re.ASCII)
_MONEY_COLUMN = re.compile(rf"\d{{1,15}}\.\d\d(?:{SEP}\d{{1,15}}\.\d\d)*", re.ASCII)
# every character str.isspace() accepts but the plain space
_RARE_SPACE = tuple(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_EMAIL = re.compile(r"[^@\s\x00]+@[^@\s.\x00]+(?:\.[^@\s.\x00]+)+")
_LOCALE_PART = re.compile(r"[A-Za-z]{2,8}|\d{3}")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_CURRENCIES = frozenset(list_currencies())


def _text(limit: int) -> tuple[Parser, FastPath]:
    """Free text of at most `limit` characters (the column width)."""

    def parse(value: str) -> str:
        if len(value) > limit:
            raise Invalid(f"longer than {limit} characters")
        if "\x00" in value:
            raise Invalid("contains a NUL character")
        return value

    def fast(column: Column) -> Column | None:
        joined = SEP.join(column)  # type: ignore[arg-type]  (a None: TypeError, slow path)
        if "" in column or joined.count(SEP) >= len(column) or _needs_strip(joined):
            return None
        return column if max(map(len, column)) <= limit else None  # type: ignore[arg-type]

    return parse, fast


def _needs_strip(joined: str) -> bool:
    """Whether a value of the joined column may begin or end with whitespace (or holds any
    whitespace but a plain space): substring scans run at C speed, a regex would not."""
    if joined[:1].isspace() or joined[-1:].isspace():
        return True
    if f"{SEP} " in joined or f" {SEP}" in joined:
        return True
    return any(space in joined for space in _RARE_SPACE)


def _whole_number(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise Invalid(f"{value!r} is not a whole number from 0 to 999999999")
    return int(value)


def _whole_numbers(column: Column) -> list[int] | None:
    joined = "".join(column)  # type: ignore[arg-type]
    if "" in column or not (joined.isascii() and joined.isdigit()):
        return None
    return list(map(int, column)) if max(map(len, column)) <= 9 else None  # type: ignore[arg-type]


def _cents(value: str) -> int:
    match = _MONEY.fullmatch(value)
    if match is None:
        raise Invalid(f"{value!r} is not a decimal amount like 125.50")
    sign, whole, fraction = match.groups()
    if fraction and len(fraction) > 2:
        raise Invalid(f"{value!r} has more than 2 decimal places")
    cents = int(whole) * 100 + int((fraction or "").ljust(2, "0"))
    if sign and cents:
        raise Invalid(f"{value!r} is negative")
    if cents >= MAX_CENTS:
        raise Invalid(f"{value!r} is too large")
    return cents


def _column_cents(column: Column) -> list[int] | None:
    """Every value written `123.45`: integer cents without a Python-level loop."""
    joined = SEP.join(column)  # type: ignore[arg-type]
    if _MONEY_COLUMN.fullmatch(joined) is None:
        return None
    return list(map(int, joined.replace(".", "").split(SEP)))


def _positive_cents(value: str) -> int:
    cents = _cents(value)
    if cents == 0:
        raise Invalid(f"{value!r} must be greater than zero")
    return cents


def _column_positive_cents(column: Column) -> list[int] | None:
    cents = _column_cents(column)
    return None if cents is None or 0 in cents else cents


@lru_cache(maxsize=65536)
def _iso_date(value: str) -> str:
    if _DATE.fullmatch(value) is None:
        raise Invalid(f"{value!r} is not a date YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise Invalid(f"{value!r} is not a real date") from exc
    return value


def _phone(default_region: str) -> Parser:
    """E.164, any format with a +country code, or national in `default_region` -> E.164."""

    def parse(value: str) -> str:
        try:
            number = phonenumbers.parse(value, default_region)
        except phonenumbers.NumberParseException as exc:
            raise Invalid(f"{value!r} is not a phone number") from exc
        if not phonenumbers.is_valid_number(number):
            raise Invalid(f"{value!r} is not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    return parse


def _email(value: str) -> str:
    if len(value) > 254 or _EMAIL.fullmatch(value) is None:
        raise Invalid(f"{value!r} is not an email address")
    return value


@lru_cache(maxsize=1024)
def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Invalid(f"unknown IANA timezone {value!r}") from exc
    return value


@lru_cache(maxsize=1024)
def _locale(value: str) -> str:
    """A tag Babel knows, in BCP 47 case: `zh_cn` -> `zh-CN`, `EN` -> `en`."""
    parts = value.replace("_", "-").split("-")
    if len(value) > 16 or not all(_LOCALE_PART.fullmatch(part) for part in parts):
        raise Invalid(f"unknown locale {value!r}")
    tail = [p.title() if len(p) == 4 else p.upper() if len(p) <= 3 else p for p in parts[1:]]
    tag = "-".join([parts[0].lower(), *tail])
    try:
        Locale.parse(tag, sep="-")
    except (ValueError, UnknownLocaleError) as exc:
        raise Invalid(f"unknown locale {value!r}") from exc
    return tag


def _choice(*allowed: str, upper: bool = False) -> Parser:
    def parse(value: str) -> str:
        normal = value.upper() if upper else value.lower()
        if normal not in allowed:
            raise Invalid(f"{value!r} is not one of {', '.join(allowed)}")
        return normal

    return parse


def _boolean(value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise Invalid(f"{value!r} is not true/false, 1/0 or yes/no") from None


def _booleans(column: Column) -> list[bool] | None:
    return [_BOOLS[value] for value in column] if set(column) <= _BOOLS.keys() else None  # type: ignore[index]


def _currency(value: str) -> str:
    if value.upper() not in _CURRENCIES:
        raise Invalid(f"unknown ISO 4217 currency {value!r}")
    return value.upper()


def _distinct(parse: Parser) -> FastPath:
    """Fast path for repetitive columns: parse each distinct value once; all must be kept."""

    def fast(column: Column) -> Column | None:
        if "" in column or any(parse(value) != value for value in set(column)):  # type: ignore[arg-type]
            return None
        return column

    return fast


# -- the four kinds -----------------------------------------------------------------------


def _field(name: str, parse: Parser, fast: FastPath | None = None, **options: object) -> Field:
    """A field whose column fast path is `fast`, else a parse of each distinct value."""
    return Field(name, parse, fast or _distinct(parse), **options)  # type: ignore[arg-type]


_ID = _text(64)
_NAME = _text(200)
_DATES = (_iso_date, _distinct(_iso_date))
_MONEY_FIELD = (_cents, _column_cents)
_POSITIVE_MONEY = (_positive_cents, _column_positive_cents)


@dataclass(frozen=True, slots=True)
class Kind:
    """An import kind: its table, fields in column order, key and the table it refers to."""

    name: str
    fields: tuple[Field, ...]
    key_len: int  # the first `key_len` fields form the upsert key
    ref: tuple[str, str] | None = None  # (field, table): must name an existing row
    stamped: bool = False  # the table has an `updated_at` set on every write

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields if field.required)


def kinds(default_region: str = "US") -> dict[str, Kind]:
    """The import kinds of SPEC section 2; `default_region` reads national phone numbers."""
    consent = {"fast": _booleans, "default": True}
    return {
        "borrowers": Kind(
            "borrowers",
            (
                Field("borrower_id", *_ID, required=True),
                Field("name", *_NAME, required=True),
                Field("phone", _phone(default_region)),
                Field("email", _email),
                _field("timezone", _timezone),
                _field("locale", _locale),
                _field("risk_grade", _choice("A", "B", "C", "D", "E", upper=True)),
                _field("consent_sms", _boolean, **consent),
                _field("consent_email", _boolean, **consent),
                _field("consent_voice", _boolean, **consent),
            ),
            key_len=1,
            stamped=True,
        ),
        "loans": Kind(
            "loans",
            (
                Field("loan_id", *_ID, required=True),
                Field("borrower_id", *_ID, required=True),
                _field("currency", _currency, required=True),
                Field("principal", *_MONEY_FIELD, required=True),
                Field("opened_on", *_DATES),
                _field("status", _choice("active", "closed", "written_off"), default="active"),
            ),
            key_len=1,
            ref=("borrower_id", "borrowers"),
        ),
        "installments": Kind(
            "installments",
            (
                Field("loan_id", *_ID, required=True),
                Field("seq", _whole_number, _whole_numbers, required=True),
                Field("due_date", *_DATES, required=True),
                Field("amount_due", *_MONEY_FIELD, required=True),
            ),
            key_len=2,
            ref=("loan_id", "loans"),
        ),
        "payments": Kind(
            "payments",
            (
                Field("payment_id", *_ID, required=True),
                Field("loan_id", *_ID, required=True),
                Field("paid_on", *_DATES, required=True),
                Field("amount", *_POSITIVE_MONEY, required=True),
                _field("source", _choice("ledger", "agency", "borrower"), default="ledger"),
            ),
            key_len=1,
            ref=("loan_id", "loans"),
        ),
    }


# -- a chunk ------------------------------------------------------------------------------

Mask = tuple[bool, ...]  # per field: did the row carry it (absent = keep the stored value)


def mask_for(kind: Kind, present: frozenset[str]) -> Mask | None:
    """Which fields a row carries; None (the fast path) when it carries all of them."""
    mask = tuple(field.name in present for field in kind.fields)
    return None if all(mask) else mask


def parse_column(field: Field, column: Column) -> tuple[Sequence[object], dict[int, str]]:
    """Stored values of one column and the reason for each bad one, by row index."""
    if field.fast is not None:
        try:
            values = field.fast(column)
        except (ValueError, TypeError, AttributeError):  # Invalid, or a None in the column
            values = None
        if values is not None:
            return values, {}
    values, errors = [], {}
    for index, raw in enumerate(column):
        value = raw.strip() if raw else raw
        if not value:
            if field.required:
                errors[index] = "missing required field"
            values.append(field.default)
            continue
        try:
            values.append(field.parse(value))
        except Invalid as exc:
            errors[index] = str(exc)
            values.append(None)
    return values, errors


@dataclass(slots=True)
class Checked:
    """A validated chunk: good rows in storage form, their lines, and the bad rows' problems."""

    rows: list[tuple[object, ...]]
    lines: Sequence[int]
    kept: list[int] | None  # indexes of the good rows in the chunk; None = all of them
    rejected: list[list[Rejection]]  # per bad row, in file order


def validate_chunk(kind: Kind, columns: Mapping[str, Column], lines: Sequence[int]) -> Checked:
    """Parse a chunk column by column; a field absent from `columns` takes its default."""
    parsed: list[object] = []
    bad: dict[int, list[Rejection]] = {}
    for field in kind.fields:
        column = columns.get(field.name)
        if column is None:
            parsed.append(repeat(field.default, len(lines)))
            continue
        values, errors = parse_column(field, column)
        for index, reason in errors.items():
            bad.setdefault(index, []).append(Rejection(lines[index], field.name, reason))
        parsed.append(values)
    rows = list(zip(*parsed, strict=False))  # type: ignore[call-overload]
    if not bad:
        return Checked(rows, lines, None, [])
    kept = [index for index in range(len(rows)) if index not in bad]
    rejected = [bad[index] for index in sorted(bad)]
    return Checked([rows[i] for i in kept], [lines[i] for i in kept], kept, rejected)
