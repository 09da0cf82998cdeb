"""The pure parts of two-way messaging: when to stay silent, the answer texts, email
parsing, provider events in our words and the webhook credential checks."""

from __future__ import annotations

import base64
from datetime import date
from pathlib import Path

import pytest
from starlette.requests import Request

from reminder.config import load_config
from reminder.domain.intents import Intent
from reminder.domain.sms_encoding import sms_encoding
from reminder.services.borrower_match import e164, email_address, mask
from reminder.services.delivery_status import sendgrid_event, twilio_event
from reminder.services.inbound_email import inbound_reply, latest_text
from reminder.services.replies import plan_reply
from reminder.services.reply_texts import ReplyTexts
from reminder.web.security import WebhookSecrets, check_inbound_secret, public_url_of

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(p.stem for p in (REPO / "templates/replies/en").glob("*.txt"))
SMS_TEMPLATES = [name for name in TEMPLATES if not name.startswith("voice")] + ["voice_link"]


def _plan(kind: str, **flags: bool) -> str | None:
    options = {"opted_out": False, "auto_submitted": False, "acknowledged_today": False} | flags
    return plan_reply(Intent(kind), **options).template


def test_opted_out_borrowers_hear_only_help_and_start() -> None:
    answered = {kind for kind in ("stop", "start", "help", "paid", "unknown", "dispute")
                if _plan(kind, opted_out=True)}  # fmt: skip
    assert answered == {"help", "start"}


def test_a_repeated_stop_is_silent_and_robots_get_no_answer() -> None:
    assert _plan("stop") == "stop"
    assert _plan("stop", opted_out=True) is None
    assert _plan("help", auto_submitted=True) is None
    assert _plan("unknown") == "unknown"
    assert _plan("unknown", acknowledged_today=True) is None


@pytest.mark.parametrize("locale", ["en", "es-MX", "zh-CN"])
def test_every_answer_exists_names_the_lender_and_fits_three_segments(locale: str) -> None:
    texts = ReplyTexts(load_config(REPO / "config.toml"))
    for name in TEMPLATES:
        assert (REPO / "templates/replies" / texts.locale_for(locale) / f"{name}.txt").exists()
        text = texts.render(name, locale, promise_date=date(2026, 12, 20))
        assert text and "{{" not in text
        if name in SMS_TEMPLATES and name != "voice_callback":
            assert "Example Lending Co." in text, name
            assert sms_encoding(text).segments <= 3, (name, text)


def test_unknown_locales_fall_back_to_the_language_then_the_default() -> None:
    texts = ReplyTexts(load_config(REPO / "config.toml"))
    assert texts.locale_for("es-AR") == "es"
    assert texts.locale_for("fr-FR") == "en"
    assert texts.locale_for(None) == "en"
    assert texts.say_language("zh-CN") == "cmn-CN"


def test_senders_are_normalized_and_masked() -> None:
    assert e164("+1 (212) 555-0101") == "+12125550101"
    assert e164("not a phone") is None
    assert email_address("Ana López <ANA.Lopez@Example.COM>") == "ana.lopez@example.com"
    assert email_address("nobody") is None
    assert mask("+12125550101") == "+12***01"
    assert mask("ana@example.com") == "a***@example.com"


def test_only_the_new_part_of_an_email_is_read() -> None:
    for marker in ("On Mon, Dec 1, 2026 at 9:00, Lender wrote:", "El lun, 1 dic 2026, escribió:",
                   "在 2026年12月1日，Lender 写道：", "-----Original Message-----",
                   "> Reply STOP to unsubscribe"):  # fmt: skip
        assert latest_text(f"PAID\n\n{marker}\n> pay now or STOP") == "PAID"


def test_inbound_parse_fields_become_a_reply_with_a_stable_reference() -> None:
    fields = {"from": "Ana <ana@example.com>", "subject": "Re: reminder", "text": "",
              "html": "<p>I already <b>paid</b></p>", "headers": "Precedence: bulk\n"}  # fmt: skip
    reply = inbound_reply(fields)
    assert reply is not None and reply.body == "I already paid"
    assert reply.auto_submitted is True
    assert reply.provider_ref == inbound_reply(fields).provider_ref  # type: ignore[union-attr]
    assert inbound_reply({"text": "STOP"}) is None
    subject_only = inbound_reply({"from": "a@b.example", "subject": "STOP", "text": "\n"})
    assert subject_only is not None and subject_only.body == "STOP"


def test_twilio_statuses_in_our_words() -> None:
    event = twilio_event({"MessageSid": "SM1", "MessageStatus": "undelivered",
                          "ErrorCode": "21610"}, "ref-1")  # fmt: skip
    assert (event.status, event.error_code, event.opt_out) == ("undeliverable", "21610", True)
    assert twilio_event({"MessageSid": "SM1", "MessageStatus": "sent"}, None).status is None
    call = twilio_event({"CallSid": "CA1", "CallStatus": "no-answer"}, None)
    assert (call.status, call.provider_id) == ("failed", "CA1")


def test_sendgrid_events_in_our_words() -> None:
    hard = sendgrid_event({"event": "bounce", "type": "bounce", "status": "5.1.1", "ref": "r"})
    assert (hard.status, hard.bad_address, hard.error_code) == ("undeliverable", True, "5.1.1")
    soft = sendgrid_event({"event": "bounce", "type": "blocked", "status": "4.0.0"})
    assert (soft.status, soft.bad_address) == ("failed", False)
    assert sendgrid_event({"event": "open"}).status == "delivered"
    assert sendgrid_event({"event": "group_unsubscribe"}).opt_out is True
    assert (
        sendgrid_event({"event": "processed", "sg_message_id": "abc.filter"}).provider_id == "abc"
    )
    assert sendgrid_event({"event": "delivered", "ref": ["not", "a", "ref"]}).ref is None


def _request(path: str, query: str = "", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": path, "query_string": query.encode(),
             "headers": raw, "scheme": "http", "server": ("127.0.0.1", 8080)}  # fmt: skip
    return Request(scope)


def test_twilio_is_checked_against_the_public_url_not_the_host_we_listen_on() -> None:
    request = _request("/webhooks/twilio/status", "ref=20261202-sms-1")
    url = public_url_of(request, "https://bot.lender.example/")
    assert url == "https://bot.lender.example/webhooks/twilio/status?ref=20261202-sms-1"


def test_inbound_secret_by_query_or_basic_auth_and_fails_closed() -> None:
    secrets = WebhookSecrets(sendgrid_inbound_secret="s3cret")
    check_inbound_secret(_request("/x", "key=s3cret"), secrets)
    basic = base64.b64encode(b"any:s3cret").decode()
    check_inbound_secret(_request("/x", headers={"Authorization": f"Basic {basic}"}), secrets)
    for request in (
        _request("/x", "key=nope"),
        _request("/x", headers={"Authorization": "Basic !"}),
    ):
        with pytest.raises(Exception, match="403"):
            check_inbound_secret(request, secrets)
    with pytest.raises(Exception, match="403"):
        check_inbound_secret(_request("/x", "key="), WebhookSecrets())


def test_secrets_never_show_in_repr() -> None:
    secrets = WebhookSecrets.from_env(
        {"TWILIO_AUTH_TOKEN": "tok123", "SENDGRID_INBOUND_SECRET": "x9"}
    )
    assert "tok123" not in repr(secrets) and "x9" not in repr(secrets)


def test_the_inbound_secret_never_reaches_the_access_log() -> None:
    import logging

    from reminder.web import RedactSecrets

    args = ("127.0.0.1:5000", "POST", "/webhooks/sendgrid/inbound?key=s3cret", "1.1", 200)
    record = logging.LogRecord("uvicorn.access", 20, "x", 1, '%s - "%s %s HTTP/%s" %d', args, None)
    RedactSecrets().filter(record)
    assert "s3cret" not in record.getMessage() and "key=***" in record.getMessage()
