"""What the services record in the audit trail: a run's decisions and placements, sends
and status changes of message rows, flags, replies, outcomes, agency file deliveries
(`handoff`), settled promises (`promise`), answers sent without a message row (`send`)
and contact details changed by an import (`contact`). The recorders read the
rows they record in the caller's transaction, so the log states what was committed, with
ids and codes only (no PII). Hooks inside other services' transactions queue their events
with the `*_on_commit` functions: they are chained just before that transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Date, bindparam, event, func, select, text

from reminder.db.tables import cases, loans, messages
from reminder.ports import SendResult
from reminder.services.audit import (
    BATCH,
    Prepared,
    append_many,
    append_prepared,
    dump,
    prepare,
    quote,
    stored_iso,
)


def last_message_id(conn: Connection) -> int:
    """The highest message id so far: rows above it after planning are the run's own."""
    return int(conn.execute(select(func.coalesce(func.max(messages.c.id), 0))).scalar_one())


def _day(raw: str | date) -> str:
    return raw if isinstance(raw, str) else raw.isoformat()


def _decisions(
    conn: Connection, run_date: date, after_id: int, at: datetime
) -> Iterator[Prepared]:
    """The run's message rows as `decision` events, streamed in id order (one server-side
    cursor: the rows were just inserted, so PostgreSQL has no statistics to plan repeated
    keyset queries well; raw SQL: type processing would cost more than the hashing)."""
    query = text(
        "SELECT id, loan_id, borrower_id, stage, channel, status, reason, dpd, episode, "
        "not_before FROM messages WHERE run_date = :day AND id > :after ORDER BY id"
    ).bindparams(bindparam("day", type_=Date))
    day = quote(run_date.isoformat())
    details: dict[tuple[Any, ...], str] = {}  # a run has few distinct decisions: build each once
    streamed = conn.execution_options(stream_results=True, yield_per=BATCH)
    for id_, loan_id, borrower_id, *decision in streamed.execute(
        query, {"day": run_date, "after": after_id}
    ):
        key = tuple(decision)
        detail = details.get(key)
        if detail is None:
            stage, channel, status, reason, dpd, episode, nb = decision
            detail = details[key] = (  # canonical({...}) by hand: sorted keys, compact
                f'{{"channel":{quote(channel)},"dpd":{int(dpd)},'
                f'"episode":{quote(_day(episode))},'
                f'"not_before":{"null" if nb is None else quote(stored_iso(nb))},'
                f'"reason":{dump(reason)},"run_date":{day},"stage":{quote(stage)},'
                f'"status":{quote(status)}}}'
            )
        yield at, "decision", borrower_id, loan_id, id_, detail


def record_decisions(conn: Connection, run_date: date, after_id: int, at: datetime) -> int:
    """One `decision` row per message row the run planned or suppressed (id > after_id)."""
    return append_prepared(conn, _decisions(conn, run_date, after_id, at))


def case_snapshot(conn: Connection, run_date: date) -> dict[str, str]:
    """Status by case id of the cases a run may open or end (open, or placed on the day)."""
    query = select(cases.c.case_id, cases.c.status).where(
        (cases.c.status == "open") | (cases.c.placed_on == run_date)
    )
    return {case_id: status for case_id, status in conn.execute(query)}


def record_placements(conn: Connection, run_date: date, before: dict[str, str],
                      at: datetime) -> int:  # fmt: skip
    """A `placement` row per case the run opened (`placed`) or ended (`closed`/`recalled`),
    judged against the `case_snapshot` taken before it."""
    rows = conn.execute(
        select(cases.c.case_id, cases.c.loan_id, loans.c.borrower_id, cases.c.agency_id,
               cases.c.status, cases.c.close_reason, cases.c.placed_on,
               cases.c.placed_balance, cases.c.currency, cases.c.dpd_at_placement)
        .join(loans, loans.c.loan_id == cases.c.loan_id)
        .where((cases.c.placed_on == run_date) | (cases.c.closed_on == run_date))
        .order_by(cases.c.case_id)
    ).all()  # fmt: skip
    events = []
    for row in rows:
        if row.case_id not in before and row.placed_on == run_date:
            detail = {"action": "placed", "balance": row.placed_balance,
                      "currency": row.currency, "dpd": row.dpd_at_placement}  # fmt: skip
        elif before.get(row.case_id) == "open" and row.status != "open":
            detail = {"action": row.status, "reason": row.close_reason}
        else:
            continue
        detail |= {"case_id": row.case_id, "agency_id": row.agency_id}
        events.append({"kind": "placement", "at": at, "loan_id": row.loan_id,
                       "borrower_id": row.borrower_id, "detail": detail})  # fmt: skip
    return append_many(conn, events)


MESSAGE_FIELDS = ("channel", "stage", "status", "reason", "provider", "provider_id",
                  "error_code", "attempts")  # fmt: skip


def _message_events(conn: Connection, kind: str, ids: list[int], at: datetime,
                    extra: dict[str, Any]) -> list[Prepared]:  # fmt: skip
    events = []
    for start in range(0, len(ids), 1000):
        rows = conn.execute(
            select(messages.c.id, messages.c.loan_id, messages.c.borrower_id,
                   *(messages.c[name] for name in MESSAGE_FIELDS))
            .where(messages.c.id.in_(ids[start : start + 1000]))
            .order_by(messages.c.id)
        ).all()  # fmt: skip
        events.extend(
            prepare({"kind": kind, "at": at, "borrower_id": row.borrower_id,
                     "loan_id": row.loan_id, "message_id": row.id,
                     "detail": {name: row._mapping[name] for name in MESSAGE_FIELDS} | extra})
            for row in rows
        )  # fmt: skip
    return events


Queued = Prepared | Callable[[Connection], list[Prepared]]
PENDING = "reminder.audit.pending"  # conn.info key: (transaction, queued events)


def _queue(conn: Connection, item: Queued) -> None:
    transaction = conn.get_transaction()
    if transaction is None:
        raise RuntimeError("audit events are queued inside a transaction")
    queued = conn.info.get(PENDING)
    if queued is None or queued[0] is not transaction:
        queued = (transaction, [])
        conn.info[PENDING] = queued
        event.listen(conn, "commit", _flush, once=True)
        event.listen(conn, "rollback", _drop, once=True)
    queued[1].append(item)


def _flush(conn: Connection) -> None:
    queued = conn.info.pop(PENDING, None)
    if queued is None or queued[0] is not conn.get_transaction():
        return  # a listener left over from a transaction that rolled back
    events: list[Prepared] = []
    for item in queued[1]:
        events.extend(item(conn) if callable(item) else [item])
    append_prepared(conn, events)


def _drop(conn: Connection) -> None:
    conn.info.pop(PENDING, None)


def append_on_commit(conn: Connection, kind: str, *, borrower_id: str | None = None,
                     loan_id: str | None = None, message_id: int | None = None,
                     detail: Mapping[str, Any] | None = None, at: datetime) -> None:  # fmt: skip
    """`audit.append`, written just before `conn`'s transaction commits (dropped on rollback).

    The audit lock is then the last lock the transaction takes, after every row lock it
    holds, so hooks in the middle of a service's transaction cannot deadlock appenders on
    PostgreSQL. The event is checked (kind, no personal data) now. Not savepoint-aware.
    """
    _queue(conn, prepare({"kind": kind, "borrower_id": borrower_id, "loan_id": loan_id,
                          "message_id": message_id, "detail": detail, "at": at}))  # fmt: skip


def record_messages_on_commit(conn: Connection, kind: str, message_ids: Iterable[int],
                              at: datetime, **extra: Any) -> None:  # fmt: skip
    """One `kind` row per message row, with its status as it stands at commit.

    For the hooks where a send is recorded (`send`), a status changes (`status`) or a claim
    cancels a planned row (`decision`). `extra` (codes only, e.g. source="twilio") is added
    to every row's detail.
    """
    ids = sorted(set(message_ids))
    if ids:
        _queue(conn, lambda c: _message_events(c, kind, ids, at, extra))


def record_file_sent(conn: Connection, sent: Iterable[tuple[str, str]],
                     detail: Mapping[str, Any], at: datetime) -> int:  # fmt: skip
    """A `handoff` row per case of an agency file just delivered, on the case's loan, so
    that a loan's history says when which file went to which agency. `sent` holds the
    (case id, loan id) pairs the delivery confirmed; `detail` describes the file."""
    pairs = sorted(sent)
    loan_ids = sorted({loan_id for _, loan_id in pairs})
    owners: dict[str, str] = {}
    for start in range(0, len(loan_ids), 1000):
        owners.update((loan_id, borrower_id) for loan_id, borrower_id in conn.execute(
            select(loans.c.loan_id, loans.c.borrower_id)
            .where(loans.c.loan_id.in_(loan_ids[start : start + 1000]))
        ))  # fmt: skip
    return append_many(conn, (
        {"kind": "handoff", "at": at, "loan_id": loan_id, "borrower_id": owners.get(loan_id),
         "detail": {**detail, "case_id": case_id}}
        for case_id, loan_id in pairs
    ))  # fmt: skip


def record_answer(conn: Connection, borrower_id: str | None, *, channel: str, purpose: str,
                  template: str | None, reply_id: int | None, at: datetime,
                  result: SendResult | None = None, error_code: str | None = None,
                  status: str | None = None) -> None:  # fmt: skip
    """A `send` row for a contact that has no message row (an auto-reply, a payment link
    texted during a call): channel, purpose, template and the provider's id, never the
    address or the text. Without a `result` the send did not succeed: `status` says how."""
    detail = {
        "purpose": purpose, "channel": channel, "template": template, "reply_id": reply_id,
        "status": result.status if result else (status or "failed"),
        "provider": result.provider if result else None,
        "provider_id": result.provider_id if result else None, "error_code": error_code,
    }  # fmt: skip
    append_many(conn, [{"kind": "send", "at": at, "borrower_id": borrower_id,
                        "detail": detail}])  # fmt: skip
