"""Fuzzing the public endpoints of the running server with hypothesis.

Unsigned (or wrongly signed) requests of any shape must get a 4xx and change nothing;
correctly signed requests with arbitrary content must never produce a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert

from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import messages
from tests.portfolio import Portfolio
from tests.webhooks_support import Harness, live_server, state_counts

PATHS = [
    "/webhooks/twilio/sms",
    "/webhooks/twilio/status",
    "/webhooks/twilio/voice",
    "/webhooks/sendgrid/events",
    "/webhooks/sendgrid/inbound",
]
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PHONE = "+12125550101"
TEXT = st.text(max_size=40)
PARAM_NAMES = st.sampled_from(
    ["MessageSid", "CallSid", "From", "Body", "MessageStatus", "CallStatus", "ErrorCode",
     "Digits", "AnsweredBy", "from", "text", "email", "headers", "event"]
)  # fmt: skip
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Twilio-Signature": TEXT,
        "X-Twilio-Email-Event-Webhook-Signature": TEXT,
        "X-Twilio-Email-Event-Webhook-Timestamp": st.integers(0, 2**40).map(str) | TEXT,
        "Authorization": st.sampled_from(["Basic ", "Basic Og==", "Bearer x"]) | TEXT,
        "Content-Type": st.sampled_from(
            [
                "application/x-www-form-urlencoded",
                "application/json",
                "multipart/form-data",
                "multipart/form-data; boundary=x",
                "text/plain",
            ]
        ),  # fmt: skip
    },
).map(
    lambda headers: {
        k: v for k, v in headers.items() if v.isprintable() and v.isascii() and v == v.strip()
    }
)
BODY = st.one_of(
    st.binary(max_size=2000),
    st.dictionaries(PARAM_NAMES, TEXT, max_size=8).map(lambda d: urlencode(d).encode()),
    st.lists(st.dictionaries(PARAM_NAMES, TEXT, max_size=4), max_size=3).map(
        lambda items: json.dumps(items).encode()
    ),
)
QUERY = st.sampled_from(["", "?ref=20261202-sms-1", "?key=wrong", "?key=", "?event=amd&ref=x"])


@pytest.fixture
def hub(engine: Engine, config: Config, clock: FixedClock) -> Iterator[Harness]:
    book = Portfolio()
    book.borrower("B1", phone=PHONE)
    book.loan("L1", "B1", first_due=date(2026, 12, 1))
    book.save(engine)
    now = datetime(2026, 12, 2, 14, 0).astimezone()
    with engine.begin() as conn:
        for channel in ("sms", "voice"):
            conn.execute(
                insert(messages).values(
                    loan_id="L1",
                    borrower_id="B1",
                    run_date=date(2026, 12, 2),
                    stage="early",
                    channel=channel,
                    episode=date(2026, 12, 1),
                    dpd=1,
                    status="sent",
                    locale="en",
                    body="reminder",
                    provider="twilio",
                    provider_id=f"{channel}1",
                    batch_key=f"20261202-{channel}-1",
                    created_at=now,
                    updated_at=now,
                )  # fmt: skip
            )
    with live_server(engine, config, clock) as harness:
        yield harness


@FUZZ
@given(path=st.sampled_from(PATHS), query=QUERY, headers=HEADERS, body=BODY)
def test_unsigned_requests_get_a_4xx_and_change_nothing(
    hub: Harness, engine: Engine, path: str, query: str, headers: dict[str, str], body: bytes
) -> None:
    before = state_counts(engine)
    response = hub.client.post(path + query, content=body, headers=headers)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert PHONE not in response.text
    assert state_counts(engine) == before
    assert not any(sender.sent for sender in hub.senders.values())


@FUZZ
@given(
    path=st.sampled_from(PATHS[:3]),
    query=st.sampled_from(["", "?ref=20261202-sms-1", "?ref=20261202-voice-1", "?event=amd"]),
    params=st.dictionaries(PARAM_NAMES, TEXT, max_size=8),
)
def test_signed_twilio_requests_of_any_content_never_fail_with_500(
    hub: Harness, path: str, query: str, params: dict[str, str]
) -> None:
    response = hub.twilio(path + query, params)
    assert response.status_code < 500, response.text


@FUZZ
@given(
    events=st.lists(
        st.dictionaries(
            st.sampled_from(["event", "type", "status", "ref", "sg_message_id", "reason"]),
            st.one_of(
                st.none(), st.integers(), TEXT, st.sampled_from(["bounce", "20261202-sms-1"])
            ),
        ),
        max_size=5,
    )
)
def test_signed_sendgrid_batches_of_any_content_never_fail_with_500(
    hub: Harness, events: list[dict[str, object]]
) -> None:
    assert hub.sendgrid_events(events).status_code == 204
