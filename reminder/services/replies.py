"""Borrower replies (SMS, email): match the sender, read the intent, apply it, answer.

One transaction per reply: the `replies` row (unique by the provider's message id, so a
retried webhook is a no-op) and its effect (opt-out, promise, dispute flag, ...) commit
together. The auto-reply is sent after the commit through the channel's adapter
(`App.sender(channel)`), never as TwiML, so SMS and email answers take one path, land in
the outbox in development and a failed send never undoes the recorded intent. Every
answer tried is a `send` audit row of its own (it has no message row).

When to stay silent (decided by `plan_reply`, a pure function):
- an unknown sender, and an email marked Auto-Submitted (no mail loops);
- a channel the borrower opted out of, except HELP and START (carriers expect answers);
- a STOP when the borrower was already opted out: exactly one confirmation, then silence;
- a second unreadable reply within a day (one acknowledgement is enough).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from reminder.bootstrap import App
from reminder.db.tables import replies
from reminder.domain.intents import Intent, parse_reply
from reminder.errors import PermanentSendError, ReminderError, UnconfirmedSendError
from reminder.ports import OutgoingMessage, SendResult
from reminder.services import contact_changes as changes
from reminder.services.audit_records import record_answer
from reminder.services.borrower_match import find_borrowers, mask, normalized_sender
from reminder.services.reply_texts import ReplyTexts

log = logging.getLogger(__name__)
NEEDS_PERSON = frozenset({"unknown", "dispute", "callback", "paid"})
MAX_BODY = 2000


@dataclass(frozen=True)
class InboundReply:
    """One reply as a provider delivered it."""

    channel: str  # sms | email
    sender: str  # as received: "+12125550100", "Ana <ana@example.com>"
    body: str
    provider_ref: str  # the provider's message id: retries carry the same one
    subject: str | None = None
    auto_submitted: bool = False  # an email auto-responder's message


@dataclass(frozen=True)
class ReplyOutcome:
    """What happened, for the webhook's log line and for tests (never echoed to callers)."""

    duplicate: bool
    intent: str | None = None
    borrower_id: str | None = None
    answer: OutgoingMessage | None = None
    sent: bool = False
    template: str | None = None  # the answer's reply template
    reply_id: int | None = None


@dataclass(frozen=True)
class ReplyPlan:
    """The effect an intent has, decided without a database."""

    template: str | None  # reply text to send, None for silence
    needs_person: bool
    record_promise: bool


def plan_reply(
    intent: Intent, *, opted_out: bool, auto_submitted: bool, acknowledged_today: bool
) -> ReplyPlan:
    """Which answer (if any) an intent gets and whether a person must look at it."""
    kind = intent.kind
    needs_person = kind in NEEDS_PERSON
    record_promise = kind == "promise" and not intent.problem and intent.promise_date is not None
    if kind == "promise" and intent.problem:
        template: str | None = f"promise_{intent.problem}"
    else:
        template = kind
    silent = (
        auto_submitted
        or (opted_out and kind not in ("help", "start"))
        or (kind == "unknown" and acknowledged_today)
    )
    return ReplyPlan(None if silent else template, needs_person, record_promise)


def borrower_today(app: App, timezone: str | None, now: datetime) -> date:
    """The borrower's local date (the lender's when unknown): relative dates count from it."""
    try:
        tz = ZoneInfo(timezone) if timezone else app.config.run.tz
    except (ValueError, KeyError):
        tz = app.config.run.tz
    return now.astimezone(tz).date()


def read_intent(app: App, text: str, locale: str | None, today: date) -> Intent:
    """`parse_reply` with the borrower's locale and the configured promise horizon."""
    return parse_reply(
        text[:MAX_BODY],
        locale=locale or app.config.run.default_locale,
        today=today,
        max_promise_days=app.config.policy.max_promise_days,
    )


def handle_reply(app: App, inbound: InboundReply) -> ReplyOutcome:
    """Record and act on one reply; a provider retry of the same message changes nothing."""
    try:
        with app.engine.begin() as conn:
            outcome = _record(conn, app, inbound)
    except IntegrityError:  # a concurrent retry inserted the same provider_ref first
        return ReplyOutcome(duplicate=True)
    if outcome.answer is None:
        return outcome
    return _send_answer(app, outcome)


def _record(conn: Connection, app: App, inbound: InboundReply) -> ReplyOutcome:
    if changes.reply_exists(conn, inbound.provider_ref):
        return ReplyOutcome(duplicate=True)
    now = app.clock.now()
    sender = normalized_sender(inbound.channel, inbound.sender)
    matched = find_borrowers(conn, inbound.channel, sender) if sender else []
    body = inbound.body[:MAX_BODY]
    if not matched:
        intent = read_intent(app, body, None, borrower_today(app, None, now))
        changes.insert_reply(
            conn,
            provider_ref=inbound.provider_ref,
            channel=inbound.channel,
            borrower_id=None,
            sender=mask(inbound.sender or ""),
            body=body,
            intent=intent.kind,
            received_at=now,
            needs_person=True,
        )
        log.info("reply from unknown %s sender %s", inbound.channel, mask(inbound.sender or ""))
        return ReplyOutcome(duplicate=False, intent=intent.kind)
    primary = matched[0]
    borrower_id = primary["borrower_id"]
    today = borrower_today(app, primary["timezone"], now)
    intent = read_intent(app, body, primary["locale"], today)
    opted_out = changes.has_flag(conn, borrower_id, "opt_out", inbound.channel)
    acknowledged = intent.kind == "unknown" and _acknowledged_since(
        conn, borrower_id, inbound.channel, now - timedelta(days=1)
    )
    plan = plan_reply(
        intent,
        opted_out=opted_out,
        auto_submitted=inbound.auto_submitted,
        acknowledged_today=acknowledged,
    )
    reply_id = changes.insert_reply(
        conn,
        provider_ref=inbound.provider_ref,
        channel=inbound.channel,
        borrower_id=borrower_id,
        sender=sender,
        body=body,
        intent=intent.kind,
        promise_date=intent.promise_date,
        received_at=now,
        needs_person=plan.needs_person,
    )
    source = f"reply:{inbound.channel}:{reply_id}"
    _apply(
        conn, intent, plan, [row["borrower_id"] for row in matched], inbound.channel, source, now
    )
    log.info("reply %s from borrower %s: %s", reply_id, borrower_id, intent.kind)
    answer = None
    if plan.template is not None:
        texts = ReplyTexts(app.config)
        answer = OutgoingMessage(
            message_ids=(),
            channel=inbound.channel,
            to=str(sender),
            body=texts.render(plan.template, primary["locale"], promise_date=intent.promise_date),
            locale=texts.locale_for(primary["locale"]),
            reference=f"reply-{reply_id}",
            subject=_subject(app, inbound),
        )
    return ReplyOutcome(False, intent.kind, borrower_id, answer, template=plan.template,
                        reply_id=reply_id)  # fmt: skip


def _apply(
    conn: Connection,
    intent: Intent,
    plan: ReplyPlan,
    borrower_ids: list[str],
    channel: str,
    source: str,
    now: datetime,
) -> None:
    """The intent's effect. STOP and START cover every borrower at that address."""
    primary = borrower_ids[0]
    if intent.kind == "stop":
        for borrower_id in borrower_ids:
            changes.add_flag(
                conn,
                borrower_id,
                "opt_out",
                channel=channel,
                source=source,
                now=now,
                note="the borrower replied with an opt-out word",
            )
    elif intent.kind == "start":
        for borrower_id in borrower_ids:
            changes.lift_flags(
                conn,
                borrower_id,
                "opt_out",
                channel=channel,
                now=now,
                note=f"the borrower opted in again ({source})",
            )
    elif intent.kind == "dispute":
        changes.add_flag(
            conn,
            primary,
            "dispute",
            channel=None,
            source=source,
            now=now,
            note="the borrower disputes the debt in a reply",
        )
    elif plan.record_promise and intent.promise_date is not None:
        changes.add_promise(conn, primary, intent.promise_date, source=source, now=now)


def _acknowledged_since(conn: Connection, borrower_id: str, channel: str, since: datetime) -> bool:
    query = select(replies.c.id).where(
        replies.c.borrower_id == borrower_id,
        replies.c.channel == channel,
        replies.c.intent == "unknown",
        replies.c.received_at >= since,
    )
    return conn.execute(query.limit(1)).first() is not None


def _subject(app: App, inbound: InboundReply) -> str | None:
    if inbound.channel != "email":
        return None
    original = (inbound.subject or "").strip()
    if not original:
        return app.config.lender.name
    return original if original.lower().startswith("re:") else f"Re: {original[:150]}"


def _send_answer(app: App, outcome: ReplyOutcome) -> ReplyOutcome:
    """Send the auto-reply and record it as a `send` audit row (sent or not); a failure is
    logged, the recorded intent stands."""
    answer = outcome.answer
    assert answer is not None
    try:
        result = app.sender(answer.channel).send(answer)
    except PermanentSendError as exc:
        log.warning("auto-reply to %s refused: %s", mask(answer.to), exc.code)
        with app.engine.begin() as conn:
            if exc.opted_out and outcome.borrower_id:  # e.g. Twilio 21610: carrier opt-out
                changes.add_flag(
                    conn,
                    outcome.borrower_id,
                    "opt_out",
                    channel=answer.channel,
                    source=f"provider:{exc.code}",
                    now=app.clock.now(),
                    note="the provider reports the recipient unsubscribed",
                )
            _record_answer(conn, app, outcome, error_code=exc.code)
        return outcome
    except ReminderError as exc:
        log.warning("auto-reply to %s not sent: %s", mask(answer.to), exc)
        with app.engine.begin() as conn:
            _record_answer(conn, app, outcome, error_code=getattr(exc, "code", None),
                           status=failed_status(exc))  # fmt: skip
        return outcome
    except Exception:  # an adapter bug must not turn a recorded reply into a 500
        log.exception("auto-reply to %s failed", mask(answer.to))
        with app.engine.begin() as conn:  # whether it left is not known
            _record_answer(conn, app, outcome, status="unknown")
        return outcome
    with app.engine.begin() as conn:
        _record_answer(conn, app, outcome, result=result)
    return replace(outcome, sent=True)


def failed_status(exc: Exception) -> str:
    """`unknown` when the provider may have taken the send after all (it is not retried
    here), else `failed`."""
    return "unknown" if isinstance(exc, UnconfirmedSendError) else "failed"


def _record_answer(conn: Connection, app: App, outcome: ReplyOutcome, *,
                   result: SendResult | None = None, error_code: str | None = None,
                   status: str | None = None) -> None:  # fmt: skip
    assert outcome.answer is not None
    record_answer(conn, outcome.borrower_id, channel=outcome.answer.channel,
                  purpose="auto_reply", template=outcome.template, reply_id=outcome.reply_id,
                  at=app.clock.now(), result=result, error_code=error_code,
                  status=status)  # fmt: skip
