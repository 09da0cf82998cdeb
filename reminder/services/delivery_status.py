"""Delivery status from providers: Twilio message/call callbacks and SendGrid events.

Providers retry and reorder callbacks, so every update is conditional: a row moves only
forward (`sending`/`sent` -> `delivered` | `failed` | `undeliverable`) and a final status
is never replaced, so a late `sent` after `delivered`, or the same event twice, changes
nothing. Rows are found by our reference (`batch_key`, carried in the callback URL or
SendGrid `custom_args`) or else by the provider's id; every row of a consolidated send
shares both. Provider verdicts about the address itself become contact flags:
a hard bounce marks the email address bad, an unsubscribe or spam report (or Twilio 21610)
opts the borrower out of that channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from reminder.bootstrap import App
from reminder.db.tables import messages
from reminder.services import contact_changes as changes
from reminder.services.audit_records import record_messages_on_commit

log = logging.getLogger(__name__)
FINAL = ("delivered", "failed", "undeliverable")
MOVABLE = ("sending", "sent", "unknown")

TWILIO_MESSAGE = {"delivered": "delivered", "read": "delivered", "undelivered": "undeliverable",
                  "failed": "failed"}  # fmt: skip
TWILIO_CALL = {"completed": "delivered", "busy": "failed", "no-answer": "failed",
               "failed": "failed", "canceled": "failed"}  # fmt: skip
TWILIO_OPTED_OUT = "21610"


@dataclass(frozen=True)
class StatusEvent:
    """One provider report about a send, in our words."""

    ref: str | None  # our batch_key
    provider_id: str | None
    status: str | None  # delivered | failed | undeliverable | None (progress only)
    error_code: str | None = None
    opt_out: bool = False  # the recipient unsubscribed (SendGrid unsubscribe, Twilio 21610)
    bad_address: bool = False  # a hard bounce: the address does not exist
    source: str = "provider"


def _clean(value: object, limit: int = 80) -> str | None:
    """A reference as text we can look up, or None (absent, not text, or with NUL bytes)."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text[:limit] if text and "\x00" not in text else None


def twilio_event(params: dict[str, str], ref: str | None) -> StatusEvent:
    """A Twilio StatusCallback (message or call) as a StatusEvent."""
    code = _clean(params.get("ErrorCode"), 24)
    if "CallSid" in params and "MessageSid" not in params:
        status = TWILIO_CALL.get(params.get("CallStatus", ""))
        provider_id = params.get("CallSid")
    else:
        status = TWILIO_MESSAGE.get(params.get("MessageStatus") or params.get("SmsStatus", ""))
        provider_id = params.get("MessageSid") or params.get("SmsSid")
    return StatusEvent(
        ref=_clean(ref),
        provider_id=_clean(provider_id),
        status=status,
        error_code=code,
        opt_out=code == TWILIO_OPTED_OUT,
        source=f"twilio:{code}" if code else "twilio",
    )


def sendgrid_event(event: dict[str, object]) -> StatusEvent:
    """One SendGrid Event Webhook event as a StatusEvent."""
    kind = str(event.get("event", ""))
    ref = event.get("ref")
    message_id = _clean(str(event.get("sg_message_id") or "").split(".")[0])
    code = _clean(event.get("status") or event.get("type") or kind, 24)
    status: str | None = None
    bad_address = opt_out = False
    if kind in ("delivered", "open", "click"):  # an open proves delivery
        status = "delivered"
    elif kind == "bounce":
        hard = str(event.get("type", "bounce")) == "bounce"
        status = "undeliverable" if hard else "failed"
        bad_address = hard
    elif kind == "dropped":
        status = "failed"
        bad_address = "bounced address" in str(event.get("reason", "")).lower()
    elif kind in ("spamreport", "unsubscribe", "group_unsubscribe"):
        opt_out = True
    return StatusEvent(
        ref=_clean(ref),
        provider_id=message_id,
        status=status,
        error_code=code if status in ("failed", "undeliverable") else None,
        opt_out=opt_out,
        bad_address=bad_address,
        source="sendgrid:" + (_clean(kind, 30) or "event"),
    )


def apply_status(app: App, event: StatusEvent, channel: str | None = None) -> int:
    """Apply one event in its own transaction; returns how many rows changed status."""
    with app.engine.begin() as conn:
        return apply_in(conn, app, event, channel)


def apply_in(conn: Connection, app: App, event: StatusEvent, channel: str | None) -> int:
    """`apply_status` inside the caller's transaction."""
    match = _match(event)
    if match is None:
        return 0
    rows = conn.execute(
        select(messages.c.id, messages.c.borrower_id, messages.c.channel, messages.c.status)
        .where(match)
    ).all()  # fmt: skip
    if not rows:
        log.info("status for an unknown send (%s)", event.source)
        return 0
    changed = 0
    movable = [row.id for row in rows if row.status in MOVABLE]
    if event.status in FINAL and movable:
        now = app.clock.now()
        values: dict[str, object] = {"status": event.status, "updated_at": now}
        if event.status != "delivered":
            values["error_code"] = event.error_code
            values["error"] = f"{event.source}: {event.error_code or event.status}"
        moved = messages.c.id.in_(movable) & messages.c.status.in_(MOVABLE)
        result = conn.execute(update(messages).where(moved).values(**values))
        changed = int(result.rowcount or 0)
        record_messages_on_commit(conn, "status", movable, now, source=event.source)
    borrower_ids = sorted({row.borrower_id for row in rows})
    row_channel = channel or rows[0].channel
    now = app.clock.now()
    for borrower_id in borrower_ids:
        if event.opt_out:
            changes.add_flag(
                conn,
                borrower_id,
                "opt_out",
                channel=row_channel,
                source=event.source,
                now=now,
                note="the provider reports the recipient unsubscribed",
            )
        if event.bad_address:
            changes.add_flag(
                conn,
                borrower_id,
                "bad_address",
                channel=row_channel,
                source=event.source,
                now=now,
                note="the provider reports the address does not exist",
            )
    return changed


def _match(event: StatusEvent) -> Any:
    """Our reference when the provider echoed it (exact, ours), else the provider's id."""
    if event.ref:
        return messages.c.batch_key == event.ref[:80]
    if event.provider_id:
        return messages.c.provider_id == event.provider_id[:80]
    return None
