"""The services' audit hooks over SQLite and PostgreSQL: sends, re-checks, status callbacks,
replies and their flags, agency outcomes — each one row, ids and codes only, chain intact."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from reminder.bootstrap import App, bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import audit_log, cases, messages, payments
from reminder.errors import PermanentSendError, SendError
from reminder.ports import OutgoingMessage, SendResult
from reminder.services import audit
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.delivery_status import StatusEvent, apply_status
from reminder.services.dispatch import dispatch_due
from reminder.services.outcomes import ingest
from reminder.services.replies import InboundReply, handle_reply
from reminder.services.sending import RetryPolicy
from tests.portfolio import Portfolio

D = date(2026, 12, 2)
SEND_AT = datetime(2026, 12, 2, 15, tzinfo=UTC)  # 10:00 in New York
FAST = RetryPolicy(attempts=2, first_wait=0.001, max_wait=0.002, max_total=5)
PHONE = "+12125550123"


class FakeSender:
    """Records sends; raises the queued errors first."""

    provider = "fake"

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.errors: list[SendError] = []
        self.lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        with self.lock:
            if self.errors:
                raise self.errors.pop(0)
            self.sent.append(message)
            return SendResult(self.provider, f"F{len(self.sent)}")


@pytest.fixture
def sms() -> FakeSender:
    return FakeSender()


@pytest.fixture
def app(engine: Engine, config: Config, sms: FakeSender) -> Iterator[App]:
    app = bootstrap(config, engine=engine, clock=FixedClock(SEND_AT),
                    senders={"sms": sms, "email": FakeSender(), "voice": FakeSender()})  # fmt: skip
    p = Portfolio()
    p.loan("L1", p.borrower("B1", phone=PHONE, email=None), first_due=D - timedelta(days=2),
           count=1)  # fmt: skip
    p.loan("L3", p.borrower("B3", phone="+12125550177"), first_due=D - timedelta(days=120),
           count=1)  # fmt: skip
    p.save(engine)
    run_day(app, RunOptions(run_date=D, dispatch=False))
    yield app


def _events(app: App, kind: str) -> list[Any]:
    with app.engine.connect() as conn:
        query = select(audit_log).where(audit_log.c.kind == kind).order_by(audit_log.c.id)
        return list(conn.execute(query))


def _intact(app: App) -> bool:
    with app.engine.connect() as conn:
        result = audit.verify(conn)
        text = json.dumps([row.detail for row in conn.execute(select(audit_log))])
    assert PHONE not in text and "Borrower B" not in text and "example.com" not in text
    return result.ok


def test_a_send_appends_one_send_row_per_message_with_the_providers_id(app: App) -> None:
    dispatch_due(app, SEND_AT, retry=FAST)
    sends = _events(app, "send")
    assert [(row.loan_id, row.detail["status"], row.detail["provider_id"]) for row in sends] == [
        ("L1", "sent", "F1")]
    assert _intact(app)


def test_a_refused_send_and_the_opt_out_it_reports_are_recorded(
    app: App, sms: FakeSender
) -> None:
    sms.errors = [PermanentSendError(f"twilio 400/21610: {PHONE} unsubscribed", "21610",
                                     opted_out=True)]  # fmt: skip
    dispatch_due(app, SEND_AT, retry=FAST)
    (send,) = _events(app, "send")
    assert (send.detail["status"], send.detail["error_code"]) == ("failed", "21610")
    (flag,) = _events(app, "flag")
    assert (flag.borrower_id, flag.detail["flag"], flag.detail["channel"]) == (
        "B1", "opt_out", "sms")
    assert _intact(app)


def test_a_payment_before_the_send_is_recorded_as_a_cancelling_decision(app: App) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(payments).values(
            payment_id="P1", loan_id="L1", paid_on=D, amount=Decimal("100.00"), source="ledger"))
    dispatch_due(app, SEND_AT, retry=FAST)
    decisions = [row for row in _events(app, "decision")
                 if row.loan_id == "L1" and row.detail["channel"] == "sms"]  # fmt: skip
    assert [(d.detail["status"], d.detail["reason"]) for d in decisions] == [
        ("planned", None), ("suppressed", "no_longer_due")]
    assert decisions[0].message_id == decisions[1].message_id
    assert _intact(app)


def test_a_delivery_callback_appends_a_status_row_once(app: App) -> None:
    dispatch_due(app, SEND_AT, retry=FAST)
    with app.engine.connect() as conn:
        ref = conn.execute(select(messages.c.batch_key).where(messages.c.loan_id == "L1")).scalar()
    event = StatusEvent(ref=ref, provider_id="F1", status="delivered", source="twilio")
    apply_status(app, event)
    apply_status(app, event)  # providers retry callbacks: nothing new
    (status,) = _events(app, "status")
    assert (status.loan_id, status.detail["status"], status.detail["source"]) == (
        "L1", "delivered", "twilio")
    assert _intact(app)


def test_a_reply_and_its_effect_are_recorded_without_its_text(app: App) -> None:
    handle_reply(app, InboundReply(channel="sms", sender=PHONE, body="STOP", provider_ref="SMr1"))
    handle_reply(app, InboundReply(channel="sms", sender=PHONE, body="STOP", provider_ref="SMr1"))
    (reply,) = _events(app, "reply")
    assert (reply.borrower_id, reply.detail["intent"], reply.detail["channel"]) == (
        "B1", "stop", "sms")
    (flag,) = _events(app, "flag")
    assert (flag.detail["flag"], flag.detail["action"]) == ("opt_out", "added")
    handle_reply(app, InboundReply(channel="sms", sender=PHONE, body="START", provider_ref="SMr2"))
    assert [row.detail["action"] for row in _events(app, "flag")] == ["added", "lifted"]
    assert _intact(app)


def test_an_agency_outcome_is_recorded_without_its_note(app: App) -> None:
    with app.engine.connect() as conn:
        case_id, agency = conn.execute(select(cases.c.case_id, cases.c.agency_id)).one()
    row = {"case_id": case_id, "outcome": "payment", "amount": "40.00", "date": D.isoformat(),
           "agency_ref": "A-1", "note": "spoke to Borrower B3 at +12125550177"}  # fmt: skip
    assert ingest(app, agency, [(2, row)]).imported == 1
    (outcome,) = _events(app, "outcome")
    assert (outcome.loan_id, outcome.detail["outcome"], outcome.detail["amount"]) == (
        "L3", "payment", "40.00")
    assert "note" not in outcome.detail
    assert _intact(app)
