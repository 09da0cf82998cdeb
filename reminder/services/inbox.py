"""The human inbox: replies a person must read, and the only place holds are lifted.

Unknown replies, disputes, callback requests and paid claims (until the payment reconciles)
wait here. Resolving one records who-knows-why in `resolution_note`; it also ends a paid
claim's suppression. Dispute and cease flags are lifted only here, on purpose: no reply
word, provider event or import can lift them, so a hold needs a person's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from reminder.bootstrap import App
from reminder.db.tables import replies
from reminder.errors import InputError
from reminder.services import contact_changes as changes
from reminder.services.audit_records import append_on_commit

COLUMNS = (
    replies.c.id,
    replies.c.received_at,
    replies.c.channel,
    replies.c.borrower_id,
    replies.c.sender,
    replies.c.intent,
    replies.c.promise_date,
    replies.c.body,
)


def pending(conn: Connection) -> list[dict[str, Any]]:
    """Unresolved replies needing a person, oldest first."""
    query = (
        select(*COLUMNS)
        .where(replies.c.needs_person.is_(True), replies.c.resolved_at.is_(None))
        .order_by(replies.c.received_at, replies.c.id)
    )
    return [dict(row) for row in conn.execute(query).mappings()]


@dataclass(frozen=True)
class Resolution:
    reply_id: int
    already_resolved: bool
    disputes_lifted: int = 0
    cease_lifted: int = 0


def resolve(
    app: App, reply_id: int, note: str, *, lift_dispute: bool = False, lift_cease: bool = False
) -> Resolution:
    """Close one inbox item, optionally lifting the borrower's dispute / cease holds."""
    if not note.strip():
        raise InputError("--note: say what was decided (it is kept with the reply)")
    now: datetime = app.clock.now()
    with app.engine.begin() as conn:
        row = conn.execute(
            select(replies.c.borrower_id, replies.c.resolved_at).where(replies.c.id == reply_id)
        ).first()
        if row is None:
            raise InputError(f"ID: no reply {reply_id}")
        if (lift_dispute or lift_cease) and row.borrower_id is None:
            raise InputError("--lift-*: this reply came from an unknown sender (no borrower)")
        already = row.resolved_at is not None
        if not already:
            conn.execute(
                update(replies)
                .where(replies.c.id == reply_id)
                .values(resolved_at=now, resolution_note=note)
            )
            detail = {"reply_id": reply_id, "action": "resolved"}  # never the note's text
            append_on_commit(conn, "reply", borrower_id=row.borrower_id, detail=detail, at=now)
        lifted = {"dispute": 0, "cease": 0}
        for kind, wanted in (("dispute", lift_dispute), ("cease", lift_cease)):
            if wanted:
                lifted[kind] = changes.lift_flags(
                    conn, row.borrower_id, kind, channel=None, now=now,
                    note=f"inbox reply {reply_id}: {note}",
                )  # fmt: skip
    return Resolution(reply_id, already, lifted["dispute"], lifted["cease"])
