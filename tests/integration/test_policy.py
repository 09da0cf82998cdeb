"""The contact policy on SQLite and PostgreSQL: every reason, in order, windows, DST, caps."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from reminder.bootstrap import bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import cases, contact_flags, messages, promises, replies
from reminder.domain.reasons import ORDER
from reminder.services.daily_run import RunOptions, run_day
from tests.portfolio import Portfolio

D = date(2026, 12, 2)  # Wednesday
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def _run(engine: Engine, config: Config, day: date = D) -> dict[str, Any]:
    app = bootstrap(config, engine=engine, clock=FixedClock(NOW))
    return run_day(app, RunOptions(run_date=day, dispatch=False))


def _decisions(engine: Engine, loan_id: str = "L1") -> dict[tuple[date, str], tuple[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(messages.c.run_date, messages.c.channel, messages.c.status, messages.c.reason)
            .where(messages.c.loan_id == loan_id)
        ).all()
    return {(r.run_date, r.channel): (r.status, r.reason) for r in rows}


def _flag(kind: str, channel: str | None = None) -> dict[str, Any]:
    return {"borrower_id": "B1", "kind": kind, "channel": channel, "source": "test",
            "created_at": NOW}


SETUPS: dict[str, Any] = {
    "written_off": {"loan": {"status": "written_off"}},
    "placed": {"rows": [(cases, {"case_id": "C1", "loan_id": "L1", "agency_id": "acme",
                                 "status": "open", "placed_on": D, "currency": "USD",
                                 "placed_balance": Decimal("100.00"), "dpd_at_placement": 90})]},
    "deceased": {"rows": [(contact_flags, _flag("deceased"))]},
    "bankruptcy": {"rows": [(contact_flags, _flag("bankruptcy"))]},
    "cease": {"rows": [(contact_flags, _flag("cease"))]},
    "dispute": {"rows": [(contact_flags, _flag("dispute"))]},
    "opted_out": {"rows": [(contact_flags, _flag("opt_out", "sms"))]},
    "no_consent": {"borrower": {"consent_sms": False}},
    "no_address": {"borrower": {"phone": None}},
    "paid_claim": {"rows": [(replies, {"channel": "sms", "borrower_id": "B1", "body": "PAID",
                                       "intent": "paid", "received_at": NOW - timedelta(days=1),
                                       "needs_person": True})]},
    "promise": {"rows": [(promises, {"borrower_id": "B1", "promised_on": D - timedelta(days=2),
                                     "source": "sms", "status": "open", "created_at": NOW})]},
    "holiday": {"day": date(2026, 12, 25)},
    "weekend": {"day": date(2026, 12, 5), "skip_weekends": True},
}


@pytest.mark.parametrize("reason", [r for r in ORDER if r != "cap"])
def test_each_suppression_reason_is_recorded_on_the_sms_row(
    engine: Engine, config: Config, reason: str
) -> None:
    setup = SETUPS[reason]
    day = setup.get("day", D)
    if setup.get("skip_weekends"):
        config = config.model_copy(
            update={"policy": config.policy.model_copy(update={"skip_weekends": True})})
    p = Portfolio()
    p.borrower("B1", **setup.get("borrower", {}))
    p.loan("L1", "B1", first_due=day - timedelta(days=2), count=1, **setup.get("loan", {}))
    p.save(engine)
    with engine.begin() as conn:
        for table, row in setup.get("rows", []):
            conn.execute(insert(table).values(**row))
    _run(engine, config, day)
    assert _decisions(engine)[(day, "sms")] == ("suppressed", reason)


def test_the_first_reason_in_the_contract_order_wins(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.borrower("B1", phone=None, consent_sms=False)
    p.loan("L1", "B1", first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    with engine.begin() as conn:
        conn.execute(insert(contact_flags).values(**_flag("dispute")))
    _run(engine, config)
    assert _decisions(engine)[(D, "sms")] == ("suppressed", "dispute")


def test_a_lifted_flag_no_longer_suppresses(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    with engine.begin() as conn:
        conn.execute(insert(contact_flags).values(**_flag("dispute"), lifted_at=NOW))
    _run(engine, config)
    assert _decisions(engine)[(D, "sms")] == ("planned", None)


def test_an_opt_out_covers_only_its_channel(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    with engine.begin() as conn:
        conn.execute(insert(contact_flags).values(**_flag("opt_out", "sms")))
    _run(engine, config)
    assert _decisions(engine) == {(D, "sms"): ("suppressed", "opted_out"),
                                  (D, "email"): ("planned", None)}


def test_a_promise_suppresses_until_its_date_plus_grace_then_reminders_resume(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1", risk_grade="E"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    with engine.begin() as conn:
        conn.execute(insert(promises).values(borrower_id="B1", promised_on=D, source="sms",
                                             status="open", created_at=NOW))
    for offset in range(4):  # grade E in early: every day
        _run(engine, config, D + timedelta(days=offset))
    sms = {day: decision for (day, channel), decision in _decisions(engine).items()
           if channel == "sms"}
    assert [sms[D + timedelta(days=k)] for k in range(4)] == [
        ("suppressed", "promise"), ("suppressed", "promise"), ("suppressed", "promise"),
        ("planned", None)]
    with engine.connect() as conn:
        assert conn.execute(select(promises.c.status)).scalar_one() == "broken"


def test_a_paid_claim_suppresses_for_three_days_only(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1", risk_grade="E"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    claimed = datetime(2026, 12, 2, 11, tzinfo=UTC)  # an hour before the 07:00 NY run
    with engine.begin() as conn:
        conn.execute(insert(replies).values(channel="sms", borrower_id="B1", body="PAID",
                                            intent="paid", received_at=claimed,
                                            needs_person=True))
    for offset in (1, 2, 3, 4):
        _run(engine, config, D + timedelta(days=offset))
    sms = {day: d for (day, channel), d in _decisions(engine).items() if channel == "sms"}
    assert sms[D + timedelta(days=2)] == ("suppressed", "paid_claim")
    assert sms[D + timedelta(days=3)] == ("planned", None)  # 07:00 on D+3 is > 3 days later


def test_caps_count_contacts_over_a_rolling_window_not_suppressed_ones(
    engine: Engine, config: Config
) -> None:
    caps = {"sms": (2, 3), "email": (5, 7), "voice": (7, 7)}
    config = config.model_copy(
        update={"policy": config.policy.model_copy(update={"caps": caps})})
    p = Portfolio()
    p.loan("L1", p.borrower("B1", risk_grade="E"), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    for offset in range(6):
        _run(engine, config, D + timedelta(days=offset))
    sms = [(day - D).days for (day, channel), (status, _) in sorted(_decisions(engine).items())
           if channel == "sms" and status == "planned"]
    # at most 2 contacts in any 3 consecutive days; capped days do not count as contacts
    assert sms == [0, 1, 3, 4]


def test_messages_to_one_borrower_on_one_day_count_once_against_the_cap(
    engine: Engine, config: Config
) -> None:
    caps = {"sms": (1, 2), "email": (5, 7), "voice": (7, 7)}
    config = config.model_copy(
        update={"policy": config.policy.model_copy(update={"caps": caps})})
    p = Portfolio()
    b = p.borrower("B1", risk_grade="E")
    p.loan("L1", b, first_due=D - timedelta(days=2), count=1)
    p.loan("L2", b, first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    _run(engine, config)
    assert _decisions(engine, "L1")[(D, "sms")] == ("planned", None)
    assert _decisions(engine, "L2")[(D, "sms")] == ("planned", None)


def test_auckland_is_contacted_on_its_own_next_local_morning(
    engine: Engine, config: Config
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1", timezone="Pacific/Auckland"), first_due=D - timedelta(days=2),
           count=1)
    p.save(engine)
    _run(engine, config)  # 07:00 New York = 01:00 next day in Auckland
    with engine.connect() as conn:
        not_before = conn.execute(select(messages.c.not_before)).scalars().first()
    from zoneinfo import ZoneInfo
    local = not_before.astimezone(ZoneInfo("Pacific/Auckland"))
    assert (local.date(), local.hour) == (D + timedelta(days=1), 8)


def test_the_holiday_is_judged_on_the_borrowers_local_date(
    engine: Engine, config: Config
) -> None:
    # Christmas Eve run in New York: already Christmas Day in Tokyo when its window opens
    eve = date(2026, 12, 24)
    p = Portfolio()
    p.loan("L1", p.borrower("B1", timezone="Asia/Tokyo"), first_due=eve - timedelta(days=2),
           count=1)
    p.loan("L2", p.borrower("B2", timezone="America/New_York"),
           first_due=eve - timedelta(days=2), count=1)
    p.save(engine)
    _run(engine, config, eve)
    assert _decisions(engine, "L1")[(eve, "sms")] == ("suppressed", "holiday")
    assert _decisions(engine, "L2")[(eve, "sms")] == ("planned", None)


@pytest.mark.parametrize(
    ("day", "utc_hour"),
    [(date(2026, 3, 7), 13), (date(2026, 3, 8), 12), (date(2026, 10, 31), 12),
     (date(2026, 11, 1), 13)],
)
def test_the_window_follows_dst_changes_in_march_and_november(
    engine: Engine, config: Config, day: date, utc_hour: int
) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=day - timedelta(days=2), count=1)
    p.save(engine)
    _run(engine, config, day)
    with engine.connect() as conn:
        not_before = conn.execute(select(messages.c.not_before)).scalars().first()
    assert not_before.astimezone(UTC).hour == utc_hour  # always 08:00 New York time


def test_a_borrower_without_timezone_uses_the_lenders(engine: Engine, config: Config) -> None:
    p = Portfolio()
    p.loan("L1", p.borrower("B1", timezone=None), first_due=D - timedelta(days=2), count=1)
    p.save(engine)
    _run(engine, config)
    with engine.connect() as conn:
        not_before = conn.execute(select(messages.c.not_before)).scalars().first()
    assert not_before.astimezone(config.run.tz).hour == 8
