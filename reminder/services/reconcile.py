"""Crash reconciliation: what to do with rows a dead dispatcher left in `sending`.

A crash can fall between the provider accepting a message and our commit, so a row in
`sending` is never sent again blindly. Its claim is *stale* when the claiming process is
gone (same host, pid not running), the claiming pass of this very process is over (it
failed: the database went away, say), or the claim is older than `STALE_AFTER`. Then the
adapter's `lookup(message, since)` is asked: found -> `sent` with the provider's id; not
found -> retried on later passes while the provider's listing may still lag
(`lookup_window`), after that -> `unknown` with a note for a person. Adapters without a
lookup (SendGrid, SMTP) go straight to `unknown`: only a person can tell.

A send that timed out and was not found at once is handed over the same way, released
with error code `unconfirmed` and the attempt's start as `updated_at`. For it the window
is measured from a known attempt, so not found after the window means not taken: it goes
back to `planned` and is sent again.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from reminder.bootstrap import App
from reminder.db.tables import borrowers, messages
from reminder.errors import ReminderError, SendError
from reminder.ports import OutgoingMessage, SendResult
from reminder.services.audit_records import record_messages_on_commit

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(minutes=10)  # well past the in-pass retry budget
UNKNOWN_NOTE = (
    "interrupted while sending and the provider {how}: it may or may not have gone out; "
    "check the provider's log for reference {ref} before sending it again"
)


UNCONFIRMED = "unconfirmed"  # error_code of a send released after an unsettled timeout
RESEND_NOTE = "{error}; not listed by the provider {window:.0f} s later: sent again"
_running: set[str] = set()  # the claim names of this process's passes in progress
_numbers = itertools.count(1)
_incarnation = secrets.token_hex(3)  # a restarted process may get its predecessor's pid


@dataclass
class Reconciled:
    sent: int = 0
    unknown: int = 0
    waiting: int = 0
    retried: int = 0


@contextmanager
def claim_name() -> Iterator[str]:
    """The `claimed_by` of one dispatcher pass, `host:pid#x-n`, live while the pass runs.

    Once the pass is over, however it ended, what it left in `sending` is stale at once,
    though the process lives on: a worker whose pass failed settles it on the next pass
    instead of waiting `STALE_AFTER`.
    """
    name = f"{socket.gethostname()}:{os.getpid()}#{_incarnation}-{next(_numbers)}"
    _running.add(name)
    try:
        yield name
    finally:
        _running.discard(name)


def _alive(worker: str | None) -> bool:
    """Whether the process (or pass) named `host:pid[#x-n]` may still work on its claim."""
    if not worker or ":" not in worker:
        return False
    process, _, number = worker.partition("#")
    host, _, pid = process.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: only the age of the claim can tell
    if int(pid) == os.getpid() and number:
        return worker in _running
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(row: dict[str, Any], now: datetime) -> bool:
    claimed_at = row["updated_at"]
    return claimed_at is None or claimed_at <= now - STALE_AFTER or not _alive(row["claimed_by"])


def _window(app: App, channel: str, sender: Any) -> timedelta:
    extra = app.config.channel(channel).model_extra or {}
    if "lookup_window_seconds" in extra:
        return timedelta(seconds=float(extra["lookup_window_seconds"]))
    return getattr(sender, "lookup_window", timedelta(0))


def stale_groups(conn: Connection, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """Rows in `sending` whose claim is stale, by batch (one consolidated send each)."""
    query = (
        select(messages, borrowers.c.phone, borrowers.c.email)
        .join(borrowers, borrowers.c.borrower_id == messages.c.borrower_id)
        .where(messages.c.status == "sending")
    )
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in conn.execute(query).mappings():
        if _stale(dict(row), now):
            groups[row["batch_key"] or f"row-{row['id']}"].append(dict(row))
    return groups


def _message(group: list[dict[str, Any]], reference: str) -> OutgoingMessage:
    first = group[0]
    return OutgoingMessage(
        message_ids=tuple(row["id"] for row in group), channel=first["channel"],
        to=first["email"] if first["channel"] == "email" else first["phone"],
        body=first["body"] or "", subject=first["subject"], locale=first["locale"] or "",
        reference=reference,
    )  # fmt: skip


def reconcile_sending(app: App, now: datetime) -> Reconciled:
    """Settle every stale `sending` row: sent (found), unknown, or left for a later pass."""
    done = Reconciled()
    with app.engine.connect() as conn:
        groups = stale_groups(conn, now)
    for reference, group in groups.items():
        channel = group[0]["channel"]
        try:
            sender = app.sender(channel)
        except ReminderError as exc:
            log.warning("cannot reconcile %s: %s", reference, exc)
            continue
        lookup = getattr(sender, "lookup", None)
        claimed_at = min(row["updated_at"] for row in group)
        found: SendResult | None = None
        how = "offers no lookup"
        if lookup is not None and group[0]["body"] is not None:
            try:
                found = lookup(_message(group, reference), claimed_at - timedelta(seconds=5))
            except SendError as exc:
                log.warning("lookup of %s failed, will retry: %s", reference, exc.code)
                done.waiting += len(group)
                continue
            how = "does not list it"
            if found is None and now - claimed_at < _window(app, channel, sender):
                done.waiting += len(group)
                continue
        with app.engine.begin() as conn:
            _settle(conn, group, found, how, now, done, _window(app, channel, sender))
    return done


def _settle(conn: Connection, group: list[dict[str, Any]], found: SendResult | None, how: str,
            now: datetime, done: Reconciled, window: timedelta) -> None:  # fmt: skip
    """Record the verdict on one stale group: sent, sent again (unconfirmed), or unknown."""
    ids, first = [row["id"] for row in group], group[0]
    reference = first["batch_key"] or f"row-{first['id']}"
    unconfirmed = first["error_code"] == UNCONFIRMED
    record_messages_on_commit(conn, "send", ids, now, source="reconcile")
    if found is not None:
        note = ("the provider had accepted it (found after a timeout)" if unconfirmed
                else "reconciled after a crash: the provider had accepted it")  # fmt: skip
        _set(conn, group, now, status="sent", provider=found.provider, error_code=None,
             provider_id=found.provider_id, error=note,
             sent_at=min(row["updated_at"] for row in group))  # fmt: skip
        done.sent += len(ids)
    elif unconfirmed and how == "does not list it":
        note = RESEND_NOTE.format(error=first["error"] or "timeout",
                                  window=window.total_seconds())  # fmt: skip
        _set(conn, group, now, status="planned", not_before=now, error=note[:500],
             error_code="timeout")  # fmt: skip
        done.retried += len(ids)
    else:
        _set(conn, group, now, status="unknown", error_code="unknown",
             error=UNKNOWN_NOTE.format(how=how, ref=reference))  # fmt: skip
        done.unknown += len(ids)
        log.warning("message %s left unknown after a crash", reference)


def _set(conn: Connection, group: list[dict[str, Any]], now: datetime, **values: Any) -> None:
    """Move rows still `sending` under the claim we judged (another worker's new claim of a
    row we sent back to `planned` is not ours to touch)."""
    for row in group:
        conn.execute(
            update(messages)
            .where(messages.c.id == row["id"], messages.c.status == "sending",
                   messages.c.claimed_by.is_not_distinct_from(row["claimed_by"]))
            .values(updated_at=now, **values)
        )  # fmt: skip
