"""The dispatcher over SQLite and PostgreSQL: retries, failures, opt-outs, the rate limit,
the re-check before sending, and reconciliation of rows a crash left in `sending`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from reminder.bootstrap import App, bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import contact_flags, messages, payments
from reminder.errors import PermanentSendError, SendError, TransientSendError
from reminder.ports import OutgoingMessage, SendResult
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.dispatch import dispatch_due
from reminder.services.sending import RetryPolicy, TokenBucket
from tests.portfolio import Portfolio

D = date(2026, 12, 2)
SEND_AT = datetime(2026, 12, 2, 15, tzinfo=UTC)  # 10:00 in New York: inside the window
FAST = RetryPolicy(attempts=3, first_wait=0.001, max_wait=0.002, max_total=5)


class FakeSender:
    """An in-memory adapter: records sends, raises what it is told, can be looked up."""

    provider = "fake"
    lookup_window = timedelta(0)

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.times: list[float] = []
        self.errors: list[SendError] = []  # raised by the next sends, in order
        self.known: dict[str, str] = {}  # reference -> provider id, for lookup()
        self.lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        with self.lock:
            self.times.append(time.monotonic())
            if self.errors:
                raise self.errors.pop(0)
            self.sent.append(message)
            return SendResult(self.provider, f"F{len(self.sent)}")

    def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        found = self.known.get(message.reference)
        return SendResult(self.provider, found) if found else None


class NoLookupSender(FakeSender):
    lookup = None  # type: ignore[assignment]


@pytest.fixture
def sms() -> FakeSender:
    return FakeSender()


@pytest.fixture
def app(engine: Engine, config: Config, sms: FakeSender) -> Iterator[App]:
    yield bootstrap(config, engine=engine, clock=FixedClock(SEND_AT),
                    senders={"sms": sms, "email": FakeSender(), "voice": FakeSender()})


def plan(app: App, borrowers: int = 1, day: date = D, **loan: Any) -> None:
    p = Portfolio()
    for n in range(borrowers):
        p.loan(f"L{n}", p.borrower(f"B{n}", phone=f"+1212555{n:04d}"),
               first_due=D - timedelta(days=2), count=1, **loan)
    p.save(app.engine)
    run_day(app, RunOptions(run_date=day, dispatch=False))


def rows(app: App, channel: str = "sms") -> list[dict[str, Any]]:
    with app.engine.connect() as conn:
        query = select(messages).where(messages.c.channel == channel).order_by(messages.c.id)
        return [dict(r) for r in conn.execute(query).mappings()]


def test_a_due_message_is_sent_once_with_the_providers_id(app: App, sms: FakeSender):
    plan(app)
    report = dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["provider"], row["provider_id"]) == ("sent", "fake", "F1")
    assert row["body"] == sms.sent[0].body and "$100.00" in row["body"]
    assert report.sent == 2  # the SMS and the email
    assert dispatch_due(app, SEND_AT, retry=FAST).sent == 0 and len(sms.sent) == 1


def test_an_upcoming_reminder_asks_for_the_installment_falling_due(app: App, sms: FakeSender):
    p = Portfolio()
    p.loan("L0", p.borrower("B0"), first_due=D + timedelta(days=2), count=2, amount="250.00")
    p.save(app.engine)
    run_day(app, RunOptions(run_date=D, dispatch=False))
    dispatch_due(app, SEND_AT, retry=FAST)
    assert "$250.00" in sms.sent[0].body


def test_transient_errors_are_retried_within_the_pass(app: App, sms: FakeSender):
    plan(app)
    sms.errors = [TransientSendError("503", "20503"), TransientSendError("timeout", "timeout")]
    dispatch_due(app, SEND_AT, retry=FAST)
    assert rows(app)[0]["status"] == "sent" and len(sms.times) == 3


def test_retry_after_is_a_floor_for_the_wait(app: App, sms: FakeSender):
    plan(app)
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, first_wait=0.001, max_wait=0.002, sleep=slept.append)
    sms.errors = [TransientSendError("429", "20429", retry_after=2.0)]
    dispatch_due(app, SEND_AT, retry=policy)
    assert slept and slept[0] >= 2.0 and rows(app)[0]["status"] == "sent"


def test_exhausted_retries_leave_the_row_planned_for_a_later_pass(app: App, sms: FakeSender):
    plan(app)
    sms.errors = [TransientSendError("500", "20500")] * 3
    report = dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["attempts"], row["error_code"]) == ("planned", 1, "20500")
    assert row["not_before"] > SEND_AT and report.deferred == 1
    assert dispatch_due(app, SEND_AT, retry=FAST).sent == 0  # not again in the same instant
    later = row["not_before"] + timedelta(seconds=1)
    dispatch_due(app, later, retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["attempts"]) == ("sent", 2)


def test_a_permanent_error_fails_with_the_providers_code(app: App, sms: FakeSender):
    plan(app, borrowers=2)
    sms.errors = [PermanentSendError("Invalid 'To' Phone Number", "21211")]
    dispatch_due(app, SEND_AT, retry=FAST)
    statuses = sorted((r["status"], r["error_code"]) for r in rows(app))
    assert statuses == [("failed", "21211"), ("sent", None)] and len(sms.times) == 2


def test_an_opted_out_recipient_is_flagged_and_not_contacted_again(app: App, sms: FakeSender):
    plan(app)
    sms.errors = [PermanentSendError("unsubscribed", "21610", opted_out=True)]
    dispatch_due(app, SEND_AT, retry=FAST)
    with app.engine.connect() as conn:
        flags = conn.execute(select(contact_flags.c.kind, contact_flags.c.channel)).all()
    assert flags == [("opt_out", "sms")]
    run_day(app, RunOptions(run_date=D + timedelta(days=3), dispatch=False))
    assert [(r["status"], r["reason"]) for r in rows(app)][-1] == ("suppressed", "opted_out")


def test_a_payment_after_planning_cancels_the_send(app: App, sms: FakeSender):
    plan(app)
    with app.engine.begin() as conn:
        conn.execute(insert(payments).values(payment_id="P1", loan_id="L0", paid_on=D,
                                             amount=Decimal("100.00"), source="ledger"))
    report = dispatch_due(app, SEND_AT, retry=FAST)
    assert [(r["status"], r["reason"]) for r in rows(app)] == [("suppressed", "no_longer_due")]
    assert sms.sent == [] and report.cancelled == 2


def test_two_loans_of_one_borrower_go_out_as_one_message(app: App, sms: FakeSender):
    p = Portfolio()
    borrower = p.borrower("B0")
    p.loan("L1", borrower, first_due=D - timedelta(days=2), count=1)
    p.loan("L2", borrower, first_due=D - timedelta(days=3), count=1, amount="50.00")
    p.save(app.engine)
    run_day(app, RunOptions(run_date=D, dispatch=False))
    dispatch_due(app, SEND_AT, retry=FAST)
    assert len(sms.sent) == 1 and "$150.00" in sms.sent[0].body
    assert {r["provider_id"] for r in rows(app)} == {"F1"}


def test_the_rate_limit_is_never_exceeded_in_any_second(app: App, sms: FakeSender):
    plan(app, borrowers=70)
    limiter = TokenBucket(rate=50)
    dispatch_due(app, SEND_AT, retry=FAST, limiters={"sms": limiter})
    times = sorted(sms.times)
    assert len(times) == 70
    busiest = max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))
    assert 40 <= busiest <= 50  # never above the rate; close to it unless the CPU starves us


def _crash_mid_send(app: App, claimed_by: str = "elsewhere-host-gone:1") -> dict[str, Any]:
    """Leave the SMS row as a dead dispatcher would: `sending`, body stored, old claim."""
    with app.engine.begin() as conn:
        conn.execute(update(messages).where(messages.c.channel == "sms").values(
            status="sending", batch_key="20261202-sms-1", body="Pay now. Reply STOP to opt out.",
            claimed_by=claimed_by, updated_at=SEND_AT - timedelta(hours=1)))  # fmt: skip
    return rows(app)[0]


def test_a_send_the_provider_took_before_the_crash_is_reconciled_as_sent(app, sms):
    plan(app)
    _crash_mid_send(app)
    sms.known["20261202-sms-1"] = "SMfound"
    report = dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["provider_id"]) == ("sent", "SMfound") and sms.sent == []
    assert report.sent >= 1


def test_a_send_the_provider_does_not_know_becomes_unknown_never_resent(app, sms):
    plan(app)
    _crash_mid_send(app)
    dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert row["status"] == "unknown" and "20261202-sms-1" in row["error"]
    assert sms.sent == []


def test_without_a_lookup_a_crashed_send_is_left_to_a_person(engine, config):
    sender = NoLookupSender()
    app = bootstrap(config, engine=engine, senders={"sms": sender, "email": FakeSender()})
    plan(app)
    _crash_mid_send(app)
    dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert row["status"] == "unknown" and "no lookup" in row["error"] and sender.sent == []


def test_a_claim_of_a_live_dispatcher_is_left_alone(app: App, sms: FakeSender):
    import os
    import socket

    plan(app)
    _crash_mid_send(app, claimed_by=f"{socket.gethostname()}:{os.getpid()}")
    dispatch_due(app, SEND_AT - timedelta(minutes=55), retry=FAST)
    assert rows(app)[0]["status"] == "sending" and sms.sent == []


def test_a_status_callback_that_beats_our_record_is_kept(app: App, sms: FakeSender):
    plan(app)
    original = sms.send

    def send_then_callback(message: OutgoingMessage) -> SendResult:
        result = original(message)
        with app.engine.begin() as conn:  # what the status webhook does, found by reference
            conn.execute(update(messages).where(messages.c.batch_key == message.reference)
                         .values(status="delivered"))  # fmt: skip
        return result

    sms.send = send_then_callback  # type: ignore[method-assign]
    dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["provider_id"]) == ("delivered", "F1")


def test_a_channel_that_cannot_be_built_claims_nothing(engine, config, monkeypatch):
    from reminder.config import ChannelConfig

    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    channels = {**config.channels, "sms": ChannelConfig.model_validate(
        {"provider": "twilio", "from": "+15005550001"})}  # fmt: skip
    app = bootstrap(config.model_copy(update={"channels": channels}), engine=engine,
                    senders={"email": FakeSender()})  # fmt: skip
    plan(app)
    report = dispatch_due(app, SEND_AT, retry=FAST)
    assert [r["status"] for r in rows(app)] == ["planned"]
    assert any("TWILIO_" in e for e in report.errors)


class FakeBatchSender(FakeSender):
    """Like SendGrid: many messages per request, an outcome each."""

    max_batch = 1000

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[int] = []

    def send_batch(self, batch: list[OutgoingMessage]) -> list[SendResult | SendError]:
        self.requests.append(len(batch))
        if self.errors:
            error = self.errors.pop(0)
            return [error] * len(batch)
        self.sent.extend(batch)
        return [SendResult(self.provider, f"B-{m.reference}") for m in batch]


def test_emails_go_out_in_batches_through_a_batch_verb(engine, config):
    email = FakeBatchSender()
    app = bootstrap(config, engine=engine, senders={"sms": FakeSender(), "email": email})
    plan(app, borrowers=30)
    email.errors = [TransientSendError("sendgrid 503", "503")]
    dispatch_due(app, SEND_AT, retry=FAST)
    statuses = {r["status"] for r in rows(app, "email")}
    assert statuses == {"sent"} and len(email.sent) == 30
    assert email.requests[0] == email.requests[1] and len(email.requests) < 30


def test_a_batch_that_timed_out_is_left_to_a_person_not_resent(engine, config):
    email = FakeBatchSender()
    app = bootstrap(config, engine=engine, senders={"sms": FakeSender(), "email": email})
    plan(app, borrowers=3)
    email.errors = [TransientSendError("sendgrid timeout", "timeout")]
    dispatch_due(app, SEND_AT, retry=FAST)
    assert {r["status"] for r in rows(app, "email")} == {"unknown"} and email.requests == [3]


def test_two_dispatchers_at_once_send_each_consolidated_message_once(engine, config):
    sms = FakeSender()
    app = bootstrap(config, engine=engine, senders={"sms": sms, "email": FakeSender()})
    p = Portfolio()
    for n in range(120):
        borrower = p.borrower(f"B{n}", phone=f"+1212555{n:04d}")
        p.loan(f"L{n}a", borrower, first_due=D - timedelta(days=2), count=1)
        p.loan(f"L{n}b", borrower, first_due=D - timedelta(days=3), count=1)
    p.save(engine)
    run_day(app, RunOptions(run_date=D, dispatch=False))
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            dispatch_due(app, SEND_AT, retry=FAST)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(m.to for m in sms.sent) == sorted(f"+1212555{n:04d}" for n in range(120))
    sent = rows(app)
    assert {r["status"] for r in sent} == {"sent"} and len(sent) == 240
    assert len({r["provider_id"] for r in sent}) == 120


def test_a_claim_that_is_all_cancellations_does_not_end_the_pass(
    engine: Engine, config: Config
) -> None:
    """Regression: a rate-1 lane whose claim held only cancelled rows ended the pass early."""
    p = Portfolio()
    for n in range(5):  # grade E in mid: sms, email and voice (voice: one claim at a time)
        p.loan(f"L{n}", p.borrower(f"B{n}", risk_grade="E"), first_due=date(2026, 11, 20),
               count=1)
    p.save(engine)
    app = bootstrap(config, engine=engine, clock=FixedClock(datetime(2026, 12, 2, 12, tzinfo=UTC)))
    run_day(app, RunOptions(run_date=date(2026, 12, 2), dispatch=False))
    with engine.begin() as conn:  # four of the five pay before the window opens
        conn.execute(insert(payments), [
            {"payment_id": f"P{n}", "loan_id": f"L{n}", "paid_on": date(2026, 12, 2),
             "amount": Decimal("100.00"), "source": "ledger"} for n in range(4)])
    dispatch_due(app, datetime(2026, 12, 3, 1, tzinfo=UTC))
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(messages.c.loan_id, messages.c.status).where(
            messages.c.channel == "voice")).all())
    assert statuses == {"L0": "suppressed", "L1": "suppressed", "L2": "suppressed",
                        "L3": "suppressed", "L4": "sent"}
