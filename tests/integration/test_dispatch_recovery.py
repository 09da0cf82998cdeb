"""The dispatcher recovering from faults the fault tests (tests/e2e/test_dispatch_faults.py)
found: a timeout the provider answers only later, a database connection that drops under
the rate limiter, a commit or a whole pass lost with the connection, over SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from reminder.bootstrap import App, bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.errors import UnconfirmedSendError
from reminder.services import recording
from reminder.services.dispatch import dispatch_due
from tests.integration.test_dispatch import FAST, SEND_AT, FakeSender, plan, rows

WINDOW = timedelta(seconds=30)


def dropped(statement: str = "UPDATE messages SET body=%(body)s") -> OperationalError:
    """What SQLAlchemy raises when PostgreSQL terminated the backend mid-statement."""
    orig = Exception("terminating connection due to administrator command\nSSL closed")
    return OperationalError(statement, {"body": "call +12125550123"}, orig)


@pytest.fixture
def sms() -> FakeSender:
    sender = FakeSender()
    sender.lookup_window = WINDOW  # the provider's listing may lag this long
    return sender


@pytest.fixture
def app(engine: Engine, config: Config, sms: FakeSender) -> Iterator[App]:
    yield bootstrap(config, engine=engine, clock=FixedClock(SEND_AT),
                    senders={"sms": sms, "email": FakeSender(), "voice": FakeSender()})


def unconfirmed() -> UnconfirmedSendError:
    return UnconfirmedSendError("twilio timeout: ReadTimeout; not listed by Twilio yet", "timeout")


def test_an_unconfirmed_timeout_is_not_resent_in_the_pass(app: App, sms: FakeSender):
    plan(app)
    sms.errors = [unconfirmed()]
    report = dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert sms.sent == [] and report.deferred == 1  # not retried on the spot
    assert (row["status"], row["error_code"], row["claimed_by"]) == ("sending", "unconfirmed",
                                                                     None)  # fmt: skip


def test_a_send_the_provider_took_after_the_timeout_is_found_not_resent(app, sms):
    plan(app)
    sms.errors = [unconfirmed()]
    dispatch_due(app, SEND_AT, retry=FAST)
    sms.known["20261202-sms-1"] = "SMlate"  # Twilio finished taking it after all
    dispatch_due(app, SEND_AT + timedelta(seconds=5), retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["provider_id"]) == ("sent", "SMlate") and sms.sent == []


def test_an_unconfirmed_send_the_provider_never_lists_is_sent_again_after_the_window(app, sms):
    plan(app)
    sms.errors = [unconfirmed()]
    dispatch_due(app, SEND_AT, retry=FAST)
    dispatch_due(app, SEND_AT + WINDOW / 2, retry=FAST)
    assert rows(app)[0]["status"] == "sending" and sms.sent == []  # the listing may lag
    dispatch_due(app, SEND_AT + WINDOW + timedelta(seconds=1), retry=FAST)
    [row] = rows(app)
    assert (row["status"], row["provider_id"], row["attempts"]) == ("sent", "F1", 2)
    assert len(sms.sent) == 1


class FlakyLimiter:
    """A shared rate limiter whose database connection drops on the first acquire."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            self.calls += 1
            if self.calls == 1:
                raise dropped("UPDATE rate_buckets SET window_start=%(w)s")


def test_a_rate_limiter_losing_its_connection_is_retried_not_unknown(app: App, sms: FakeSender):
    plan(app)
    limiter = FlakyLimiter()
    report = dispatch_due(app, SEND_AT, retry=FAST, limiters={"sms": limiter})
    [row] = rows(app)
    assert (row["status"], report.unknown, limiter.calls) == ("sent", 0, 2)


def test_a_commit_lost_with_the_connection_is_made_again(app: App, sms: FakeSender, monkeypatch):
    plan(app, borrowers=3)
    record, failures = recording._record_all, [dropped()]

    def flaky(*args: object, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(recording, "_record_all", flaky)
    report = dispatch_due(app, SEND_AT, retry=FAST)
    assert [r["status"] for r in rows(app)] == ["sent"] * 3 and len(sms.sent) == 3
    assert failures == [] and report.unknown == 0


def test_what_a_failed_pass_left_sending_is_settled_by_the_next_pass_of_the_same_process(
    app: App, sms: FakeSender, monkeypatch: pytest.MonkeyPatch
):
    plan(app)
    monkeypatch.setattr(recording, "RECORD_TRIES", 1)
    monkeypatch.setattr(recording, "_record_all", lambda *a, **k: (_ for _ in ()).throw(dropped()))
    with pytest.raises(OperationalError):
        dispatch_due(app, SEND_AT, retry=FAST)
    [row] = rows(app)
    assert row["status"] == "sending" and len(sms.sent) == 1  # sent, but not recorded
    monkeypatch.undo()
    sms.known[row["batch_key"]] = "F1"
    dispatch_due(app, SEND_AT + timedelta(seconds=1), retry=FAST)  # not 10 minutes later
    [row] = rows(app)
    assert (row["status"], row["provider_id"]) == ("sent", "F1") and len(sms.sent) == 1

