"""Hypothesis against everything that reads provider or borrower input: never an exception
other than a 4xx, and intents that keep their promises (a recorded date is in range)."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi import HTTPException
from hypothesis import given, settings
from hypothesis import strategies as st

from reminder.domain.intents import KINDS, PROBLEMS, parse_reply
from reminder.services.borrower_match import e164, email_address, mask
from reminder.services.delivery_status import FINAL, sendgrid_event, twilio_event
from reminder.services.inbound_email import inbound_reply, latest_text
from reminder.services.replies import plan_reply
from reminder.web.security import form_params

FUZZ = settings(max_examples=1000, deadline=None)
WORDS = st.sampled_from(
    ["stop", "STOP", "pay", "paid", "pagaré", "ya pagué", "已还", "会还", "退订", "call", "help",
     "not my loan", "12/20", "2026-12-20", "friday", "mañana", "明天", "12月20日", "in 5 days",
     "don't", "no", "TD Bank", "end of the month", "yes", "start", "?", "!", " ", "\n", "0"]
)  # fmt: skip
REPLY_TEXT = st.one_of(st.text(max_size=300), st.lists(WORDS, max_size=12).map(" ".join))
TODAY = st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31))
LOCALES = st.sampled_from(["en", "en-US", "es", "es-MX", "zh-CN", "fr", ""])


@FUZZ
@given(text=REPLY_TEXT, locale=LOCALES, today=TODAY, horizon=st.integers(1, 90))
def test_any_reply_parses_to_a_known_intent_with_a_date_in_range(
    text: str, locale: str, today: date, horizon: int
) -> None:
    intent = parse_reply(text, locale=locale or "en", today=today, max_promise_days=horizon)
    assert intent.kind in KINDS
    assert intent.problem is None or intent.problem in PROBLEMS
    if intent.kind == "promise" and intent.problem is None:
        assert intent.promise_date is not None
        assert today <= intent.promise_date <= today + timedelta(days=horizon)
    plan = plan_reply(intent, opted_out=False, auto_submitted=False, acknowledged_today=False)
    assert plan.template is not None


FIELD_NAMES = st.sampled_from(["from", "to", "subject", "text", "html", "headers", "email"])


@FUZZ
@given(fields=st.dictionaries(FIELD_NAMES, st.text(max_size=400), max_size=7))
def test_any_inbound_parse_post_becomes_a_reply_or_none(fields: dict[str, str]) -> None:
    reply = inbound_reply(fields)
    if reply is not None:
        assert reply.channel == "email" and len(reply.provider_ref) <= 120
        assert len(reply.body) <= 4000


@FUZZ
@given(raw=st.text(max_size=2000))
def test_raw_mime_and_quote_stripping_never_fail(raw: str) -> None:
    inbound_reply({"email": raw})
    assert len(latest_text(raw)) <= len(raw)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30))
EVENT = st.dictionaries(
    st.sampled_from(["event", "type", "status", "reason", "ref", "sg_message_id", "email"]),
    st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.sampled_from(["bounce", "dropped"])),
)


@FUZZ
@given(event=EVENT)
def test_any_sendgrid_event_maps_to_a_status_or_nothing(event: dict[str, object]) -> None:
    mapped = sendgrid_event(event)
    assert mapped.status is None or mapped.status in FINAL
    assert mapped.error_code is None or len(mapped.error_code) <= 24


TWILIO_KEYS = st.sampled_from(
    ["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "CallSid", "CallStatus"]
)


@FUZZ
@given(params=st.dictionaries(TWILIO_KEYS, st.text(max_size=40)), ref=st.none() | st.text())
def test_any_twilio_callback_maps_to_a_status_or_nothing(
    params: dict[str, str], ref: str | None
) -> None:
    mapped = twilio_event(params, ref)
    assert mapped.status is None or mapped.status in FINAL


@FUZZ
@given(body=st.binary(max_size=500))
def test_any_form_body_parses_or_is_a_400(body: bytes) -> None:
    try:
        form_params(body)
    except HTTPException as exc:
        assert exc.status_code == 400


@FUZZ
@given(raw=st.text(max_size=80))
def test_sender_normalization_never_fails_and_masks_never_leak(raw: str) -> None:
    e164(raw)
    email_address(raw)
    shown = mask(raw)
    if "@" in raw:  # only the first letter of the mailbox, then the domain
        assert shown.startswith(raw.partition("@")[0][:1] + "***@")
    else:  # at most the country code and the last two digits
        assert shown == "***" or shown == raw[:3] + "***" + raw[-2:]
