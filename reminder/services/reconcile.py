"""Crash reconciliation: what to do with rows a dead dispatcher left in `sending`.

A crash can fall between the provider accepting a message and our commit, so a row in
`sending` is never sent again blindly. Its claim is *stale* when the claiming process is
gone (same host, pid not running) or the claim is older than `STALE_AFTER`. Then the
adapter's `lookup(message, since)` is asked: found -> `sent` with the provider's id; not
found -> retried on later passes while the provider's listing may still lag
(`lookup_window`), after that -> `unknown` with a note for a person. Adapters without a
lookup (SendGrid, SMTP) go straight to `unknown`: only a person can tell.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
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


@dataclass
class Reconciled:
    sent: int = 0
    unknown: int = 0
    waiting: int = 0


def _alive(worker: str | None) -> bool:
    """Whether the process named `host:pid` may still be working on its claim."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: only the age of the claim can tell
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
        ids = [row["id"] for row in group]
        with app.engine.begin() as conn:
            record_messages_on_commit(conn, "send", ids, now, source="reconcile")
            if found is not None:
                _set(conn, ids, now, status="sent", provider=found.provider,
                     provider_id=found.provider_id, sent_at=claimed_at,
                     error="reconciled after a crash: the provider had accepted it")  # fmt: skip
                done.sent += len(ids)
            else:
                _set(conn, ids, now, status="unknown", error_code="unknown",
                     error=UNKNOWN_NOTE.format(how=how, ref=reference))  # fmt: skip
                done.unknown += len(ids)
                log.warning("message %s left unknown after a crash", reference)
    return done


def _set(conn: Connection, ids: list[int], now: datetime, **values: Any) -> None:
    conn.execute(
        update(messages)
        .where(messages.c.id.in_(ids), messages.c.status == "sending")
        .values(updated_at=now, **values)
    )
