"""`reminder demo`: a realistic portfolio and a month of daily runs, on the embedded default.

The portfolio is generated from a fixed seed: borrowers over every risk grade, a spread
of timezones (including Auckland, a day ahead of New York) and locales, monthly
installment loans at different ages, on-time payers, partial payers and late payers.
Each replayed day runs at `[run] time` and the dispatcher then works through the day.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select

from reminder.bootstrap import App
from reminder.db.tables import borrowers, installments, loans, payments
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.dispatch import dispatch_due

ZONES = [
    ("America/New_York", "en", 40), ("America/Chicago", "en", 15),
    ("America/Los_Angeles", "en", 15),
    ("America/Mexico_City", "es", 10), ("Europe/Madrid", "es", 5), ("Asia/Shanghai", "zh-CN", 8),
    ("Pacific/Auckland", "en", 4), ("Pacific/Honolulu", "en", 3),
]
FIRST = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Grace", "Hugo", "Ivy", "Jun", "Kai",
         "Lucia", "Mateo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tao", "Uma", "Wei"]
LAST = ["Garcia", "Smith", "Li", "Johnson", "Martinez", "Wang", "Brown", "Lopez", "Zhang",
        "Davis", "Hernandez", "Liu", "Miller", "Wilson", "Gonzalez", "Moore", "Chen", "Taylor"]
GRADES = [("A", 20), ("B", 30), ("C", 25), ("D", 15), ("E", 10)]
# how a borrower pays: (kind, weight)
BEHAVIOUR = [("on_time", 55), ("late", 20), ("partial", 12), ("stopped", 13)]


def _pick(rng: random.Random, weighted: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


def generate(app: App, start: date, borrowers_count: int, seed: int = 7) -> dict[str, int]:
    """Write the demo portfolio; the month replayed starts at `start`."""
    rng = random.Random(seed)
    people, books, schedule, paid = [], [], [], []
    for number in range(1, borrowers_count + 1):
        zone, locale, _ = _pick(rng, ZONES)
        borrower_id = f"B{number:05d}"
        phone = f"+1212555{number % 10000:04d}" if rng.random() > 0.02 else None
        people.append({
            "borrower_id": borrower_id,
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "phone": phone,
            "email": f"{borrower_id.lower()}@mail.example" if rng.random() > 0.05 else None,
            "timezone": zone, "locale": locale, "risk_grade": _pick(rng, GRADES)[0],
            "consent_sms": rng.random() > 0.03, "consent_email": True,
            "consent_voice": rng.random() > 0.2,
        })
        for _ in range(1 if rng.random() < 0.85 else 2):
            loan_id = f"L{len(books) + 1:06d}"
            amount = Decimal(rng.choice([50, 75, 120, 180, 250, 400])) + Decimal("0.00")
            opened = start - timedelta(days=rng.randint(20, 200))
            books.append({"loan_id": loan_id, "borrower_id": borrower_id, "currency": "USD",
                          "principal": amount * 6, "opened_on": opened, "status": "active"})
            behaviour = _pick(rng, BEHAVIOUR)[0]
            stop_after = rng.randint(0, 4)
            for seq in range(1, 7):
                due = opened + timedelta(days=30 * seq)
                schedule.append({"loan_id": loan_id, "seq": seq, "due_date": due,
                                 "amount_due": amount})
                paid.extend(_payments(rng, loan_id, seq, due, amount, behaviour, stop_after))
    with app.engine.begin() as conn:
        for table, rows in ((borrowers, people), (loans, books), (installments, schedule),
                            (payments, paid)):
            for chunk in range(0, len(rows), 2000):
                conn.execute(insert(table), rows[chunk:chunk + 2000])
    return {"borrowers": len(people), "loans": len(books), "installments": len(schedule),
            "payments": len(paid)}


def _payments(rng: random.Random, loan_id: str, seq: int, due: date, amount: Decimal,
              behaviour: str, stop_after: int) -> list[dict[str, Any]]:
    if behaviour == "stopped" and seq > stop_after:
        return []
    if behaviour == "on_time":
        when, value = due - timedelta(days=rng.randint(0, 3)), amount
    elif behaviour == "late":
        when, value = due + timedelta(days=rng.randint(3, 20)), amount
    elif behaviour == "partial":
        half = (amount / 2).quantize(Decimal("0.01"))
        when, value = due + timedelta(days=rng.randint(0, 10)), half
    else:
        when, value = due, amount
    return [{"payment_id": f"P-{loan_id}-{seq}", "loan_id": loan_id, "paid_on": when,
             "amount": value, "source": "ledger"}]


# What some borrowers answer to an SMS, by share of that day's recipients (seeded).
REPLIES = [
    (0.02, lambda day: "STOP"),
    (0.03, lambda day: "I already PAID"),
    (0.04, lambda day: f"PROMISE {(day + timedelta(days=5)).isoformat()}"),
    (0.01, lambda day: "this is not my loan, I dispute it"),
    (0.01, lambda day: "please call me"),
]


def _borrower_replies(app: App, day: date, rng: random.Random) -> None:
    """Some of the day's SMS recipients reply, through the same code as the webhook."""
    from reminder.clock import FixedClock
    from reminder.db.tables import messages
    from reminder.services.replies import InboundReply, handle_reply

    with app.engine.connect() as conn:
        phones = conn.execute(
            select(borrowers.c.phone).distinct()
            .join(messages, messages.c.borrower_id == borrowers.c.borrower_id)
            .where(messages.c.run_date == day, messages.c.channel == "sms",
                   messages.c.status == "sent")
            .order_by(borrowers.c.phone)
        ).scalars().all()
    app.clock = FixedClock(datetime.combine(day, time(18), tzinfo=app.config.run.tz))
    for number, phone in enumerate(phones):
        roll, threshold = rng.random(), 0.0
        for share, text in REPLIES:
            threshold += share
            if roll < threshold:
                handle_reply(app, InboundReply(channel="sms", sender=phone, body=text(day),
                                               provider_ref=f"demo-{day}-{number}"))
                break


def replay(app: App, start: date, days: int,
           on_day: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run `days` daily runs from `start`, dispatching through each day; borrowers reply."""
    summaries = []
    zone = app.config.run.tz
    rng = random.Random(11)
    for offset in range(days):
        day = start + timedelta(days=offset)
        run_day(app, RunOptions(run_date=day, dispatch=False))
        end_of_day = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
        dispatch_due(app, end_of_day - timedelta(hours=6))
        _borrower_replies(app, day, rng)
        dispatch_due(app, end_of_day + timedelta(hours=6, minutes=59))
        from reminder.services.daily_run import day_summary

        with app.engine.connect() as conn:
            summary = day_summary(conn, app, day)
        summaries.append(summary)
        if on_day:
            on_day(summary)
    return summaries
