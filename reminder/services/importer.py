"""`reminder import KIND FILE`: stream a CSV or JSON Lines file into the portfolio tables.

Files run to millions of rows, so the file is read as a stream and written in chunks of a
few thousand rows, each chunk in its own transaction: a crash loses at most the chunk in
flight, and re-running the import completes it because an import is an idempotent upsert.
Per chunk, rows are validated in Python (`import_rows`), one query checks the references,
one query fetches the stored rows for the chunk's keys (to tell new, changed and unchanged
apart) and one executemany upserts what is new or changed. Values reach the driver as
plain tuples in storage form (integer cents, ISO date strings): no ORM, no per-row types.

A column absent from the file (or a key absent from a JSON record) keeps its stored value
on update and takes its default on insert; a column present but empty sets the default.
A key seen twice is applied twice, in file order: the later row wins.
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
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Date, Engine, inspect

from reminder.db import tables
from reminder.errors import ConfigError, InputError
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
    path = Path(path)
    fmt = _format(path, fmt)
    started = time.perf_counter()
    report = ImportReport(kind, str(path), fmt)
    _check_schema(engine, spec)
    store = _Store(engine, spec)
    with _open(path) as handle, _without_cyclic_gc():
        total = path.stat().st_size
        read = _csv_chunks if fmt == "csv" else _jsonl_chunks
        for raw in read(handle, spec, path, chunk_rows, report.warnings):
            _import_chunk(spec, store, raw, report)
            if on_progress:
                on_progress(handle.buffer.tell(), total)  # type: ignore[attr-defined]
    if on_progress:
        on_progress(total, total)
    report.rejected.sort(key=lambda rejection: rejection.line)
    report.seconds = time.perf_counter() - started
    return report


def _import_chunk(kind: Kind, store: _Store, raw: _Raw, report: ImportReport) -> None:
    for problems in raw.rejected:
        report.reject(problems)
    checked = validate_chunk(kind, raw.columns, raw.lines)
    for problems in checked.rejected:
        report.reject(problems)
    masks = raw.masks
    if masks is not None and checked.kept is not None:
        masks = [masks[index] for index in checked.kept]
    if checked.rows:
        store.write(checked.rows, checked.lines, masks, report)


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
        self.mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        q = engine.dialect.identifier_preparer.quote
        table = tables.metadata.tables[kind.name]
        selected = ", ".join(
            f"to_char({q(c)}, 'YYYY-MM-DD')"  # PostgreSQL returns dates; rows hold ISO text
            if self.postgres and isinstance(table.c[c].type, Date)
            else q(c)
            for c in kind.columns
        )
        lock = " FOR UPDATE" if self.postgres else ""  # SQLite: BEGIN IMMEDIATE locked all
        self.stored_sql = (
            f"SELECT {selected} FROM {q(kind.name)} WHERE {q(kind.columns[0])} IN ({{}}){lock}"
        )
        self.ref_sql, self.ref_index = "", -1
        if kind.ref:
            name, ref_table = kind.ref
            self.ref_index = kind.columns.index(name)
            lock = " FOR KEY SHARE" if self.postgres else ""  # it cannot vanish before commit
            self.ref_sql = f"SELECT {q(name)} FROM {q(ref_table)} WHERE {q(name)} IN ({{}}){lock}"
        self.stamp = None
        if kind.stamped:
            self.stamp = table.c.updated_at.type.bind_processor(engine.dialect)
        columns = ", ".join(map(q, [*kind.columns, *(["updated_at"] if kind.stamped else [])]))
        width = len(kind.columns) + kind.stamped
        updates = ", ".join(
            f"{q(c)} = excluded.{q(c)}"
            for c in [*kind.columns[kind.key_len :], *(["updated_at"] if kind.stamped else [])]
        )
        on_conflict = f"ON CONFLICT ({', '.join(map(q, kind.columns[: kind.key_len]))}) "
        on_conflict += f"DO UPDATE SET {updates}"
        self.upsert_sql = (
            f"INSERT INTO {q(kind.name)} ({columns}) "
            f"VALUES ({', '.join([self.mark] * width)}) {on_conflict}"
        )
        temp = q(f"import_{kind.name}")
        self.temp_sql = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {temp} "
            f"(LIKE {q(kind.name)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        self.copy_sql = f"COPY {temp} ({columns}) FROM STDIN"
        self.merge_sql = (
            f"INSERT INTO {q(kind.name)} ({columns}) SELECT {columns} FROM {temp} {on_conflict}"
        )

    def write(
        self, rows: list[tuple[Any, ...]], lines: Sequence[int], masks: Masks, report: ImportReport
    ) -> None:
        """Check references, classify against the stored rows, upsert: one transaction."""
        with self.engine.begin() as conn:
            cursor = conn.connection.cursor()
            try:
                if self.kind.ref:
                    rows, lines, masks = self._known_references(cursor, rows, lines, masks, report)
                # one IN list on the first key column (installments: every seq of the loans)
                stored = self._select_in(cursor, self.stored_sql, set(map(_first, rows)))
                changed = self._classify(rows, masks, stored, report)
                if changed and self.postgres:
                    cursor.execute(self.temp_sql)
                    with cursor.copy(self.copy_sql) as copy:
                        for values in changed:
                            copy.write_row(values)
                    cursor.execute(self.merge_sql)
                elif changed:
                    cursor.executemany(self.upsert_sql, changed)
            finally:
                cursor.close()

    def _select_in(self, cursor: Any, sql: str, wanted: set[Any]) -> list[tuple[Any, ...]]:
        """Run `sql` with its IN list filled, in batches the drivers accept."""
        values = list(wanted)
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(values), _IN_BATCH):
            batch = values[start : start + _IN_BATCH]
            cursor.execute(sql.format(", ".join([self.mark] * len(batch))), batch)
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
    ) -> list[tuple[Any, ...]]:
        """Apply the rows in file order over the stored state; return the tuples to write."""
        key = self.key
        if masks is None and len(set(map(key, rows))) == len(rows):  # the common case
            # keys are unique in the chunk, so a row equal to a stored row is unchanged
            same = set(stored)
            touched = [values for values in rows if values not in same] if same else rows
            imported = len(touched)
        else:
            state = {key(values): values for values in stored}
            keys = list(map(key, rows))
            touched, imported = _apply_in_order(keys, rows, masks or [None] * len(rows), state)
        report.imported += imported
        report.unchanged += len(rows) - imported
        if self.stamp is None:
            return touched
        now = self.stamp(datetime.now(UTC))
        return [(*values, now) for values in touched]


def _apply_in_order(
    keys: list[Any], rows: list[tuple[Any, ...]], masks: list[Mask | None], state: dict
) -> tuple[list[tuple[Any, ...]], int]:
    """Rows one by one (a key may repeat; a row may carry only some fields).

    Returns the final tuple of every key that changed, and how many rows changed something.
    """
    touched: dict[Any, tuple[Any, ...]] = {}
    imported = 0
    for key, values, mask in zip(keys, rows, masks, strict=True):
        old = state.get(key)
        if old is not None and mask is not None:
            pairs = zip(values, old, mask, strict=True)
            values = tuple(new if given else was for new, was, given in pairs)
        if values != old:
            imported += 1
            state[key] = touched[key] = values
    return list(touched.values()), imported
