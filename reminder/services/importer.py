"""`reminder import KIND FILE`: stream a CSV or JSON Lines file into the portfolio tables.

Files run to millions of rows, so the file is read as a stream and written in chunks of a
few thousand rows, each chunk in its own transaction: a crash loses at most the chunk in
flight, and re-running the import completes it because an import is an idempotent upsert.
Per chunk, rows are validated in Python (`import_rows`), one query checks the references,
one query fetches the stored rows for the chunk's keys (to tell new, changed and unchanged
apart) and one statement upserts what is new or changed (an executemany on SQLite, a COPY
and one INSERT ... SELECT on PostgreSQL). Values reach the driver as plain tuples in
storage form (integer cents, ISO date strings): no ORM objects, no per-row type processing.

A column absent from the file (or a key absent from a JSON record) keeps its stored value
on update and takes its default on insert; a column present but empty sets the default.
A key seen twice is applied twice, in file order: the later row wins.

A stored borrower whose phone, email or consent a chunk changes gets a `contact` audit row
in the chunk's transaction, naming the fields (never their values). It is found by comparing
the written rows with the stored rows the chunk already fetched: no query of its own.
"""

from __future__ import annotations

import csv
import gc
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Date, Engine, inspect

from reminder.db import tables
from reminder.errors import ConfigError, InputError
from reminder.services import audit
from reminder.services.import_rows import (
    Column,
    Kind,
    Mask,
    Rejection,
    kinds,
    mask_for,
    validate_chunk,
)

FORMATS = ("csv", "jsonl")
CHUNK_ROWS = 10_000
MAX_REJECTIONS = 100_000  # kept in detail; beyond that only counted (bounded memory)
_IN_BATCH = 10_000  # parameters per IN (...) list, well under SQLite's and libpq's limits

_ANALYZE_AFTER = 10_000  # imported rows after which PostgreSQL statistics are refreshed
# borrower fields whose change by an import is audited (contact addresses and consent)
CONTACT_FIELDS = ("phone", "email", "consent_sms", "consent_email", "consent_voice")
_first = itemgetter(0)
Progress = Callable[[int, int], None]  # (bytes read, file size)
Masks = list[Mask | None] | None  # per row; None when every row carries every field


@dataclass(slots=True)
class _Raw:
    """A chunk as read: raw columns by field name, the line of each row, reading problems."""

    columns: dict[str, Column]
    lines: Sequence[int]
    masks: Masks  # which fields each row carried (JSON Lines, or a CSV header lacking some)
    rejected: list[list[Rejection]]


@dataclass
class ImportReport:
    """What one import did: counts per outcome and every rejected field with its line."""

    kind: str
    file: str
    format: str
    imported: int = 0  # rows inserted or changed
    unchanged: int = 0  # rows equal to what was stored
    rejected: list[Rejection] = field(default_factory=list)  # sorted by line, capped
    rejected_rows: int = 0  # rows with at least one rejection
    rejected_total: int = 0  # rejections, including those beyond the cap
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.imported + self.unchanged + self.rejected_rows

    def reject(self, problems: list[Rejection]) -> None:
        self.rejected_rows += 1
        self.rejected_total += len(problems)
        room = MAX_REJECTIONS - len(self.rejected)
        if room > 0:
            self.rejected.extend(problems[:room])

    def as_json(self) -> dict[str, Any]:
        """The `--json` document of SPEC section 2 (plus `file`, `kind`)."""
        document: dict[str, Any] = {
            "imported": self.imported,
            "unchanged": self.unchanged,
            "rejected": [rejection.as_dict() for rejection in self.rejected],
            "file": self.file,
            "kind": self.kind,
        }
        if self.rejected_total > len(self.rejected):
            document["rejected_total"] = self.rejected_total
        return document


def import_file(
    engine: Engine,
    kind: str,
    path: str | Path,
    *,
    fmt: str | None = None,
    on_progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
    default_region: str = "US",
) -> ImportReport:
    """Upsert the rows of `path` into the `kind` table; bad rows are reported, not fatal.

    Raises:
        InputError: unknown kind or format, unreadable or non-UTF-8 file, malformed CSV,
            a header lacking a required column.
        ConfigError: the database has not been initialised.
    """
    spec = kinds(default_region).get(kind)
    if spec is None:
        raise InputError(f"unknown KIND {kind!r}: use borrowers, loans, installments or payments")
    path, started = Path(path), time.perf_counter()
    fmt, total = _format(path, fmt), _size(path)
    report = ImportReport(kind, str(path), fmt)
    _check_schema(engine, spec)
    store = _Store(engine, spec)
    with _without_cyclic_gc():
        for chunk in _checked_chunks(path, spec, fmt, chunk_rows, report.warnings):
            for problems in chunk.rejected:
                report.reject(problems)
            if chunk.rows:
                store.write(chunk.rows, chunk.lines, chunk.masks, report)
            if on_progress:
                on_progress(chunk.position, total)
    store.analyze(report)
    if on_progress:
        on_progress(total, total)
    report.rejected.sort(key=lambda rejection: rejection.line)
    report.seconds = time.perf_counter() - started
    return report


@dataclass(slots=True)
class _Checked:
    """A validated chunk, ready to write: good rows, their lines and masks, bad rows."""

    rows: list[tuple[Any, ...]]
    lines: Sequence[int]
    masks: Masks
    rejected: list[list[Rejection]]
    position: int  # bytes of the file read so far


def _checked_chunks(
    path: Path, kind: Kind, fmt: str, chunk_rows: int, warnings: list[str]
) -> Iterator[_Checked]:
    """Read and validate the file a chunk at a time (the file is never read whole)."""
    with _open(path) as handle:
        read = _csv_chunks if fmt == "csv" else _jsonl_chunks
        for raw in read(handle, kind, path, chunk_rows, warnings):
            checked = validate_chunk(kind, raw.columns, raw.lines)
            masks = raw.masks
            if masks is not None and checked.kept is not None:
                masks = [masks[index] for index in checked.kept]
            rejected = raw.rejected + checked.rejected
            position = handle.buffer.tell()  # type: ignore[attr-defined]
            yield _Checked(checked.rows, checked.lines, masks, rejected, position)


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector: millions of short-lived row tuples (which form no cycles)
    would otherwise trigger repeated full-heap scans, a fifth of the import's time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_schema(engine: Engine, kind: Kind) -> None:
    """A database never initialised is a setup problem to name, not a driver traceback."""
    if not inspect(engine).has_table(kind.name):
        url = engine.url.render_as_string(hide_password=True)
        raise ConfigError("database.url", f"{url} has no {kind.name} table: run `reminder init`")


def _format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format {fmt!r} (use csv or jsonl)")
    return fmt


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc


def _open(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc


# -- reading ------------------------------------------------------------------------------


def _csv_chunks(
    handle: IO[str], kind: Kind, path: Path, chunk_rows: int, warnings: list[str]
) -> Iterator[_Raw]:
    """Chunks of a CSV file, read `chunk_rows` records at a time at C speed.

    A row's line is the physical line where its record starts. When every record of a
    chunk is one full line, the lines are a plain range; otherwise (blank lines, quoted
    line breaks, short or long rows) the chunk takes the row-by-row path.
    """
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header row")
        names = [name.strip().lower() for name in header]
        _check_header(kind, path, names, warnings)
        index = {name: i for i, name in enumerate(names) if name in kind.columns}
        width, blank = len(names), [""] * len(names)
        mask = mask_for(kind, frozenset(names))
        while True:
            start = reader.line_num + 1
            batch = list(islice(reader, chunk_rows))
            if not batch:
                return
            end = reader.line_num
            one_line_each = end - start + 1 == len(batch) and set(map(len, batch)) == {width}
            if one_line_each and blank not in batch:
                chunk = _csv_chunk(batch, index, range(start, end + 1), [])
            else:
                chunk = _odd_csv_chunk(batch, index, width, start)
            if mask is not None:  # the header lacks optional columns: updates keep them
                chunk.masks = [mask] * len(chunk.lines)
            yield chunk
    except csv.Error as exc:
        raise InputError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}, line {reader.line_num + 1}: not UTF-8 text") from exc


def _line_breaks(row: list[str]) -> int:
    """Line breaks inside a record's quoted fields (as the csv reader counts lines)."""
    return sum(v.count("\n") + v.count("\r") - v.count("\r\n") for v in row)


def _odd_csv_chunk(batch: list[list[str]], index: dict[str, int], width: int, line: int) -> _Raw:
    """Row by row: skip blank lines, pad short rows, reject rows with extra values."""
    rows: list[list[str]] = []
    lines: list[int] = []
    rejected: list[list[Rejection]] = []
    for row in batch:
        if not any(value.strip() for value in row):
            pass  # a blank line
        elif len(row) > width and any(value.strip() for value in row[width:]):
            reason = f"{len(row)} fields, the header has {width}"
            rejected.append([Rejection(line, None, reason)])
        else:
            rows.append((row + [""] * width)[:width])
            lines.append(line)
        line += 1 + _line_breaks(row)
    return _csv_chunk(rows, index, lines, rejected)


def _csv_chunk(
    rows: list[list[str]], index: dict[str, int], lines: Sequence[int], rejected: list
) -> _Raw:
    columns = list(zip(*rows, strict=True))  # rows of the header's width: one tuple per column
    if not columns:
        return _Raw({}, lines, None, rejected)
    return _Raw({name: columns[i] for name, i in index.items()}, lines, None, rejected)


def _check_header(kind: Kind, path: Path, names: list[str], warnings: list[str]) -> None:
    doubled = sorted({name for name in names if name and names.count(name) > 1})
    if doubled:
        raise InputError(f"{path}: header names {', '.join(doubled)} more than once")
    missing = [name for name in kind.required if name not in names]
    if missing:
        raise InputError(f"{path}: header lacks the required column(s) {', '.join(missing)}")
    unknown = [name or "(unnamed)" for name in names if name not in kind.columns]
    if unknown:
        warnings.append(f"{path}: ignored unknown column(s) {', '.join(unknown)}")


def _jsonl_chunks(
    handle: IO[str], kind: Kind, path: Path, chunk_rows: int, warnings: list[str]
) -> Iterator[_Raw]:
    """Chunks of a JSON Lines file, one object per line (line 1 = the first record)."""
    masks: dict[frozenset[str], Mask | None] = {}
    unknown: set[str] = set()
    records: list[dict[str, str | None]] = []
    lines: list[int] = []
    rejected: list[list[Rejection]] = []
    line = 0
    try:
        for line, text in enumerate(handle, 1):  # noqa: B007 (line is used after the loop)
            if not text.strip():
                continue
            record, problems = _json_record(text, line)
            if problems:
                rejected.append(problems)
            else:
                keys = frozenset(record)
                if keys not in masks:
                    masks[keys] = mask_for(kind, keys)
                    unknown.update(keys.difference(kind.columns))
                records.append(record)
                lines.append(line)
            if len(lines) + len(rejected) >= chunk_rows:
                yield _jsonl_chunk(kind, records, lines, masks, rejected)
                records, lines, rejected = [], [], []
        if lines or rejected:
            yield _jsonl_chunk(kind, records, lines, masks, rejected)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}, line {line + 1}: not UTF-8 text") from exc
    if unknown:
        warnings.append(f"{path}: ignored unknown field(s) {', '.join(sorted(unknown))}")


def _jsonl_chunk(
    kind: Kind, records: list[dict], lines: list[int], masks: dict, rejected: list
) -> _Raw:
    columns = {name: [record.get(name) for record in records] for name in kind.columns}
    row_masks = [masks[frozenset(record)] for record in records]
    if all(mask is None for mask in row_masks):
        row_masks = None
    return _Raw(columns, lines, row_masks, rejected)  # type: ignore[arg-type]


def _json_record(text: str, line: int) -> tuple[dict[str, str | None], list[Rejection]]:
    """One record with its scalars as the strings a CSV would hold (numbers keep digits)."""
    try:
        document = json.loads(text, parse_float=str, parse_int=str)
    except json.JSONDecodeError as exc:
        return {}, [Rejection(line, None, f"invalid JSON: {exc.msg}")]
    if not isinstance(document, dict):
        return {}, [Rejection(line, None, "not a JSON object")]
    record: dict[str, str | None] = {}
    problems: list[Rejection] = []
    for key, value in document.items():
        name = key.strip().lower()
        if value is None or isinstance(value, str):
            record[name] = value.strip() if value else None
        elif isinstance(value, bool):
            record[name] = "true" if value else "false"
        else:
            problems.append(Rejection(line, name, "must be a string, number, boolean or null"))
    return record, problems


# -- writing ------------------------------------------------------------------------------


class _Store:
    """The SQL of one kind on one engine, built once; writes one chunk per transaction.

    SQLite gets one executemany of `INSERT ... ON CONFLICT DO UPDATE`; PostgreSQL gets a
    COPY into a temporary table and one such upsert from it (per-row statements would
    cost a server round of parse, bind and execute each).
    """

    def __init__(self, engine: Engine, kind: Kind) -> None:
        self.engine, self.kind = engine, kind
        self.key = itemgetter(*range(kind.key_len))
        self.postgres = engine.dialect.name == "postgresql"
        q = engine.dialect.identifier_preparer.quote
        table = tables.metadata.tables[kind.name]
        selected = ", ".join(
            f"to_char({q(c)}, 'YYYY-MM-DD')"  # PostgreSQL returns dates; rows hold ISO text
            if self.postgres and isinstance(table.c[c].type, Date)
            else q(c)
            for c in kind.columns
        )
        self.stored_sql = f"SELECT {selected} FROM {q(kind.name)} WHERE {q(kind.columns[0])} {{}}"
        self.ref_sql, self.ref_index = "", -1
        if kind.ref:
            name, ref_table = kind.ref
            self.ref_index = kind.columns.index(name)
            lock = " FOR KEY SHARE" if self.postgres else ""  # it cannot vanish before commit
            self.ref_sql = f"SELECT {q(name)} FROM {q(ref_table)} WHERE {q(name)} {{}}{lock}"
        self.stamp = None
        if kind.stamped:
            self.stamp = table.c.updated_at.type.bind_processor(engine.dialect)
        self.quote, self.table = q, q(kind.name)
        self.columns = [*kind.columns, *(["updated_at"] if kind.stamped else [])]
        self.temp = q(f"import_{kind.name}")
        self.temp_sql = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.temp} "
            f"(LIKE {self.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        self.copy_sql = f"COPY {self.temp} ({', '.join(map(q, self.columns))}) FROM STDIN"
        self.watched = [(kind.columns.index(name), name) for name in CONTACT_FIELDS
                        if kind.name == "borrowers"]  # fmt: skip

    @cache  # noqa: B019 (one store per import: the cache dies with it)
    def upsert(self, mask: Mask | None) -> str:
        """`INSERT ... ON CONFLICT DO UPDATE` setting only the fields the rows carried.

        Fields a file lacks are left to whatever the row holds at commit time, so that
        a concurrent change to them is never overwritten by the value read for the merge.
        """
        q, key_len = self.quote, self.kind.key_len
        carried = [
            c
            for i, c in enumerate(self.columns)
            if i >= key_len and (mask is None or i >= len(mask) or mask[i])
        ]
        columns = ", ".join(map(q, self.columns))
        keys = ", ".join(map(q, self.columns[:key_len]))
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in carried)
        source = (
            f"SELECT {columns} FROM {self.temp}"
            if self.postgres
            else f"VALUES ({', '.join('?' * len(self.columns))})"
        )
        return (
            f"INSERT INTO {self.table} ({columns}) {source} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
        )

    def write(
        self, rows: list[tuple[Any, ...]], lines: Sequence[int], masks: Masks, report: ImportReport
    ) -> None:
        """Check references, classify against the stored rows, upsert: one transaction."""
        with self.engine.begin() as conn:
            cursor = conn.connection.cursor()
            try:
                if self.postgres:  # a table filled since its last ANALYZE looks tiny to the
                    cursor.execute("SET LOCAL enable_seqscan = off")  # planner: keep the index
                if self.kind.ref:
                    rows, lines, masks = self._known_references(cursor, rows, lines, masks, report)
                # one IN list on the first key column (installments: every seq of the loans)
                stored = self._select_in(cursor, self.stored_sql, set(map(_first, rows)))
                groups = self._classify(rows, masks, stored, report)
                for mask, changed in groups.items():
                    self._upsert(cursor, mask, changed)
            finally:
                cursor.close()
            if self.watched and stored and groups:  # last: the audit lock is held to commit
                audit.append_prepared(conn, self._contact_changes(stored, groups))

    def _contact_changes(
        self, stored: list[tuple[Any, ...]], groups: dict[Mask | None, list[tuple[Any, ...]]]
    ) -> Iterator[audit.Prepared]:
        """A `contact` event per stored borrower whose watched fields the chunk changed.

        Only rows that differ from the stored ones are in `groups` (usually few on a
        re-import), so this is one dict lookup per written row.
        """
        before = {values[0]: values for values in stored}
        at = datetime.now(UTC)
        details: dict[tuple[str, ...], audit.Prepared] = {}  # checked once per field set
        for group in groups.values():
            for values in group:
                old = before.get(values[0])
                if old is None:
                    continue  # a new borrower: nothing changed
                fields = tuple(name for i, name in self.watched if values[i] != old[i])
                if not fields:
                    continue
                if fields not in details:
                    details[fields] = audit.prepare({
                        "kind": "contact", "at": at,
                        "detail": {"source": "import", "fields": list(fields)},
                    })  # fmt: skip
                yield at, "contact", values[0], None, None, details[fields][5]

    def analyze(self, report: ImportReport) -> None:
        """After a large PostgreSQL import, refresh the planner's statistics of the table."""
        if self.postgres and report.imported >= _ANALYZE_AFTER:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"ANALYZE {self.table}")

    def _upsert(self, cursor: Any, mask: Mask | None, rows: list[tuple[Any, ...]]) -> None:
        if not self.postgres:
            cursor.executemany(self.upsert(mask), rows)
            return
        cursor.execute(self.temp_sql)
        with cursor.copy(self.copy_sql) as copy:
            for values in rows:
                copy.write_row(values)
        cursor.execute(self.upsert(mask))
        cursor.execute(f"DELETE FROM {self.temp}")

    def _select_in(self, cursor: Any, sql: str, wanted: set[Any]) -> list[tuple[Any, ...]]:
        """Run `sql` for the `wanted` keys: `= ANY(array)` on PostgreSQL (one parameter),
        an `IN (?, ...)` list on SQLite in batches under its parameter limit."""
        values = list(wanted)
        if self.postgres:
            cursor.execute(sql.format("= ANY(%s)"), [values])
            return cursor.fetchall()  # type: ignore[no-any-return]
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(values), _IN_BATCH):
            batch = values[start : start + _IN_BATCH]
            cursor.execute(sql.format(f"IN ({', '.join('?' * len(batch))})"), batch)
            found.extend(cursor.fetchall())
        return found

    def _known_references(
        self,
        cursor: Any,
        rows: list[tuple[Any, ...]],
        lines: Sequence[int],
        masks: Masks,
        report: ImportReport,
    ) -> tuple[list[tuple[Any, ...]], Sequence[int], Masks]:
        """Drop (and reject) the rows whose loan or borrower is not in the database."""
        at = self.ref_index
        wanted = set(map(itemgetter(at), rows))
        known = set(map(_first, self._select_in(cursor, self.ref_sql, wanted)))
        if len(known) == len(wanted):
            return rows, lines, masks
        kept = [index for index, row in enumerate(rows) if row[at] in known]
        name, table = self.kind.ref  # type: ignore[misc]
        for index in sorted(set(range(len(rows))).difference(kept)):
            reason = f"unknown {name} {rows[index][at]!r}: not among the {table}"
            report.reject([Rejection(lines[index], name, reason)])
        masks = None if masks is None else [masks[index] for index in kept]
        return [rows[index] for index in kept], [lines[index] for index in kept], masks

    def _classify(
        self,
        rows: list[tuple[Any, ...]],
        masks: Masks,
        stored: list[tuple[Any, ...]],
        report: ImportReport,
    ) -> dict[Mask | None, list[tuple[Any, ...]]]:
        """Apply the rows in file order over the stored state: what to write, by mask."""
        key = self.key
        if masks is None and len(set(map(key, rows))) == len(rows):  # the common case
            # keys are unique in the chunk, so a row equal to a stored row is unchanged
            same = set(stored)
            touched = [values for values in rows if values not in same] if same else rows
            imported, groups = len(touched), {None: touched} if touched else {}
        else:
            state = {key(values): values for values in stored}
            keys = list(map(key, rows))
            groups, imported = _apply_in_order(keys, rows, masks or [None] * len(rows), state)
        report.imported += imported
        report.unchanged += len(rows) - imported
        if self.stamp is not None:
            now = self.stamp(datetime.now(UTC))
            groups = {mask: [(*values, now) for values in group] for mask, group in groups.items()}
        return groups


def _apply_in_order(
    keys: list[Any], rows: list[tuple[Any, ...]], masks: list[Mask | None], state: dict
) -> tuple[dict[Mask | None, list[tuple[Any, ...]]], int]:
    """Rows one by one (a key may repeat; a row may carry only some fields).

    Returns the final tuple of every key that changed, grouped by the fields its rows
    carried, and how many rows changed something.
    """
    touched: dict[Any, tuple[tuple[Any, ...], Mask | None]] = {}
    imported = 0
    for key, values, mask in zip(keys, rows, masks, strict=True):
        old = state.get(key)
        if old is not None and mask is not None:
            pairs = zip(values, old, mask, strict=True)
            values = tuple(new if given else was for new, was, given in pairs)
        if values != old:
            imported += 1
            state[key] = values
            carried = touched[key][1] if key in touched else mask
            if carried is not None and mask is not None:
                carried = tuple(a or b for a, b in zip(carried, mask, strict=True))
            touched[key] = (values, None if mask is None else carried)
    groups: dict[Mask | None, list[tuple[Any, ...]]] = {}
    for values, mask in touched.values():
        groups.setdefault(mask, []).append(values)
    return groups, imported
