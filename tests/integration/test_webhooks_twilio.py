"""Twilio webhooks against the real app under uvicorn: signed, forged, duplicate, reordered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine, insert, select

from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import contact_flags, messages, promises, replies
from tests.portfolio import Portfolio
from tests.webhooks_support import Harness, live_server, state_counts, twilio_headers

PHONE = "+12125550101"
OTHER = "+12125550102"


@pytest.fixture
def hub(engine: Engine, config: Config, clock: FixedClock) -> Iterator[Harness]:
    book = Portfolio()
    book.borrower("B1", phone=PHONE, locale="en")
    book.borrower("B2", phone=OTHER, locale="es-MX", email="b2@example.com")
    book.loan("L1", "B1", first_due=date(2026, 12, 1))
    book.loan("L2", "B2", first_due=date(2026, 12, 1))
    book.save(engine)
    with live_server(engine, config, clock) as harness:
        yield harness


def _sent_rows(engine: Engine, channel: str = "sms", batch: str = "20261202-sms-1") -> None:
    now = datetime(2026, 12, 2, 14, 0).astimezone()
    with engine.begin() as conn:
        for loan_id in ("L1",):
            conn.execute(
                insert(messages).values(
                    loan_id=loan_id,
                    borrower_id="B1",
                    run_date=date(2026, 12, 2),
                    stage="early",
                    channel=channel,
                    episode=date(2026, 12, 1),
                    dpd=1,
                    status="sent",
                    locale="en",
                    body="Example Lending Co.: 100 USD is overdue. Press keys.",
                    provider="twilio",
                    provider_id="SM" + "1" * 32,
                    batch_key=batch,
                    created_at=now,
                    updated_at=now,
                    sent_at=now,
                )  # fmt: skip
            )


def _flags(engine: Engine) -> list[tuple[str, str, str | None, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                contact_flags.c.borrower_id,
                contact_flags.c.kind,
                contact_flags.c.channel,
                contact_flags.c.lifted_at,
            ).order_by(contact_flags.c.id)
        ).all()
    return [(b, k, c, lifted is None) for b, k, c, lifted in rows]


def test_stop_opts_out_of_sms_and_confirms_exactly_once(hub: Harness, engine: Engine) -> None:
    response = hub.sms("SM" + "a" * 32, PHONE, "Stop please")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert PHONE not in response.text and "B1" not in response.text
    assert _flags(engine) == [("B1", "opt_out", "sms", True)]
    assert [m.to for m in hub.senders["sms"].sent] == [PHONE]
    assert "unsubscribed" in hub.senders["sms"].sent[0].body
    hub.sms("SM" + "b" * 32, PHONE, "STOP")  # a second STOP: recorded, silence
    hub.sms("SM" + "a" * 32, PHONE, "Stop please")  # a retried webhook: nothing at all
    assert _flags(engine) == [("B1", "opt_out", "sms", True)]
    assert len(hub.senders["sms"].sent) == 1
    with engine.connect() as conn:
        assert conn.execute(select(replies.c.intent)).scalars().all() == ["stop", "stop"]


def test_start_lifts_the_opt_out_and_help_is_answered_even_when_opted_out(
    hub: Harness, engine: Engine
) -> None:
    hub.sms("SM" + "1" * 32, PHONE, "STOP")
    hub.sms("SM" + "2" * 32, PHONE, "HELP")
    hub.sms("SM" + "3" * 32, PHONE, "I will pay friday")  # opted out: recorded, no answer
    hub.sms("SM" + "4" * 32, PHONE, "START")
    bodies = [m.body for m in hub.senders["sms"].sent]
    assert len(bodies) == 3
    assert "unsubscribed" in bodies[0] and "PAY" in bodies[1] and "subscribed again" in bodies[2]
    assert _flags(engine) == [("B1", "opt_out", "sms", False)]
    with engine.connect() as conn:
        assert conn.execute(select(promises.c.promised_on)).scalars().all() == [date(2026, 12, 11)]


def test_promise_problems_get_a_clarification_and_record_nothing(
    hub: Harness, engine: Engine
) -> None:
    hub.sms("SM" + "5" * 32, PHONE, "I promise to pay")
    hub.sms("SM" + "6" * 32, PHONE, "pay 2026-11-20")
    hub.sms("SM" + "7" * 32, PHONE, "pay 2027-03-01")
    bodies = [m.body for m in hub.senders["sms"].sent]
    assert "which date" in bodies[0]
    assert "already passed" in bodies[1]
    assert "within 30 days" in bodies[2]
    with engine.connect() as conn:
        assert conn.execute(select(promises)).all() == []


def test_spanish_borrower_gets_a_spanish_answer(hub: Harness, engine: Engine) -> None:
    hub.sms("SM" + "8" * 32, OTHER, "pagaré el 20/12")
    assert "20 dic 2026" in hub.senders["sms"].sent[0].body
    assert "promesa" in hub.senders["sms"].sent[0].body


def test_unknown_sender_is_kept_masked_for_a_person_and_gets_no_answer(
    hub: Harness, engine: Engine
) -> None:
    assert hub.sms("SM" + "9" * 32, "+447700900123", "who is this?").status_code == 200
    assert hub.senders["sms"].sent == []
    with engine.connect() as conn:
        row = conn.execute(select(replies)).mappings().one()
    assert row["borrower_id"] is None and row["needs_person"] is True
    assert row["sender"] == "+44***23"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: h.pop("X-Twilio-Signature"), id="unsigned"),
        pytest.param(lambda h: h.update({"X-Twilio-Signature": "AAAA" + "=" * 24}), id="forged"),
    ],
)
def test_unsigned_or_forged_sms_is_refused_and_changes_nothing(
    hub: Harness, engine: Engine, mutate: object
) -> None:
    params = {"MessageSid": "SM" + "c" * 32, "From": PHONE, "Body": "STOP"}
    headers = twilio_headers("/webhooks/twilio/sms", params)
    mutate(headers)  # type: ignore[operator]
    before = state_counts(engine)
    response = hub.client.post("/webhooks/twilio/sms", content=urlencode(params), headers=headers)
    assert response.status_code == 403
    assert PHONE not in response.text
    assert state_counts(engine) == before and hub.senders["sms"].sent == []


def test_a_signature_for_another_url_or_other_params_is_refused(
    hub: Harness, engine: Engine
) -> None:
    params = {"MessageSid": "SM" + "d" * 32, "From": PHONE, "Body": "STOP"}
    local_url_signature = twilio_headers("/webhooks/twilio/sms", params)
    from twilio.request_validator import RequestValidator

    from tests.webhooks_support import TWILIO_TOKEN

    local = RequestValidator(TWILIO_TOKEN).compute_signature(
        hub.base_url + "/webhooks/twilio/sms", params
    )
    before = state_counts(engine)
    tampered = urlencode(params | {"Body": "PAID"})
    assert hub.client.post("/webhooks/twilio/sms", content=tampered,
                           headers=local_url_signature).status_code == 403  # fmt: skip
    headers = local_url_signature | {"X-Twilio-Signature": local}
    assert hub.client.post("/webhooks/twilio/sms", content=urlencode(params),
                           headers=headers).status_code == 403  # fmt: skip
    assert state_counts(engine) == before


def test_oversized_and_malformed_bodies_are_refused(hub: Harness, engine: Engine) -> None:
    before = state_counts(engine)
    big = {"MessageSid": "SM" + "e" * 32, "From": PHONE, "Body": "x" * 70_000}
    assert hub.twilio("/webhooks/twilio/sms", big).status_code == 413
    bad = hub.client.post(
        "/webhooks/twilio/sms", content=b"\xff\xfe=\x00", headers={"X-Twilio-Signature": "x"}
    )
    assert bad.status_code == 400
    missing = hub.twilio("/webhooks/twilio/sms", {"From": PHONE, "Body": "STOP"})
    assert missing.status_code == 400  # signed, but no MessageSid to be idempotent on
    assert state_counts(engine) == before


def test_status_callbacks_move_forward_only(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine)
    path = "/webhooks/twilio/status?ref=20261202-sms-1"
    sid = "SM" + "1" * 32
    assert hub.twilio(path, {"MessageSid": sid, "MessageStatus": "delivered"}).status_code == 204
    hub.twilio(path, {"MessageSid": sid, "MessageStatus": "sent"})  # late, out of order
    hub.twilio(path, {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003"})
    with engine.connect() as conn:
        assert conn.execute(select(messages.c.status)).scalars().all() == ["delivered"]


def test_undelivered_records_the_code_and_21610_opts_out(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine)
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "undelivered", "ErrorCode": "21610"}
    for _ in range(2):  # Twilio retries: the second changes nothing
        hub.twilio("/webhooks/twilio/status?ref=20261202-sms-1", params)
    with engine.connect() as conn:
        row = conn.execute(select(messages.c.status, messages.c.error_code)).one()
    assert tuple(row) == ("undeliverable", "21610")
    assert _flags(engine) == [("B1", "opt_out", "sms", True)]


def test_status_found_by_provider_id_without_ref(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine)
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "failed", "ErrorCode": "30008"}
    hub.twilio("/webhooks/twilio/status", params)
    with engine.connect() as conn:
        assert conn.execute(select(messages.c.status, messages.c.error_code)).one() == (
            "failed",
            "30008",
        )


def test_call_status_completed_is_delivered(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine, channel="voice", batch="20261202-voice-1")
    params = {"CallSid": "CA" + "1" * 32, "CallStatus": "completed"}
    hub.twilio("/webhooks/twilio/status?ref=20261202-voice-1", params)
    with engine.connect() as conn:
        assert conn.execute(select(messages.c.status)).scalar_one() == "delivered"


def test_voice_speaks_the_reminder_and_gathers_one_digit(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine, channel="voice", batch="20261202-voice-1")
    response = hub.twilio("/webhooks/twilio/voice?ref=20261202-voice-1",
                          {"CallSid": "CA" + "2" * 32})  # fmt: skip
    assert response.status_code == 200
    assert 'numDigits="1"' in response.text and "100 USD is overdue" in response.text
    assert "https://bot.lender.example/webhooks/twilio/voice?ref=20261202-voice-1" in response.text


def test_voicemail_has_no_account_details(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine, channel="voice", batch="20261202-voice-1")
    params = {"CallSid": "CA" + "3" * 32, "AnsweredBy": "machine_end_beep"}
    text = hub.twilio("/webhooks/twilio/voice?ref=20261202-voice-1", params).text
    assert "USD" not in text and "overdue" not in text and "Gather" not in text
    assert "Example Lending Co." in text and "call us back" in text
    amd = hub.twilio("/webhooks/twilio/voice?ref=20261202-voice-1&event=amd", params)
    assert "USD" not in amd.text
    assert state_counts(engine)["replies"] == 0


def test_voice_keys_link_callback_and_promise_once_each(hub: Harness, engine: Engine) -> None:
    _sent_rows(engine, channel="voice", batch="20261202-voice-1")
    path = "/webhooks/twilio/voice?ref=20261202-voice-1"
    call = "CA" + "4" * 32
    for digit in ("1", "2", "3", "3", "1"):  # repeated keys: recorded once
        assert hub.twilio(path, {"CallSid": call, "Digits": digit}).status_code == 200
    assert [m.body for m in hub.senders["sms"].sent] == [
        "Example Lending Co.: pay here: https://pay.lender.example"
    ]
    with engine.connect() as conn:
        rows = conn.execute(
            select(replies.c.intent, replies.c.needs_person).order_by(replies.c.id)
        ).all()
        promised = conn.execute(select(promises.c.promised_on)).scalars().all()
    assert [tuple(r) for r in rows] == [("pay_link", False), ("callback", True), ("promise", False)]
    assert promised == [date(2026, 12, 11)]
    other = hub.twilio(path, {"CallSid": call, "Digits": "9"})
    assert 'numDigits="1"' in other.text  # an unknown key repeats the menu


def test_an_answer_refused_as_opted_out_records_the_opt_out(hub: Harness, engine: Engine) -> None:
    from reminder.errors import PermanentSendError

    def refuse(message: object) -> None:
        raise PermanentSendError("twilio 400/21610: unsubscribed", "21610", opted_out=True)

    hub.senders["sms"].send = refuse  # type: ignore[method-assign]
    assert hub.sms("SM" + "f" * 32, PHONE, "HELP").status_code == 200
    assert _flags(engine) == [("B1", "opt_out", "sms", True)]


def test_concurrent_retries_of_one_message_record_and_answer_once(
    hub: Harness, engine: Engine
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    params = {"MessageSid": "SM" + "9" * 32, "From": PHONE, "Body": "STOP"}
    headers = twilio_headers("/webhooks/twilio/sms", params)

    def post(_: int) -> int:
        with httpx.Client(base_url=hub.base_url, timeout=30) as client:
            response = client.post(
                "/webhooks/twilio/sms", content=urlencode(params), headers=headers
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(post, range(8))) == {200}
    assert state_counts(engine)["replies"] == 1
    assert _flags(engine) == [("B1", "opt_out", "sms", True)]
    assert len(hub.senders["sms"].sent) == 1
