"""Replies end to end: webhooks into the real server, then the next days' runs obey them.

Day 2 the reminders go out; day 4 four borrowers answer (STOP, a promise, PAID, a dispute)
through signed webhooks; the runs of the following days must suppress exactly what the
answers ask for, with the reason, and resume when the promise breaks, the paid claim
lapses or a person lifts the dispute in `reminder inbox`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from reminder.cli import app as cli
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import messages, promises
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.dispatch import dispatch_due
from tests.portfolio import Portfolio
from tests.webhooks_support import Harness, live_server, state_counts

REPO = Path(__file__).resolve().parents[2]
PHONES = {"S": "+12125550111", "P": "+12125550112", "C": "+12125550113", "D": "+12125550114"}


@pytest.fixture
def hub(engine: Engine, config: Config) -> Iterator[Harness]:
    book = Portfolio()
    for borrower_id, phone in PHONES.items():
        book.borrower(borrower_id, phone=phone, email=f"{borrower_id.lower()}@example.com")
        book.loan(f"L{borrower_id}", borrower_id, first_due=date(2026, 12, 1))
    book.save(engine)
    clock = FixedClock(datetime(2026, 12, 2, 12, tzinfo=UTC))
    with live_server(engine, config, clock) as harness:
        yield harness


def _day(hub: Harness, day: int) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Run day `day` of December, dispatch at 13:00 New York, return its rows."""
    hub.clock.set(datetime(2026, 12, day, 12, tzinfo=UTC))
    run_day(hub.app, RunOptions(run_date=date(2026, 12, day)))
    dispatch_due(hub.app, datetime(2026, 12, day, 18, tzinfo=UTC))
    with hub.app.engine.connect() as conn:
        rows = conn.execute(
            select(
                messages.c.borrower_id, messages.c.channel, messages.c.status, messages.c.reason
            ).where(messages.c.run_date == date(2026, 12, day))
        ).all()
    return {(b, c): (s, r) for b, c, s, r in rows}


def _inbox(engine: Engine, *args: str) -> dict | list:  # type: ignore[type-arg]
    env = {"REMINDER_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(
        cli, ["--config", str(REPO / "config.toml"), "inbox", *args, "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_replies_steer_the_following_runs(hub: Harness, engine: Engine) -> None:
    sent = _day(hub, 2)
    assert set(sent.values()) == {("sent", None)}
    with engine.connect() as conn:
        batch = conn.execute(
            select(messages.c.batch_key).where(
                messages.c.borrower_id == "S", messages.c.channel == "sms"
            )
        ).scalar_one()
    delivered = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    assert hub.twilio(f"/webhooks/twilio/status?ref={batch}", delivered).status_code == 204
    assert _day(hub, 2)[("S", "sms")] == ("delivered", None)  # a rerun of day 2 keeps it

    hub.clock.set(datetime(2026, 12, 4, 12, tzinfo=UTC))
    answers = {"S": "STOP", "P": "I will pay on Dec 10", "C": "I already PAID",
               "D": "this is not my loan"}  # fmt: skip
    for index, (borrower_id, text) in enumerate(answers.items()):
        assert hub.sms(f"SM{index:032d}", PHONES[borrower_id], text).status_code == 200
    before = state_counts(engine)
    for index, (borrower_id, text) in enumerate(answers.items()):  # providers retry
        hub.sms(f"SM{index:032d}", PHONES[borrower_id], text)
    assert state_counts(engine) == before
    assert len(hub.senders["sms"].sent) == 4 + 4  # day-2 reminders, then one answer each

    day5 = _day(hub, 5)
    assert day5[("S", "sms")] == ("suppressed", "opted_out")
    assert day5[("S", "email")] == ("sent", None)  # STOP by SMS leaves email alone
    assert day5[("P", "sms")] == day5[("P", "email")] == ("suppressed", "promise")
    assert day5[("C", "sms")] == day5[("C", "email")] == ("suppressed", "paid_claim")
    assert day5[("D", "sms")] == day5[("D", "email")] == ("suppressed", "dispute")

    day8 = _day(hub, 8)
    assert day8[("P", "sms")] == ("suppressed", "promise")  # Dec 10 + 2 grace days
    assert day8[("C", "sms")] == ("sent", None)  # the claim lapsed after paid_claim_days
    assert day8[("D", "sms")] == ("suppressed", "dispute")

    waiting = _inbox(engine)
    assert [(item["borrower_id"], item["intent"]) for item in waiting] == [
        ("C", "paid"),
        ("D", "dispute"),
    ]
    dispute_id = waiting[1]["id"]
    done = _inbox(engine, "resolve", str(dispute_id), "--note", "checked: it is theirs",
                  "--lift-dispute")  # fmt: skip
    assert done == {"reply_id": dispute_id, "already_resolved": False, "disputes_lifted": 1,
                    "cease_lifted": 0}  # fmt: skip
    assert [item["intent"] for item in _inbox(engine)] == ["paid"]

    day9 = _day(hub, 9)
    assert day9[("P", "sms")] == ("suppressed", "promise")
    assert day9[("D", "sms")] == ("sent", None)  # a person lifted the hold

    day13 = _day(hub, 13)  # Dec 10 + 2 grace days is past and the loan is still overdue
    assert day13[("P", "sms")] == ("sent", None)
    with engine.connect() as conn:
        assert conn.execute(select(promises.c.status)).scalars().all() == ["broken"]
    env = {"REMINDER_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    explained = CliRunner().invoke(
        cli, ["--config", str(REPO / "config.toml"), "explain", "LP", "--date", "2026-12-13",
              "--json"], env=env,
    )  # fmt: skip
    assert explained.exit_code == 0, explained.output
    assert "broken_promise" in explained.stdout and "2026-12-10" in explained.stdout
    from reminder.services import audit

    with engine.connect() as conn:  # every reply, flag and status change is in the chain
        assert audit.verify(conn).ok
        kinds = conn.execute(select(audit.audit_log.c.kind)).scalars().all()
    assert kinds.count("reply") >= 4 + 1 and "flag" in kinds and "status" in kinds


def test_inbox_lists_for_people_and_refuses_unknown_ids(engine: Engine, config: Config) -> None:
    from reminder.db.tables import replies

    with engine.begin() as conn:
        conn.execute(
            replies.insert().values(
                provider_ref="twilio:SMx",
                channel="sms",
                borrower_id=None,
                sender="+44***23",
                body="who is this?",
                intent="unknown",
                received_at=datetime(2026, 12, 4, tzinfo=UTC),
                needs_person=True,
            )  # fmt: skip
        )
    env = {"REMINDER_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    base = ["--config", str(REPO / "config.toml"), "inbox"]
    listed = CliRunner().invoke(cli, base, env=env)
    assert listed.exit_code == 0 and "unknown sender +44***23" in listed.stdout
    missing = CliRunner().invoke(cli, [*base, "resolve", "999", "--note", "x"], env=env)
    assert missing.exit_code == 2
    no_borrower = CliRunner().invoke(
        cli, [*base, "resolve", "1", "--note", "spam", "--lift-dispute"], env=env
    )
    assert no_borrower.exit_code == 2
    assert _inbox(engine, "resolve", "1", "--note", "spam")["already_resolved"] is False
    assert _inbox(engine, "resolve", "1", "--note", "spam")["already_resolved"] is True
    assert _inbox(engine) == []
