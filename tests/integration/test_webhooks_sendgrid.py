"""SendGrid Event Webhook (ECDSA-signed) and Inbound Parse (secret URL) under uvicorn."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import date, datetime

import pytest
from sqlalchemy import Engine, insert, select

from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import contact_flags, messages, replies
from tests.portfolio import Portfolio
from tests.webhooks_support import INBOUND_SECRET, Harness, SendGridKeys, live_server, state_counts

EMAIL = "ana.lopez@example.com"


@pytest.fixture
def hub(engine: Engine, config: Config, clock: FixedClock) -> Iterator[Harness]:
    book = Portfolio()
    book.borrower("B1", phone="+12125550101", email=EMAIL, locale="es-MX")
    book.borrower("B2", phone="+12125550102", email="wei@example.com", locale="zh-CN")
    book.loan("L1", "B1", first_due=date(2026, 12, 1))
    book.loan("L2", "B2", first_due=date(2026, 12, 1))
    book.save(engine)
    now = datetime(2026, 12, 2, 14, 0).astimezone()
    with engine.begin() as conn:
        conn.execute(
            insert(messages).values(
                loan_id="L1",
                borrower_id="B1",
                run_date=date(2026, 12, 2),
                stage="early",
                channel="email",
                episode=date(2026, 12, 1),
                dpd=1,
                status="sent",
                locale="es-MX",
                body="...",
                provider="sendgrid",
                provider_id="sgid123",
                batch_key="20261202-email-1",
                created_at=now,
                updated_at=now,
                sent_at=now,
            )  # fmt: skip
        )
    with live_server(engine, config, clock) as harness:
        yield harness


def _event(kind: str, **extra: object) -> dict[str, object]:
    return {
        "event": kind,
        "email": EMAIL,
        "timestamp": 1796000000,
        "ref": "20261202-email-1",
        "sg_message_id": "sgid123.filter0001.1.0",
        "sg_event_id": f"ev-{kind}",
        **extra,
    }


def _status(engine: Engine) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(select(messages.c.status, messages.c.error_code)).one()
    return row[0], row[1]


def _flags(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        query = select(contact_flags.c.kind, contact_flags.c.channel).order_by(contact_flags.c.id)
        return [tuple(r) for r in conn.execute(query)]  # type: ignore[misc]


def test_signed_delivered_then_late_processed_stays_delivered(hub: Harness, engine: Engine) -> None:
    assert hub.sendgrid_events([_event("processed"), _event("delivered")]).status_code == 204
    assert hub.sendgrid_events([_event("processed"), _event("deferred")]).status_code == 204
    assert _status(engine) == ("delivered", None)


def test_hard_bounce_marks_the_address_bad_once(hub: Harness, engine: Engine) -> None:
    bounce = _event("bounce", type="bounce", status="5.1.1", reason="550 no such user")
    for _ in range(2):
        assert hub.sendgrid_events([bounce]).status_code == 204
    assert _status(engine) == ("undeliverable", "5.1.1")
    assert _flags(engine) == [("bad_address", "email")]


def test_unsubscribe_and_spamreport_opt_out_of_email(hub: Harness, engine: Engine) -> None:
    hub.sendgrid_events([_event("delivered"), _event("unsubscribe"), _event("spamreport")])
    assert _status(engine) == ("delivered", None)
    assert _flags(engine) == [("opt_out", "email")]


@pytest.mark.parametrize("case", ["unsigned", "other_key", "stale", "tampered", "garbage"])
def test_events_not_signed_by_sendgrid_are_refused(hub: Harness, engine: Engine, case: str) -> None:
    payload = json.dumps([_event("bounce", type="bounce")]).encode()
    headers = hub.keys.headers(payload)
    if case == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif case == "other_key":
        headers = SendGridKeys().headers(payload)
    elif case == "stale":  # a replay of a batch signed ten minutes ago
        headers = hub.keys.headers(payload, timestamp=int(time.time()) - 600)
    elif case == "tampered":
        payload = payload.replace(b"bounce", b"unsubscribe")
    else:
        headers["X-Twilio-Email-Event-Webhook-Signature"] = base64.b64encode(b"junk").decode()
    before = state_counts(engine)
    response = hub.client.post("/webhooks/sendgrid/events", content=payload, headers=headers)
    assert response.status_code == 403
    assert EMAIL not in response.text
    assert state_counts(engine) == before


def test_signed_but_malformed_events_are_a_400(hub: Harness, engine: Engine) -> None:
    before = state_counts(engine)
    for payload in (b"{not json", b'{"event": "bounce"}', b"[1, 2]"):
        response = hub.client.post(
            "/webhooks/sendgrid/events", content=payload, headers=hub.keys.headers(payload)
        )
        assert response.status_code == 400
    assert state_counts(engine) == before


def _inbound(text: str, **extra: str) -> dict[str, str]:
    headers = "Message-ID: <abc123@mail.example.com>\r\nFrom: Ana <ANA.LOPEZ@example.com>\r\n"
    return {"from": "Ana López <ANA.LOPEZ@Example.com>", "to": "reply@lender.example",
            "subject": "Re: Recordatorio de pago", "text": text, "headers": headers,
            **extra}  # fmt: skip


def test_inbound_email_unsubscribe_opts_out_of_email_only(hub: Harness, engine: Engine) -> None:
    quoted = "Darme de baja por favor\n\nEl lun, 1 dic 2026, Lender escribió:\n> pague hoy"
    assert hub.inbound_email(_inbound(quoted)).status_code == 200
    assert hub.inbound_email(_inbound(quoted)).status_code == 200  # SendGrid retry
    assert _flags(engine) == [("opt_out", "email")]
    assert len(hub.senders["email"].sent) == 1
    answer = hub.senders["email"].sent[0]
    assert answer.to == EMAIL and "baja" in answer.body
    assert answer.subject == "Re: Recordatorio de pago"


def test_quoted_reminder_text_is_not_read_as_the_reply(hub: Harness, engine: Engine) -> None:
    text = "Ya pagué ayer.\n\nOn Mon, Dec 1, 2026 Lender wrote:\n> Reply STOP to unsubscribe"
    hub.inbound_email(_inbound(text))
    with engine.connect() as conn:
        assert conn.execute(select(replies.c.intent, replies.c.needs_person)).one() == (
            "paid",
            True,
        )
    assert _flags(engine) == []


def test_auto_replies_are_recorded_but_never_answered(hub: Harness, engine: Engine) -> None:
    fields = _inbound("I am out of the office until Monday.")
    fields["headers"] += "Auto-Submitted: auto-replied\r\n"
    hub.inbound_email(fields)
    assert hub.senders["email"].sent == []
    assert state_counts(engine)["replies"] == 1


def test_raw_mime_mode_and_basic_auth(hub: Harness, engine: Engine) -> None:
    raw = (
        "From: =?utf-8?b?546L5LyfIA==?= <wei@example.com>\r\nMessage-ID: <zh-1@example.com>\r\n"
        "Subject: =?utf-8?b?5Zue5aSN?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n我会在12月20日还款\r\n"
    )
    auth = base64.b64encode(f"sendgrid:{INBOUND_SECRET}".encode()).decode()
    response = hub.client.post(
        "/webhooks/sendgrid/inbound",
        files={"email": (None, raw), "to": (None, "reply@lender.example")},
        headers={"Authorization": f"Basic {auth}"},
    )
    assert response.status_code == 200
    with engine.connect() as conn:
        row = conn.execute(select(replies.c.intent, replies.c.promise_date)).one()
    assert tuple(row) == ("promise", date(2026, 12, 20))
    assert "12月20日" in hub.senders["email"].sent[0].body  # zh-CN answer, zh date


@pytest.mark.parametrize("key", ["", "wrong", INBOUND_SECRET + "x"])
def test_inbound_without_the_secret_is_refused(hub: Harness, engine: Engine, key: str) -> None:
    before = state_counts(engine)
    response = hub.inbound_email(_inbound("STOP"), key=key)
    assert response.status_code == 403
    bad_auth = base64.b64encode(b"sendgrid:nope").decode()
    response = hub.client.post(
        "/webhooks/sendgrid/inbound",
        files={"from": (None, EMAIL), "text": (None, "STOP")},
        headers={"Authorization": f"Basic {bad_auth}"},
    )
    assert response.status_code == 403
    assert state_counts(engine) == before and hub.senders["email"].sent == []


def test_inbound_that_is_not_a_form_is_a_400(hub: Harness, engine: Engine) -> None:
    before = state_counts(engine)
    response = hub.client.post(
        f"/webhooks/sendgrid/inbound?key={INBOUND_SECRET}",
        content=b'{"from": "x"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert state_counts(engine) == before


def test_healthz(hub: Harness) -> None:
    response = hub.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "database": "ok"}
