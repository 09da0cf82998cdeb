"""At least 60 borrower replies in English, Spanish and Chinese: intent, date and answer.

Each text goes through the same path a webhook uses (`read_intent` with the borrower's
locale and today, then `plan_reply`), so the table checks what the borrower gets back too.
Today is Friday 2026-12-04; "friday" therefore means the 11th.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from reminder.bootstrap import App
from reminder.clock import FixedClock
from reminder.config import load_config
from reminder.services.replies import NEEDS_PERSON, plan_reply, read_intent

REPO = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 4)
EN, ES, ZH = "en-US", "es-MX", "zh-CN"


def dec(day: int) -> date:
    return date(2026, 12, day)


REPLIES: list[tuple[str, str, str, date | None, str | None]] = [
    ("STOP", EN, "stop", None, None),
    ("Stop texting me", EN, "stop", None, None),
    ("please unsubscribe", EN, "stop", None, None),
    ("quit", EN, "stop", None, None),
    ("STOP ALL", EN, "stop", None, None),
    ("start", EN, "start", None, None),
    ("UNSTOP", EN, "start", None, None),
    ("yes", EN, "start", None, None),
    ("HELP", EN, "help", None, None),
    ("info please", EN, "help", None, None),
    ("what is this about? help", EN, "help", None, None),
    ("PAID", EN, "paid", None, None),
    ("I already PAID", EN, "paid", None, None),
    ("paid yesterday thanks", EN, "paid", None, None),
    ("I made a payment this morning", EN, "paid", None, None),
    ("I haven't paid yet", EN, "unknown", None, None),
    ("PROMISE 2026-12-20", EN, "promise", dec(20), None),
    ("pay 12/20", EN, "promise", dec(20), None),
    ("I'll pay on Monday", EN, "promise", dec(7), None),
    ("can pay next friday", EN, "promise", dec(11), None),
    ("pay tomorrow", EN, "promise", dec(5), None),
    ("I will pay by the end of the month", EN, "promise", dec(31), None),
    ("pay on the 15th", EN, "promise", dec(15), None),
    ("I promise", EN, "promise", None, "date_missing"),
    ("pay 2026-11-01", EN, "promise", date(2026, 11, 1), "date_in_past"),
    ("pay 2027-06-01", EN, "promise", date(2027, 6, 1), "date_too_far"),
    ("I can make a payment on 12/18", EN, "promise", dec(18), None),
    ("Can you call me?", EN, "callback", None, None),
    ("call me back please", EN, "callback", None, None),
    ("please don't call me", EN, "unknown", None, None),
    ("this is not my debt", EN, "dispute", None, None),
    ("wrong number", EN, "dispute", None, None),
    ("I dispute this charge", EN, "dispute", None, None),
    ("who is this", EN, "unknown", None, None),
    ("ok", EN, "unknown", None, None),
    ("thanks", EN, "unknown", None, None),
    ("I lost my job", EN, "unknown", None, None),
    ("pay dec 24", EN, "promise", dec(24), None),
    ("I will pay in 3 days", EN, "promise", dec(7), None),
    ("BAJA", ES, "stop", None, None),
    ("cancelar por favor", ES, "stop", None, None),
    ("AYUDA", ES, "help", None, None),
    ("PAGADO", ES, "paid", None, None),
    ("ya pagué", ES, "paid", None, None),
    ("Ya hice el pago", ES, "paid", None, None),
    ("pagaré el 20/12", ES, "promise", dec(20), None),
    ("pagaré el viernes", ES, "promise", dec(11), None),
    ("pago mañana", ES, "promise", dec(5), None),
    ("prometo pagar el 15 de diciembre", ES, "promise", dec(15), None),
    ("llámame por favor", ES, "callback", None, None),
    ("no es mi deuda", ES, "dispute", None, None),
    ("número equivocado", ES, "dispute", None, None),
    ("no puedo pagar", ES, "unknown", None, None),
    ("hola", ES, "unknown", None, None),
    ("sí", ES, "start", None, None),
    ("pagaré 01/12/2026", ES, "promise", dec(1), "date_in_past"),
    ("información", ES, "help", None, None),
    ("退订", ZH, "stop", None, None),
    ("TD", ZH, "stop", None, None),
    ("帮助", ZH, "help", None, None),
    ("我已还款", ZH, "paid", None, None),
    ("已经还了", ZH, "paid", None, None),
    ("我会在12月20日还款", ZH, "promise", dec(20), None),
    ("明天还", ZH, "promise", dec(5), None),
    ("下周五还款", ZH, "promise", dec(11), None),
    ("请给我打电话", ZH, "callback", None, None),
    ("不要打电话", ZH, "unknown", None, None),
    ("这不是我的贷款", ZH, "dispute", None, None),
    ("你好", ZH, "unknown", None, None),
    ("开始", ZH, "start", None, None),
    ("承诺12月10日还款", ZH, "promise", dec(10), None),
    ("我还没还", ZH, "unknown", None, None),
    ("后天还钱", ZH, "promise", dec(6), None),
]


@pytest.fixture(scope="module")
def app() -> App:
    config = load_config(REPO / "config.toml")
    clock = FixedClock(datetime(2026, 12, 4, 12, tzinfo=UTC))
    return App(config=config, engine=None, clock=clock)  # type: ignore[arg-type]  # no database


def test_the_table_covers_three_languages_and_every_intent() -> None:
    assert len(REPLIES) >= 60
    assert {locale for _, locale, *_ in REPLIES} == {EN, ES, ZH}
    kinds = {kind for _, _, kind, *_ in REPLIES}
    assert kinds == {"stop", "start", "help", "paid", "promise", "dispute", "callback", "unknown"}


@pytest.mark.parametrize(("text", "locale", "kind", "when", "problem"), REPLIES)
def test_reply_is_read_and_answered(
    app: App, text: str, locale: str, kind: str, when: date | None, problem: str | None
) -> None:
    intent = read_intent(app, text, locale, TODAY)
    assert (intent.kind, intent.promise_date, intent.problem) == (kind, when, problem)
    plan = plan_reply(intent, opted_out=False, auto_submitted=False, acknowledged_today=False)
    assert plan.template == (f"promise_{problem}" if problem else kind)
    assert plan.record_promise == (kind == "promise" and problem is None)
    assert plan.needs_person == (kind in NEEDS_PERSON)
