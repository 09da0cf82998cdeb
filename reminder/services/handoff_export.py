"""`reminder handoff export`: placement and recall files, each exactly once, with a manifest.

A case is in exactly one placement file, even when an export crashes half-way and runs
again. Export works in three steps per file:

1. *reserve* (one transaction): the agency's open cases not yet in any file get a file
   name, deterministic from the batch (agency, kind, date, SHA-256 of the sorted case
   ids), so two batches never share a name and files never overwrite each other;
2. *deliver*: the CSV, then its JSON manifest, through the agency's transport (each lands
   under its final name only when whole);
3. *confirm* (one transaction): the batch's cases are marked exported, and each gets a
   `handoff` audit row on its loan (agency, file, case count, checksum, transport).

A crash or a failed transfer between 1 and 3 leaves the batch reserved but not exported;
the next export delivers the same name with the same bytes (rows are computed as of each
case's placement date, so they do not drift) before reserving anything new. The agency
may thus receive one file twice, never a case in two different files; the audit trail
holds the confirmed delivery (a delivery a crash kept from step 3 shows as its repeat).

Recall files work the same way for recalled cases whose placement was exported.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, select, update

from reminder.bootstrap import AGENCY_TRANSPORTS, App
from reminder.config import AgencyConfig, Config
from reminder.db.tables import borrowers, cases, loans
from reminder.errors import ConfigError, TransportError
from reminder.ports import AgencyTransport
from reminder.services.audit_records import record_file_sent
from reminder.services.itemization import itemize_loans

log = logging.getLogger(__name__)

PLACEMENT_COLUMNS = (
    "case_id", "loan_id", "creditor_name", "lender_reference", "borrower_id", "borrower_name",
    "phone", "email", "timezone", "locale", "currency", "balance", "dpd", "oldest_due_date",
    "last_payment_date", "last_payment_amount", "itemization_date", "itemization_balance",
    "interest_since", "fees_since", "payments_since", "credits_since", "current_balance",
    "placed_on",
)  # fmt: skip
RECALL_COLUMNS = (
    "case_id", "loan_id", "lender_reference", "currency", "placed_on", "placed_balance",
    "recalled_on", "reason", "placement_file",
)  # fmt: skip
KINDS = {  # kind -> (file-name column, sent-at column)
    "placements": (cases.c.export_file, cases.c.exported_at),
    "recalls": (cases.c.recall_file, cases.c.recall_exported_at),
}


@dataclass(frozen=True)
class SentFile:
    """One file delivered, as the manifest describes it."""

    agency: str
    kind: str
    file_name: str
    row_count: int
    total_balance: str
    sha256: str
    location: str


@dataclass
class ExportReport:
    """What an export did: the files sent, and per agency what failed (others went on)."""

    files: list[SentFile] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"files": [asdict(f) for f in self.files], "failed": list(self.failed)}


def batch_name(agency_id: str, kind: str, day: date, case_ids: list[str]) -> str:
    """The file name for a batch: unique per set of cases, stable for the same set."""
    digest = hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()[:12]
    return f"{agency_id}_{kind}_{day:%Y%m%d}_{digest}.csv"


def _reserve(conn: Connection, agency_id: str, kind: str, day: date) -> None:
    """Give a file name to the agency's cases that are due in a `kind` file and have none."""
    name_col, _ = KINDS[kind]
    if kind == "placements":
        due = cases.c.status == "open"
    else:  # the agency has the case (its placement was sent) and was not told yet
        due = and_(
            cases.c.status == "recalled",
            cases.c.exported_at.is_not(None),
            cases.c.recall_exported_at.is_(None),
        )
    ids = list(
        conn.execute(
            select(cases.c.case_id).where(cases.c.agency_id == agency_id, name_col.is_(None), due)
        ).scalars()
    )
    if not ids:
        return
    name = batch_name(agency_id, kind, day, ids)
    for start in range(0, len(ids), 1000):
        conn.execute(
            update(cases)
            .where(cases.c.case_id.in_(ids[start : start + 1000]), name_col.is_(None))
            .values({name_col.name: name})
        )


def _pending(conn: Connection, agency_id: str, kind: str) -> list[str]:
    name_col, sent_col = KINDS[kind]
    query = (
        select(name_col)
        .where(cases.c.agency_id == agency_id, name_col.is_not(None), sent_col.is_(None))
        .distinct()
        .order_by(name_col)
    )
    return list(conn.execute(query).scalars())


def _money(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return _money(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def placement_rows(conn: Connection, config: Config, file_name: str) -> list[dict[str, Any]]:
    """The rows of a placement file, as of each case's placement date (so they never drift)."""
    query = (
        select(cases, borrowers.c.borrower_id, borrowers.c.name, borrowers.c.phone,
               borrowers.c.email, borrowers.c.timezone, borrowers.c.locale)
        .join(loans, loans.c.loan_id == cases.c.loan_id)
        .join(borrowers, borrowers.c.borrower_id == loans.c.borrower_id)
        .where(cases.c.export_file == file_name)
        .order_by(cases.c.case_id)
    )  # fmt: skip
    found = conn.execute(query).mappings().all()
    items = itemize_loans(conn, [(row["loan_id"], row["placed_on"]) for row in found])
    rows = []
    for row in found:
        item = items[row["loan_id"]]
        rows.append({
            "case_id": row["case_id"], "loan_id": row["loan_id"],
            "creditor_name": config.lender.name, "lender_reference": row["loan_id"],
            "borrower_id": row["borrower_id"], "borrower_name": row["name"],
            "phone": row["phone"], "email": row["email"],
            "timezone": row["timezone"] or config.run.timezone,
            "locale": row["locale"] or config.run.default_locale,
            "currency": row["currency"], "balance": row["placed_balance"],
            "dpd": row["dpd_at_placement"],
            "oldest_due_date": row["placed_on"] - timedelta(days=row["dpd_at_placement"]),
            "last_payment_date": item.last_payment_date,
            "last_payment_amount": item.last_payment_amount,
            "itemization_date": item.itemization_date,
            "itemization_balance": item.balance_then, "interest_since": item.interest_since,
            "fees_since": item.fees_since, "payments_since": item.payments_since,
            "credits_since": item.credits_since, "current_balance": item.current_balance,
            "placed_on": row["placed_on"],
        })  # fmt: skip
    return rows


def recall_rows(conn: Connection, file_name: str) -> list[dict[str, Any]]:
    query = select(cases).where(cases.c.recall_file == file_name).order_by(cases.c.case_id)
    return [
        {
            "case_id": row["case_id"], "loan_id": row["loan_id"],
            "lender_reference": row["loan_id"], "currency": row["currency"],
            "placed_on": row["placed_on"], "placed_balance": row["placed_balance"],
            "recalled_on": row["closed_on"], "reason": row["close_reason"],
            "placement_file": row["export_file"],
        }  # fmt: skip
        for row in conn.execute(query).mappings()
    ]


def render_csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(row[column]) for column in columns])
    return buffer.getvalue().encode("utf-8")


def manifest(agency_id: str, kind: str, file_name: str, rows: list[dict[str, Any]],
             content: bytes, created_at: datetime) -> dict[str, Any]:
    """The JSON document that travels next to each CSV: what it holds and its checksum."""
    amount = "balance" if kind == "placements" else "placed_balance"
    by_currency: dict[str, Decimal] = {}
    for row in rows:
        total = by_currency.get(row["currency"], Decimal("0.00"))
        by_currency[row["currency"]] = total + row[amount]
    return {
        "agency": agency_id, "kind": kind, "file_name": file_name, "row_count": len(rows),
        "total_balance": _money(sum(by_currency.values(), Decimal("0.00"))),
        "total_balance_by_currency": {c: _money(v) for c, v in sorted(by_currency.items())},
        "sha256": hashlib.sha256(content).hexdigest(),
        "created_at": created_at.isoformat(),
    }  # fmt: skip


def _send_batch(app: App, agency: AgencyConfig, transport: AgencyTransport, kind: str,
                file_name: str) -> SentFile:
    with app.engine.connect() as conn:
        rows = (placement_rows(conn, app.config, file_name) if kind == "placements"
                else recall_rows(conn, file_name))
    columns = PLACEMENT_COLUMNS if kind == "placements" else RECALL_COLUMNS
    content = render_csv(columns, rows)
    now = app.clock.now()
    document = manifest(agency.id, kind, file_name, rows, content, now)
    result = transport.deliver(file_name, content)
    transport.deliver(file_name.removesuffix(".csv") + ".manifest.json",
                      (json.dumps(document, indent=2) + "\n").encode())
    name_col, sent_col = KINDS[kind]
    with app.engine.begin() as conn:
        confirmed = conn.execute(
            update(cases).where(name_col == file_name, sent_col.is_(None))
            .values({sent_col.name: now}).returning(cases.c.case_id, cases.c.loan_id)
        ).all()  # fmt: skip
        record_file_sent(conn, [(case_id, loan_id) for case_id, loan_id in confirmed], {
            "action": "sent", "agency_id": agency.id, "file": kind, "file_name": file_name,
            "cases": len(rows), "sha256": document["sha256"], "transport": agency.transport,
            "reference": result.reference,
        }, now)  # fmt: skip
    log.info("handoff %s: %s sent (%d cases)", agency.id, file_name, len(rows))
    return SentFile(agency.id, kind, file_name, len(rows), document["total_balance"],
                    document["sha256"], result.location)  # fmt: skip


def build_transports(config: Config) -> dict[str, AgencyTransport]:
    """Every agency's transport, built now: a missing credential fails before any file."""
    built: dict[str, AgencyTransport] = {}
    for agency in config.agencies:
        factory = AGENCY_TRANSPORTS.get(agency.transport)
        if factory is None:
            raise ConfigError(f"agencies.{agency.id}.transport", "unknown transport")
        built[agency.id] = factory(config, agency)
    return built


def export(app: App, transports: Mapping[str, AgencyTransport] | None = None) -> ExportReport:
    """Send every agency's pending placement and recall files; one agency's failure is
    recorded and does not stop the others."""
    transports = transports if transports is not None else build_transports(app.config)
    today = app.clock.now().astimezone(app.config.run.tz).date()
    report = ExportReport()
    for agency in app.config.agencies:
        for kind in KINDS:
            with app.engine.begin() as conn:
                _reserve(conn, agency.id, kind, today)
                names = _pending(conn, agency.id, kind)
            for name in names:
                try:
                    report.files.append(
                        _send_batch(app, agency, transports[agency.id], kind, name)
                    )
                except TransportError as exc:
                    log.warning("handoff %s: %s not sent: %s", agency.id, name, exc)
                    report.failed.append({"agency": agency.id, "file": name, "error": str(exc)})
                    break
    return report
