"""Agency outcomes (SPEC section 6): validated per row, applied together, idempotent.

The same rows arrive from `reminder handoff import AGENCY FILE` (CSV or JSON Lines) and
from `POST /agencies/{id}/outcomes` (a JSON array). Each row is checked on its own; a bad
row is rejected with its line, column and reason and the rest are applied in one
transaction. An outcome is keyed by (agency, agency_ref): sending it again changes nothing
(`unchanged`); reusing an agency_ref for a different outcome is rejected.

A payment dated before its case was placed is rejected (it is not the agency's
collection); other outcomes may predate placement (a date of death, a bankruptcy filing).

Effects: `payment` becomes a payment (source `agency`, payment_id derived from agency and
agency_ref, so it can never be booked twice); `dispute` (on the case's loan), `deceased`
and `bankruptcy` (on the borrower) set contact flags; `uncollectible` closes the case and
`recall` returns it (status `recalled`, no recall file needed: the agency asked);
`promise` and `wrong_contact` are recorded for people to read and change nothing else.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from reminder.bootstrap import App
from reminder.db.tables import cases, contact_flags, loans, outcomes, payments
from reminder.errors import InputError
from reminder.services.audit_records import append_on_commit
from reminder.services.import_rows import Rejection  # one rejection shape for every import

KINDS = ("payment", "promise", "dispute", "wrong_contact", "uncollectible", "deceased",
         "bankruptcy", "recall")  # fmt: skip
COLUMNS = ("case_id", "outcome", "amount", "date", "agency_ref", "note")
REQUIRED = ("case_id", "outcome", "date", "agency_ref")
FLAG_KINDS = ("dispute", "deceased", "bankruptcy")
MAX_REF = 120


@dataclass
class OutcomeReport:
    """The same summary as `reminder import`: imported, unchanged, rejected."""

    imported: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "unchanged": self.unchanged,
            "rejected": [r.as_dict() for r in self.rejected],
        }


@dataclass(frozen=True)
class Outcome:
    """A row that passed the checks."""

    line: int
    case_id: str
    outcome: str
    amount: Decimal | None
    day: date
    agency_ref: str
    note: str | None

    @property
    def key(self) -> tuple[str, str, Decimal | None, date]:
        """What makes two rows with one agency_ref the same outcome (the note may differ)."""
        return self.case_id, self.outcome, self.amount, self.day

    def same_as(self, stored: Mapping[str, Any]) -> bool:
        stored_key = (stored["case_id"], stored["outcome"], stored["amount"],
                      stored["outcome_date"])  # fmt: skip
        return stored_key == self.key


def payment_id(agency_id: str, agency_ref: str) -> str:
    """The payments-table id of an agency payment: the same outcome, the same payment."""
    return "agency-" + hashlib.sha256(f"{agency_id}\x00{agency_ref}".encode()).hexdigest()[:40]


def _clean(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    return "" if value is None else str(value).strip()


def _amount(text: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not a decimal amount") from exc
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a decimal amount")
    if amount < 0:
        raise ValueError("the amount must not be negative")
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError("at most 2 decimal places")
    return amount.quantize(Decimal("0.01"))


def check_row(line: int, raw: Mapping[str, Any], today: date) -> Outcome | list[Rejection]:
    """Well-formedness of one row (no database): the outcome, or why not."""
    if not isinstance(raw, Mapping) or "_bad" in raw:
        return [Rejection(line, None, "not a JSON object")]
    problems: list[Rejection] = []
    for name in REQUIRED:
        if not _clean(raw, name):
            problems.append(Rejection(line, name, "required"))
    kind = _clean(raw, "outcome")
    if kind and kind not in KINDS:
        problems.append(Rejection(line, "outcome", f"unknown outcome {kind!r}"))
    amount: Decimal | None = None
    if _clean(raw, "amount"):
        try:
            amount = _amount(_clean(raw, "amount"))
        except ValueError as exc:
            problems.append(Rejection(line, "amount", str(exc)))
    elif kind == "payment":
        problems.append(Rejection(line, "amount", "a payment needs an amount"))
    if kind == "payment" and amount is not None and amount == 0:
        problems.append(Rejection(line, "amount", "a payment needs an amount above 0"))
    day: date | None = None
    if _clean(raw, "date"):
        try:
            day = date.fromisoformat(_clean(raw, "date"))
        except ValueError:
            problems.append(Rejection(line, "date", "not a date YYYY-MM-DD"))
        if day is not None and day > today:
            problems.append(Rejection(line, "date", f"{day} is in the future"))
    if len(_clean(raw, "agency_ref")) > MAX_REF:
        problems.append(Rejection(line, "agency_ref", f"longer than {MAX_REF} characters"))
    if problems or day is None:
        return problems
    return Outcome(line, _clean(raw, "case_id"), kind, amount, day, _clean(raw, "agency_ref"),
                   _clean(raw, "note") or None)  # fmt: skip


def _chunks(items: list[str], size: int = 1000) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _known(
    conn: Connection, agency_id: str, rows: list[Outcome]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cases the rows name (with agency, loan, borrower) and the outcomes stored."""
    found: dict[str, Any] = {}
    for chunk in _chunks(sorted({row.case_id for row in rows})):
        query = (
            select(cases.c.case_id, cases.c.agency_id, cases.c.loan_id, cases.c.placed_on,
                   loans.c.borrower_id)
            .join(loans, loans.c.loan_id == cases.c.loan_id)
            .where(cases.c.case_id.in_(chunk))
        )  # fmt: skip
        found.update({row.case_id: row for row in conn.execute(query)})
    stored: dict[str, Any] = {}
    for chunk in _chunks(sorted({row.agency_ref for row in rows})):
        query = select(outcomes).where(
            outcomes.c.agency_id == agency_id, outcomes.c.agency_ref.in_(chunk)
        )
        stored.update({row["agency_ref"]: row for row in conn.execute(query).mappings()})
    return found, stored


def _apply(conn: Connection, agency_id: str, row: Outcome, case: Any, now: datetime) -> None:
    conn.execute(insert(outcomes).values(
        agency_id=agency_id, agency_ref=row.agency_ref, case_id=row.case_id,
        outcome=row.outcome, amount=row.amount, outcome_date=row.day, note=row.note,
        received_at=now))  # fmt: skip
    if row.outcome == "payment":
        conn.execute(insert(payments).values(
            payment_id=payment_id(agency_id, row.agency_ref), loan_id=case.loan_id,
            paid_on=row.day, amount=row.amount, source="agency"))  # fmt: skip
    elif row.outcome in FLAG_KINDS:
        conn.execute(insert(contact_flags).values(
            borrower_id=case.borrower_id,
            loan_id=case.loan_id if row.outcome == "dispute" else None,
            kind=row.outcome, source=f"agency:{agency_id}", note=row.note, created_at=now))
    elif row.outcome in ("uncollectible", "recall"):
        recalled = row.outcome == "recall"
        conn.execute(update(cases).where(cases.c.case_id == row.case_id,
                                         cases.c.status == "open").values(
            status="recalled" if recalled else "closed", closed_on=row.day,
            close_reason="agency_recall" if recalled else "uncollectible",
            recall_exported_at=now if recalled else None))  # fmt: skip
    detail = {"case_id": row.case_id, "agency_id": agency_id, "agency_ref": row.agency_ref,
              "outcome": row.outcome, "amount": row.amount, "date": row.day}  # never the note
    append_on_commit(conn, "outcome", borrower_id=case.borrower_id, loan_id=case.loan_id,
                     detail=detail, at=now)


def _ingest(app: App, agency_id: str, raw_rows: Iterable[tuple[int, Mapping[str, Any]]]
            ) -> OutcomeReport:
    now = app.clock.now()
    today = now.astimezone(app.config.run.tz).date()
    report = OutcomeReport()
    good: list[Outcome] = []
    for line, raw in raw_rows:
        checked = check_row(line, raw, today)
        if isinstance(checked, Outcome):
            good.append(checked)
        else:
            report.rejected.extend(checked)
    with app.engine.begin() as conn:
        found, stored = _known(conn, agency_id, good)
        seen: dict[str, Outcome] = {}
        for row in good:
            case = found.get(row.case_id)
            earlier = stored.get(row.agency_ref)
            twin = seen.get(row.agency_ref)
            if case is None:
                report.rejected.append(Rejection(row.line, "case_id", "unknown case"))
            elif case.agency_id != agency_id:
                report.rejected.append(
                    Rejection(row.line, "case_id", "the case is placed with another agency"))
            elif row.outcome == "payment" and row.day < case.placed_on:
                report.rejected.append(Rejection(
                    row.line, "date", f"a payment before the case was placed ({case.placed_on})"))
            elif (earlier is not None and row.same_as(earlier)) or (
                twin is not None and twin.key == row.key
            ):
                report.unchanged += 1
            elif earlier is not None or twin is not None:
                report.rejected.append(Rejection(
                    row.line, "agency_ref", "agency_ref already used for a different outcome"))
            else:
                _apply(conn, agency_id, row, case, now)
                seen[row.agency_ref] = row
                report.imported += 1
    report.rejected.sort(key=lambda r: (r.line, r.column or ""))
    return report


def ingest(app: App, agency_id: str, raw_rows: list[tuple[int, Mapping[str, Any]]]
           ) -> OutcomeReport:
    """Validate and apply outcome rows of `agency_id`; (line, raw row) pairs in."""
    try:
        return _ingest(app, agency_id, raw_rows)
    except IntegrityError:  # the same outcomes arriving at the same moment: now stored
        return _ingest(app, agency_id, raw_rows)


def read_outcome_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) pairs from a CSV (header = line 1) or JSON Lines file.

    Raises InputError when the file as a whole is unusable (missing, not UTF-8, no
    header, a required column absent): no row could be judged then.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows: list[tuple[int, dict[str, Any]]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = None
            rows.append((number, value if isinstance(value, dict) else {"_bad": line}))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise InputError(f"{path}: header lacks column(s) {', '.join(missing)}")
    reader.fieldnames = header
    return [(reader.line_num, dict(row)) for row in reader]
