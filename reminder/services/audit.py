"""The audit trail: an append-only log whose rows are chained by SHA-256.

Each row's `hash` is the SHA-256 of the canonical JSON (sorted keys, no spaces, ISO
instants in UTC, Decimal as string) of its content fields (id, at, kind, borrower_id,
loan_id, message_id, detail) and `prev_hash`, the hash of the row before it (by id). A
changed byte anywhere breaks the chain at that row, a deleted row at the next one.

Appends are serialized so the chain stays linear with concurrent writers: PostgreSQL takes
a transaction-scoped advisory lock; SQLite transactions are already exclusive (the engine
issues BEGIN IMMEDIATE). Ids are given out under that lock (last id + 1), so they are
contiguous and a gap is itself evidence of a deletion. The lock is held until commit, so
append as late in a transaction as you can: after its UPDATEs, never before row locks that
another appender may hold (that order could deadlock on PostgreSQL).

What verification cannot see: rows cut off the end of the log (nothing follows them to
break); compare `rows_checked` with a count recorded elsewhere to catch that.

Rows never hold personal data (no name, phone, email or message text): `reminder forget`
erases those elsewhere and the chain stays verifiable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from itertools import islice
from typing import Any

from sqlalchemy import Connection, func, select, text

from reminder.db.tables import audit_log, loans

KINDS = frozenset(
    {"decision", "send", "status", "reply", "placement", "outcome", "forget", "flag",
     "handoff", "promise", "contact"}
)  # fmt: skip
GENESIS = "0" * 64  # prev_hash of the first row
LOCK_KEY = 7_236_101_001  # pg_advisory_xact_lock key of the audit chain
BATCH = 5000
TAIL = "reminder.audit.tail"  # conn.info key: (transaction, last id, last hash)
SQLITE_AT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime on SQLite
# Keys that would carry personal data: refused, so that `forget` never has to touch the log.
PII_KEYS = frozenset({"name", "phone", "email", "to", "sender", "body", "subject", "address"})
COLUMNS = ("id", "at", "kind", "borrower_id", "loan_id", "message_id", "detail",
           "prev_hash", "hash")  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not accepted in audit rows")
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot put {type(value).__name__} in an audit row")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_plain)
quote = json.encoder.encode_basestring_ascii  # the C quoting json.dumps itself uses


def canonical(value: Any) -> str:
    """The one JSON text of `value` that is hashed and stored (sorted keys, ASCII, compact)."""
    return _ENCODER.encode(value)


def dump(value: str | None) -> str:
    return "null" if value is None else quote(value)


def row_hash(id_: int, at_iso: str, kind: str, borrower_id: str | None, loan_id: str | None,
             message_id: int | None, detail_text: str, prev_hash: str) -> str:
    """SHA-256 of canonical({...content, prev_hash}), spelled out by hand for speed.

    `at_iso` is the UTC instant's isoformat(); `detail_text` is canonical(detail). The
    text is exactly what `canonical` would give for the whole dict (a test holds it to that):
    `at_iso`, `kind` (one of KINDS) and `prev_hash` (hex) need no JSON escaping, and callers
    see to it that they are that (`prepare` and `verify` check the kind).
    """
    document = (
        f'{{"at":"{at_iso}","borrower_id":{dump(borrower_id)},"detail":{detail_text},'
        f'"id":{id_},"kind":"{kind}","loan_id":{dump(loan_id)},'
        f'"message_id":{"null" if message_id is None else message_id},'
        f'"prev_hash":"{prev_hash}"}}'
    )
    return hashlib.sha256(document.encode()).hexdigest()


@lru_cache(maxsize=4096)
def _instant_forms(at: datetime) -> tuple[str, datetime, str]:
    """(UTC isoformat, naive UTC, SQLite storage text) of an aware instant; runs share one."""
    if at.tzinfo is None:
        raise ValueError("audit instants must be timezone-aware")
    utc = at.astimezone(UTC)
    naive = utc.replace(tzinfo=None)
    return utc.isoformat(), naive, naive.strftime(SQLITE_AT)


def _check_detail(detail: Mapping[str, Any] | None) -> str:
    detail = dict(detail or {})
    leaked = PII_KEYS.intersection(detail)
    if leaked:
        raise ValueError(f"audit detail may not hold personal data: {sorted(leaked)}")
    return canonical(detail)


def _lock_and_tail(conn: Connection) -> tuple[int, str]:
    """Serialize appenders, then read the last row's id and hash (or the genesis).

    Within one transaction (and savepoint) the lock is held and the tail is ours, so it is
    remembered on the connection: a loop of single appends costs one INSERT each.
    """
    key = (conn.get_transaction(), conn.get_nested_transaction())
    cached = conn.info.get(TAIL)
    if cached is not None and cached[0] == key and key[0] is not None and key[0].is_active:
        return cached[1], cached[2]
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(LOCK_KEY)))
    last = conn.execute(
        select(audit_log.c.id, audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
    ).first()
    return (0, GENESIS) if last is None else (int(last.id), str(last.hash))


def _remember_tail(conn: Connection, last_id: int, last_hash: str) -> None:
    conn.info[TAIL] = ((conn.get_transaction(), conn.get_nested_transaction()), last_id, last_hash)


def _insert(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Bulk insert of finished rows: COPY on PostgreSQL, executemany on SQLite."""
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        statement = f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN"
        with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in COLUMNS)
    conn.exec_driver_sql(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({marks})", rows)


# (at, kind, borrower_id, loan_id, message_id, canonical detail): an event ready to chain
Prepared = tuple[datetime, str, str | None, str | None, int | None, str]


def prepare(event: Mapping[str, Any]) -> Prepared:
    """Check an event (kind, id types, no personal data) where it is made, not at commit."""
    kind = event["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}")
    borrower_id, loan_id = event.get("borrower_id"), event.get("loan_id")
    if not isinstance(borrower_id, str | None) or not isinstance(loan_id, str | None):
        raise TypeError("borrower_id and loan_id are strings (or None)")
    message_id = event.get("message_id")
    message_id = None if message_id is None else int(message_id)
    _instant_forms(event["at"])  # aware, or ValueError now
    detail = _check_detail(event.get("detail"))
    return event["at"], kind, borrower_id, loan_id, message_id, detail


def append_prepared(conn: Connection, events: Iterable[Prepared]) -> int:
    """Lock, then hash-chain and write the events in batches; returns how many."""
    source = iter(events)
    batch = list(islice(source, BATCH))
    if not batch:
        return 0  # nothing to write: no lock taken
    last_id, prev = _lock_and_tail(conn)
    stored_at = 2 if conn.dialect.name == "sqlite" else 1  # text on SQLite, naive UTC on PG
    added = 0
    while batch:
        finished = []
        for at, kind, borrower_id, loan_id, message_id, detail in batch:
            forms = _instant_forms(at)
            last_id += 1
            digest = row_hash(last_id, forms[0], kind, borrower_id, loan_id, message_id,
                              detail, prev)  # fmt: skip
            finished.append((last_id, forms[stored_at], kind, borrower_id, loan_id,
                             message_id, detail, prev, digest))  # fmt: skip
            prev = digest
        _insert(conn, finished)
        added += len(finished)
        _remember_tail(conn, last_id, prev)
        batch = list(islice(source, BATCH))
    return added


def append_many(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append events (keys: kind, at, borrower_id, loan_id, message_id, detail) in order.

    Rows are chained in Python and written in batches, so a whole run's decisions cost
    one lock and a few round trips. Call inside the transaction that made the change, so
    the log and the change commit (or vanish) together. Returns how many rows were added.
    """
    return append_prepared(conn, map(prepare, rows))


def append(conn: Connection, kind: str, *, borrower_id: str | None = None,
           loan_id: str | None = None, message_id: int | None = None,
           detail: Mapping[str, Any] | None = None, at: datetime) -> None:
    """Append one event (see `append_many`); ids only, never personal data, in `detail`."""
    append_many(conn, [{"kind": kind, "borrower_id": borrower_id, "loan_id": loan_id,
                        "message_id": message_id, "detail": detail, "at": at}])  # fmt: skip


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: ok, or the first row where the chain breaks and why."""

    ok: bool
    rows_checked: int
    first_broken_id: int | None = None
    problem: str | None = None


def _raw_rows(conn: Connection) -> Iterator[tuple[Any, ...]]:
    """Every row in id order, `detail` (and on SQLite `at`) as the stored text."""
    at = "CAST(at AS TEXT)" if conn.dialect.name == "sqlite" else "at"
    query = text(
        f"SELECT id, {at}, kind, borrower_id, loan_id, message_id, CAST(detail AS TEXT), "
        "prev_hash, hash FROM audit_log WHERE id > :after ORDER BY id LIMIT :n"
    )
    after = -1
    while True:
        batch = conn.execute(query, {"after": after, "n": BATCH}).all()
        if not batch:
            return
        yield from (tuple(row) for row in batch)
        after = batch[-1][0]


@lru_cache(maxsize=4096)
def stored_iso(raw: str | datetime) -> str:
    """The UTC isoformat of a stored `at`: naive UTC on PostgreSQL, exact text on SQLite."""
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=UTC).isoformat()
    parsed = datetime.strptime(raw, SQLITE_AT)  # raises on any other spelling
    if parsed.strftime(SQLITE_AT) != raw:
        raise ValueError(f"at {raw!r} is not in storage form")
    return parsed.replace(tzinfo=UTC).isoformat()


@lru_cache(maxsize=8192)
def _is_canonical(detail: str) -> bool:
    return canonical(json.loads(detail)) == detail


def _problem(row: tuple[Any, ...], expected_id: int, prev: str) -> str | None:
    id_, raw_at, kind, borrower_id, loan_id, message_id, detail, prev_hash, stored = row
    if id_ != expected_id:
        return f"rows {expected_id}..{id_ - 1} are missing"
    if prev_hash != prev:
        return "prev_hash does not match the previous row's hash"
    try:
        at = stored_iso(raw_at)
        if detail is None or not _is_canonical(detail):
            return "detail is not the canonical JSON it was written as"
    except (TypeError, ValueError) as exc:
        return f"unreadable value: {exc}"
    if not isinstance(message_id, int | None):
        return "message_id is not an integer"
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if row_hash(id_, at, kind, borrower_id, loan_id, message_id, detail, prev) != stored:
        return "hash does not match the row's content"
    return None


def verify(conn: Connection) -> VerifyResult:
    """Walk the whole log in id order (streamed in batches); stop at the first broken row."""
    prev, checked, expected_id = GENESIS, 0, None
    for row in _raw_rows(conn):
        if expected_id is None:
            expected_id = 1  # ids start at 1; a missing head is a deletion too
        problem = _problem(row, expected_id, prev)
        if problem:
            return VerifyResult(False, checked, int(row[0]), problem)
        checked += 1
        prev, expected_id = row[8], row[0] + 1
    return VerifyResult(True, checked)


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    id_, raw_at, kind, borrower_id, loan_id, message_id, detail = row[:7]
    at = datetime.fromisoformat(stored_iso(raw_at))
    return {"id": id_, "at": at, "kind": kind, "borrower_id": borrower_id,
            "loan_id": loan_id, "message_id": message_id, "detail": json.loads(detail or "{}")}


def export_loan(conn: Connection, loan_id: str) -> list[dict[str, Any]]:
    """The loan's history in order: its own rows and its borrower's borrower-wide rows."""
    borrower = conn.execute(
        select(loans.c.borrower_id).where(loans.c.loan_id == loan_id)
    ).scalar_one_or_none()
    at = "CAST(at AS TEXT)" if conn.dialect.name == "sqlite" else "at"
    query = text(
        f"SELECT id, {at}, kind, borrower_id, loan_id, message_id, CAST(detail AS TEXT) "
        "FROM audit_log WHERE loan_id = :loan "
        "OR (loan_id IS NULL AND borrower_id = :borrower) ORDER BY id"
    )
    return [_event(tuple(row)) for row in conn.execute(
        query, {"loan": loan_id, "borrower": borrower})]  # fmt: skip
