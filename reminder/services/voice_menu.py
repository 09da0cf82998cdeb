"""The voice call: what it says and what a keypress does (1 link, 2 call back, 3 promise).

`voice_turn` decides the next words of a call from our send reference; the web layer turns
them into TwiML. A person hears the reminder that was rendered for them (the message row's
body) and the menu; an answering machine hears a short voicemail naming only the lender,
because anyone may play it back. Keypresses are replies of channel `voice`, recorded once
per call and key (`twilio-call:<CallSid>:<digit>`), so a re-posted keypress does nothing.
Intents recorded: `pay_link` (1), `callback` (2, needs a person), `promise` (3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from reminder.bootstrap import App
from reminder.db.tables import borrowers, messages
from reminder.errors import ReminderError
from reminder.ports import OutgoingMessage, SendResult
from reminder.services import contact_changes as changes
from reminder.services.audit_records import record_answer
from reminder.services.borrower_match import mask
from reminder.services.replies import borrower_today, failed_status
from reminder.services.reply_texts import ReplyTexts

log = logging.getLogger(__name__)
PROMISE_DAYS = 7


@dataclass(frozen=True)
class VoiceTurn:
    """The next words of a call: `say`, then (when `menu`) wait for one key."""

    say: str
    language: str
    menu: str | None = None


def is_machine(answered_by: str | None) -> bool:
    """Twilio AMD's verdict: `machine_start`, `machine_end_*` and `fax` are no person."""
    return bool(answered_by) and (str(answered_by).startswith("machine") or answered_by == "fax")


def _call_target(conn: Connection, ref: str | None) -> dict[str, Any] | None:
    if not ref:
        return None
    query = (
        select(
            messages.c.borrower_id,
            messages.c.body,
            messages.c.locale,
            borrowers.c.phone,
            borrowers.c.timezone,
            borrowers.c.locale.label("borrower_locale"),
        )
        .join(borrowers, borrowers.c.borrower_id == messages.c.borrower_id)
        .where(messages.c.batch_key == ref[:80], messages.c.channel == "voice")
        .order_by(messages.c.id)
        .limit(1)
    )
    row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def voice_turn(
    app: App, ref: str | None, call_sid: str, digits: str | None, answered_by: str | None
) -> VoiceTurn:
    """The next turn of the call for send `ref`; keypress effects are applied here."""
    texts = ReplyTexts(app.config)
    with app.engine.connect() as conn:
        target = _call_target(conn, ref)
    if target is None:
        locale = app.config.run.default_locale
        return VoiceTurn(texts.render("voice_unavailable", locale), texts.say_language(locale))
    locale = target["locale"] or target["borrower_locale"]
    language = texts.say_language(locale)
    if is_machine(answered_by):
        return VoiceTurn(texts.render("voicemail", locale), language)
    menu = texts.render("voice_menu", locale)
    if digits == "1":
        return VoiceTurn(_pay_link(app, texts, target, call_sid, locale), language)
    if digits == "2":
        _record_key(app, target, call_sid, "2", "callback", needs_person=True)
        return VoiceTurn(texts.render("voice_callback", locale), language)
    if digits == "3":
        now = app.clock.now()
        days = min(PROMISE_DAYS, app.config.policy.max_promise_days)
        promised = borrower_today(app, target["timezone"], now) + timedelta(days=days)
        _record_key(app, target, call_sid, "3", "promise", promise_date=promised)
        return VoiceTurn(texts.render("voice_promise", locale, promise_date=promised), language)
    body = target["body"] or texts.render("voice_unavailable", locale)
    return VoiceTurn(body, language, menu=menu)


def _record_key(
    app: App,
    target: dict[str, Any],
    call_sid: str,
    digit: str,
    intent: str,
    *,
    needs_person: bool = False,
    promise_date: Any = None,
) -> int | None:
    """Record a keypress once; returns the reply id, or None when it was already recorded."""
    now = app.clock.now()
    ref = f"twilio-call:{call_sid[:80]}:{digit}"
    try:
        with app.engine.begin() as conn:
            if changes.reply_exists(conn, ref):
                return None
            reply_id = changes.insert_reply(
                conn,
                provider_ref=ref,
                channel="voice",
                borrower_id=target["borrower_id"],
                sender=target["phone"],
                body=f"keypress {digit}",
                intent=intent,
                promise_date=promise_date,
                received_at=now,
                needs_person=needs_person,
            )
            if promise_date is not None:
                source = f"reply:voice:{reply_id}"
                changes.add_promise(
                    conn, target["borrower_id"], promise_date, source=source, now=now
                )
    except IntegrityError:
        return None
    return reply_id


def replace_call(app: App, call_sid: str, twiml: str) -> bool:
    """Swap a live call's TwiML (asynchronous AMD found a machine mid-message).

    The response to an asynchronous AMD callback is ignored by Twilio, so the words can only
    be replaced through the REST API; the voice adapter may offer that as `update_call`.
    Returns False when it does not (the outbox, or an adapter without it).
    """
    update = getattr(app.sender("voice"), "update_call", None)
    if update is None:
        return False
    try:
        update(call_sid, twiml)
    except ReminderError as exc:
        log.warning("could not replace call %s with a voicemail: %s", call_sid, exc)
        return False
    return True


def _pay_link(
    app: App, texts: ReplyTexts, target: dict[str, Any], call_sid: str, locale: str
) -> str:
    """Text the payment link (once per call) unless SMS is barred; else speak the link."""
    with app.engine.connect() as conn:
        barred = changes.has_flag(conn, target["borrower_id"], "opt_out", "sms")
    if barred or not target["phone"] or not app.config.lender.payment_url:
        return texts.render("voice_link_spoken", locale)
    reply_id = _record_key(app, target, call_sid, "1", "pay_link")
    if reply_id is None:  # already sent during this call
        return texts.render("voice_link_sent", locale)
    message = OutgoingMessage(
        message_ids=(),
        channel="sms",
        to=target["phone"],
        body=texts.render("voice_link", locale),
        locale=texts.locale_for(locale),
        reference=f"reply-{reply_id}",
    )
    try:
        result = app.sender("sms").send(message)
    except ReminderError as exc:
        log.warning("payment link to %s not sent: %s", mask(target["phone"]), exc)
        _record_link(app, target, reply_id, error_code=getattr(exc, "code", None),
                     status=failed_status(exc))  # fmt: skip
        return texts.render("voice_link_spoken", locale)
    _record_link(app, target, reply_id, result=result)
    return texts.render("voice_link_sent", locale)


def _record_link(
    app: App,
    target: dict[str, Any],
    reply_id: int,
    *,
    result: SendResult | None = None,
    error_code: str | None = None,
    status: str | None = None,
) -> None:
    """The payment link SMS has no message row: its `send` audit row says it was tried."""
    with app.engine.begin() as conn:
        record_answer(conn, target["borrower_id"], channel="sms", purpose="pay_link",
                      template="voice_link", reply_id=reply_id, at=app.clock.now(),
                      result=result, error_code=error_code, status=status)  # fmt: skip
