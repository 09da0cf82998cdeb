"""The writes replies, callbacks and the inbox make: flags, promises and reply rows.

Each function works inside the caller's transaction and is idempotent where a provider
retry could repeat it: a flag is added only when no active one of the same kind (and
channel) exists, so a repeated STOP or a re-sent bounce changes nothing.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from reminder.db.tables import contact_flags, promises, replies
from reminder.services.audit_records import append_on_commit


def _active_flag(borrower_id: str, kind: str, channel: str | None) -> list[Any]:
    where = [
        contact_flags.c.borrower_id == borrower_id,
        contact_flags.c.kind == kind,
        contact_flags.c.lifted_at.is_(None),
    ]
    if channel is not None:
        where.append(contact_flags.c.channel == channel)
    return where


def has_flag(conn: Connection, borrower_id: str, kind: str, channel: str | None = None) -> bool:
    """Whether an active (not lifted) flag of `kind` exists for the borrower."""
    query = select(contact_flags.c.id).where(*_active_flag(borrower_id, kind, channel)).limit(1)
    return conn.execute(query).first() is not None


def add_flag(
    conn: Connection,
    borrower_id: str,
    kind: str,
    *,
    channel: str | None,
    source: str,
    now: datetime,
    note: str | None = None,
) -> bool:
    """Add an active flag unless one already exists; True when a row was added."""
    if has_flag(conn, borrower_id, kind, channel):
        return False
    conn.execute(
        insert(contact_flags).values(
            borrower_id=borrower_id,
            kind=kind,
            channel=channel,
            source=source[:40],
            note=note,
            created_at=now,
        )
    )
    detail = {"flag": kind, "action": "added", "channel": channel, "source": source[:40]}
    append_on_commit(conn, "flag", borrower_id=borrower_id, detail=detail, at=now)
    return True


def lift_flags(
    conn: Connection,
    borrower_id: str,
    kind: str,
    *,
    channel: str | None,
    now: datetime,
    note: str,
) -> int:
    """Lift every active flag of `kind` (and channel); returns how many were lifted."""
    result = conn.execute(
        update(contact_flags)
        .where(*_active_flag(borrower_id, kind, channel))
        .values(lifted_at=now, lifted_note=note)
    )
    lifted = int(result.rowcount or 0)
    if lifted:  # the note may quote a person: only ids and codes go to the audit trail
        detail = {"flag": kind, "action": "lifted", "channel": channel, "count": lifted}
        append_on_commit(conn, "flag", borrower_id=borrower_id, detail=detail, at=now)
    return lifted


def add_promise(
    conn: Connection, borrower_id: str, promised_on: date, *, source: str, now: datetime
) -> None:
    """An open promise covering all the borrower's loans; settle_promises closes it later."""
    conn.execute(
        insert(promises).values(
            borrower_id=borrower_id,
            loan_id=None,
            promised_on=promised_on,
            source=source[:40],
            status="open",
            created_at=now,
        )
    )


def reply_exists(conn: Connection, provider_ref: str) -> bool:
    """Whether this provider message was already handled (providers retry webhooks)."""
    query = select(replies.c.id).where(replies.c.provider_ref == provider_ref)
    return conn.execute(query).first() is not None


def insert_reply(conn: Connection, **values: Any) -> int:
    """Insert one replies row first in its transaction, so a racing duplicate fails early."""
    result = conn.execute(insert(replies).values(**values).returning(replies.c.id))
    reply_id = int(result.scalar_one())
    detail = {
        "reply_id": reply_id,
        "intent": values["intent"],
        "channel": values["channel"],
        "needs_person": bool(values.get("needs_person")),
        "promise_date": values.get("promise_date"),
    }
    append_on_commit(
        conn, "reply", borrower_id=values.get("borrower_id"), detail=detail,
        at=values["received_at"],
    )  # fmt: skip
    return reply_id
