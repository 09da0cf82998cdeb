"""Tests for reminder.domain.intents: borrower replies in en/es/zh, promise dates, precedence."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reminder.domain.intents import KINDS, PROBLEMS, Intent, guess_language, parse_reply

TODAY = date(2026, 12, 4)  # a Friday
NEW_YEARS_EVE = date(2026, 12, 31)  # a Thursday
EN, ES, ZH = "en-US", "es-MX", "zh-CN"


def dec(day: int) -> date:
    return date(2026, 12, day)


REPLIES: list[tuple[str, str, str, date | None]] = [
    # stop: any opt-out word wins, whatever surrounds it
    ("STOP", EN, "stop", None),
    ("stop please", EN, "stop", None),
    ("Stop.", EN, "stop", None),
    ("don't stop", EN, "stop", None),
    ("STOPALL", EN, "stop", None),
    ("unsubscribe me", EN, "stop", None),
    ("Cancel", EN, "stop", None),
    ("END", EN, "stop", None),
    ("quit", EN, "stop", None),
    ("opt-out", EN, "stop", None),
    ("OPTOUT", EN, "stop", None),
    ("revoke", EN, "stop", None),
    ("ＳＴＯＰ", EN, "stop", None),
    ("STOP, I already paid", EN, "stop", None),
    ("I'll pay friday, now stop texting me", EN, "stop", None),
    ("BAJA", ES, "stop", None),
    ("quiero darme de baja", ES, "stop", None),
    ("退订", ZH, "stop", None),
    ("TD", ZH, "stop", None),
    ("不要再发短信了", ZH, "stop", None),
    # dispute
    ("not my loan", EN, "dispute", None),
    ("I dispute this", EN, "dispute", None),
    ("wrong person", EN, "dispute", None),
    ("I don't owe you anything", EN, "dispute", None),
    ("Not my loan. I already paid it anyway", EN, "dispute", None),
    ("no es mi deuda", ES, "dispute", None),
    ("disputa", ES, "dispute", None),
    ("número equivocado", ES, "dispute", None),
    ("我没有借过", ZH, "dispute", None),
    ("不是我的", ZH, "dispute", None),
    ("这笔贷款不是我借的", ZH, "dispute", None),
    # paid
    ("PAID", EN, "paid", None),
    ("I already PAID", EN, "paid", None),
    ("paid it yesterday", EN, "paid", None),
    ("I paid, call me if there is a problem", EN, "paid", None),
    ("I paid with my TD Bank card", EN, "paid", None),
    ("ya pagué", ES, "paid", None),
    ("PAGADO", ES, "paid", None),
    ("Ya lo pagué ayer", ES, "paid", None),
    ("我已还款", ZH, "paid", None),
    ("已经还了", ZH, "paid", None),
    ("已还", ZH, "paid", None),
    # promise, with the date it names
    ("PROMISE 2026-12-20", EN, "promise", dec(20)),
    ("pay 12/20", EN, "promise", dec(20)),
    ("I will pay 12/20/2026", EN, "promise", dec(20)),
    ("pay 12-20", EN, "promise", dec(20)),
    ("pay 20/12", EN, "promise", dec(20)),
    ("pay friday", EN, "promise", dec(11)),
    ("I can pay Fri.", EN, "promise", dec(11)),
    ("pay tomorrow", EN, "promise", dec(5)),
    ("pay today", EN, "promise", dec(4)),
    ("I'll pay in 5 days", EN, "promise", dec(9)),
    ("will pay in two weeks", EN, "promise", dec(18)),
    ("will pay Dec 20", EN, "promise", dec(20)),
    ("I promise to pay on December 20th", EN, "promise", dec(20)),
    ("pay on the 20th", EN, "promise", dec(20)),
    ("I'll pay at the end of the month", EN, "promise", dec(31)),
    ("I get paid friday, will pay then", EN, "promise", dec(11)),
    ("Yes, I will make a payment on monday", EN, "promise", dec(7)),
    ("pagaré el 20/12", ES, "promise", dec(20)),
    ("pago el viernes", ES, "promise", dec(11)),
    ("pagaré mañana", ES, "promise", dec(5)),
    ("pago hoy", ES, "promise", dec(4)),
    ("pagaré en 5 días", ES, "promise", dec(9)),
    ("pagaré el 20 de diciembre", ES, "promise", dec(20)),
    ("prometo pagar el lunes", ES, "promise", dec(7)),
    ("pasado mañana pago", ES, "promise", dec(6)),
    ("我会在12月20日还款", ZH, "promise", dec(20)),
    ("12月20日还", ZH, "promise", dec(20)),
    ("12月20号还", ZH, "promise", dec(20)),
    ("2026年12月20日还款", ZH, "promise", dec(20)),
    ("１２月２０日还", ZH, "promise", dec(20)),
    ("周五还", ZH, "promise", dec(11)),
    ("星期五还钱", ZH, "promise", dec(11)),
    ("礼拜五还", ZH, "promise", dec(11)),
    ("明天还", ZH, "promise", dec(5)),
    ("20号还", ZH, "promise", dec(20)),
    # callback
    ("call me", EN, "callback", None),
    ("Please CALL me back", EN, "callback", None),
    ("llámame", ES, "callback", None),
    ("¿Me pueden llamar?", ES, "callback", None),
    ("请给我打电话", ZH, "callback", None),
    ("打电话", ZH, "callback", None),
    # help
    ("HELP", EN, "help", None),
    ("info", EN, "help", None),
    ("ayuda", ES, "help", None),
    ("帮助", ZH, "help", None),
    # start
    ("START", EN, "start", None),
    ("UNSTOP", EN, "start", None),
    ("yes", EN, "start", None),
    ("Yes!", EN, "start", None),
    ("sí", ES, "start", None),
    # unknown: words that merely contain a keyword, refusals, and chatter
    ("what a happy ending", EN, "unknown", None),
    ("legal tender", EN, "unknown", None),
    ("my paycheck is late", EN, "unknown", None),
    ("yesterday", EN, "unknown", None),
    ("have a nice weekend", EN, "unknown", None),
    ("ok thanks", EN, "unknown", None),
    ("friday", EN, "unknown", None),
    ("yes but I can't afford it", EN, "unknown", None),
    ("I haven't paid yet", EN, "unknown", None),
    ("don't call me", EN, "unknown", None),
    ("", EN, "unknown", None),
    ("no puedo pagar", ES, "unknown", None),
    ("我今天还在上班", ZH, "unknown", None),
    ("不要给我打电话", ZH, "unknown", None),
]


@pytest.mark.parametrize(("text", "locale", "kind", "promised"), REPLIES, ids=lambda v: str(v))
def test_a_reply_is_read_as_the_expected_kind_and_date(
    text: str, locale: str, kind: str, promised: date | None
) -> None:
    intent = parse_reply(text, locale=locale, today=TODAY)

    assert (intent.kind, intent.promise_date, intent.problem) == (kind, promised, None)


ROLLOVERS: list[tuple[str, str, date]] = [
    ("pay tomorrow", EN, date(2027, 1, 1)),
    ("pay 1/5", EN, date(2027, 1, 5)),
    ("pay jan 5", EN, date(2027, 1, 5)),
    ("pay in 5 days", EN, date(2027, 1, 5)),
    ("pay friday", EN, date(2027, 1, 1)),
    ("pay on the 2nd", EN, date(2027, 1, 2)),
    ("pay 12/31", EN, date(2026, 12, 31)),
    ("pagaré el 5/1", ES, date(2027, 1, 5)),
    ("pagaré el 5 de enero", ES, date(2027, 1, 5)),
    ("1月5日还", ZH, date(2027, 1, 5)),
    ("月底还", ZH, date(2026, 12, 31)),
]


@pytest.mark.parametrize(("text", "locale", "promised"), ROLLOVERS, ids=lambda v: str(v))
def test_a_date_without_a_year_said_on_new_years_eve_rolls_into_next_year(
    text: str, locale: str, promised: date
) -> None:
    intent = parse_reply(text, locale=locale, today=NEW_YEARS_EVE)

    assert (intent.kind, intent.promise_date, intent.problem) == ("promise", promised, None)


@pytest.mark.parametrize(
    ("text", "locale"),
    [
        ("pay", EN),
        ("I will pay", EN),
        ("pay 2/30", EN),
        ("pay 13/13", EN),
        ("pagaré", ES),
        ("pagaré el 30/2", ES),
        ("我会还的", ZH),
        ("2月30日还", ZH),
    ],
)
def test_a_promise_without_a_real_date_asks_for_the_date(text: str, locale: str) -> None:
    assert parse_reply(text, locale=locale, today=TODAY) == Intent(
        "promise", problem="date_missing", language=guess_language(text)
    )


@pytest.mark.parametrize(
    ("text", "locale", "promised"),
    [
        ("pay 2026-12-01", EN, dec(1)),
        ("pagaré el 3/12/2026", ES, dec(3)),
        ("2026年11月30日还", ZH, date(2026, 11, 30)),
    ],
)
def test_a_promise_dated_before_today_is_in_the_past(
    text: str, locale: str, promised: date
) -> None:
    intent = parse_reply(text, locale=locale, today=TODAY)

    assert (intent.kind, intent.promise_date, intent.problem) == (
        "promise",
        promised,
        "date_in_past",
    )


@pytest.mark.parametrize(
    ("text", "promised"),
    [
        ("pay 12/31/2027", date(2027, 12, 31)),
        ("pay 1/5", date(2027, 1, 5)),
        ("pay in 31 days", date(2027, 1, 4)),
        ("pay 12/3", date(2027, 12, 3)),
    ],
)
def test_a_promise_more_than_max_days_ahead_is_too_far(text: str, promised: date) -> None:
    intent = parse_reply(text, locale=EN, today=TODAY)

    assert (intent.kind, intent.promise_date, intent.problem) == (
        "promise",
        promised,
        "date_too_far",
    )


def test_a_promise_exactly_max_days_ahead_is_accepted() -> None:
    intent = parse_reply("pay in 30 days", locale=EN, today=TODAY)

    assert (intent.promise_date, intent.problem) == (date(2027, 1, 3), None)


def test_max_promise_days_sets_how_far_ahead_a_promise_may_be() -> None:
    intent = parse_reply("pay 12/20", locale=EN, today=TODAY, max_promise_days=7)

    assert intent.problem == "date_too_far"


def test_month_comes_first_only_for_english_locales() -> None:
    assert parse_reply("pay 1/12", locale="en-GB", today=TODAY).promise_date == date(2027, 1, 12)
    assert parse_reply("pagaré el 1/12", locale=ES, today=TODAY).problem == "date_too_far"
    assert parse_reply("pay 11/12", locale=ZH, today=TODAY).promise_date == dec(11)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("stop please", "en"),
        ("I already PAID", "en"),
        ("ya pagué", "es"),
        ("llámame", "es"),
        ("no es mi deuda", "es"),
        ("我已还款", "zh"),
        ("TD", "zh"),
        ("STOP", None),
        ("HELP", None),
    ],
)
def test_the_language_is_told_from_the_text_when_it_can_be(text: str, language: str | None) -> None:
    assert parse_reply(text, locale=EN, today=TODAY).language == language


KEYWORDS = st.sampled_from(
    [
        "stop",
        "pay",
        "paid",
        "not",
        "call",
        "yes",
        "dec",
        "fri",
        "de",
        "in",
        "days",
        "manana",
        "2026",
    ]
)
FRAGMENTS = st.sampled_from(list(" /-.,0123456789月日号年周下还不天后ñé\u0301"))
KEYWORD_SOUP = st.lists(KEYWORDS | FRAGMENTS).map("".join)


@given(st.text() | KEYWORD_SOUP, st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)))
def test_any_text_parses_to_a_known_kind_without_raising(text: str, today: date) -> None:
    intent = parse_reply(text, locale=EN, today=today)

    assert intent.kind in KINDS
    assert intent.problem is None or (intent.kind == "promise" and intent.problem in PROBLEMS)
    assert intent.promise_date is None or intent.kind == "promise"
    assert intent.language in {None, "en", "es", "zh"}
