"""The date in a borrower's promise to pay: "pay fri", "20 de diciembre", "12月20日还".

Pure and standard library only. It reads text already normalized by
`reminder.domain.intents.normalize` (NFKC, casefolded, accents stripped), so the patterns
only need ASCII Spanish ("manana", "miercoles") and ASCII digits. A month and day without a
year mean the next such day on or after today; a weekday means the next one strictly after
today, because "friday" said on a Friday means next week.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

MONTHS: dict[str, int] = {
    "january": 1, "jan": 1, "enero": 1, "ene": 1, "february": 2, "feb": 2, "febrero": 2,
    "march": 3, "mar": 3, "marzo": 3, "april": 4, "apr": 4, "abril": 4, "abr": 4,
    "may": 5, "mayo": 5, "june": 6, "jun": 6, "junio": 6, "july": 7, "jul": 7, "julio": 7,
    "august": 8, "aug": 8, "agosto": 8, "september": 9, "sept": 9, "sep": 9,
    "septiembre": 9, "setiembre": 9, "october": 10, "oct": 10, "octubre": 10,
    "november": 11, "nov": 11, "noviembre": 11, "december": 12, "dec": 12,
    "diciembre": 12, "dic": 12,
}  # fmt: skip
WEEKDAYS: dict[str, int] = {
    "monday": 0, "mon": 0, "lunes": 0, "tuesday": 1, "tues": 1, "tue": 1, "martes": 1,
    "wednesday": 2, "wed": 2, "miercoles": 2, "thursday": 3, "thurs": 3, "thur": 3,
    "thu": 3, "jueves": 3, "friday": 4, "fri": 4, "viernes": 4, "saturday": 5, "sat": 5,
    "sabado": 5, "sunday": 6, "sun": 6, "domingo": 6,
}  # fmt: skip
ZH_WEEKDAYS = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}
NUMBER_WORDS: dict[str, int] = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "un": 1, "una": 1, "uno": 1, "dos": 2,
    "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8, "nueve": 9,
    "diez": 10,
}  # fmt: skip
RELATIVE_DAYS: dict[str, int] = {
    "today": 0, "hoy": 0, "今天": 0, "今日": 0, "tomorrow": 1, "tmrw": 1, "tmr": 1,
    "manana": 1, "明天": 1, "明日": 1, "day after tomorrow": 2, "pasado manana": 2, "后天": 2,
}  # fmt: skip


@dataclass(frozen=True)
class DateMention:
    """Where the text names a date, and which; `value` is None when no such day exists."""

    start: int
    end: int
    value: date | None


def _alternation(words: dict[str, int]) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


def _word(pattern: str) -> str:
    """Bound a Latin pattern by non-letters so "fri" never matches inside "friend"."""
    return rf"(?<![a-z])(?:{pattern})(?![a-z])"


_MONTH = rf"(?P<month>{_alternation(MONTHS)})(?![a-z])\.?"
_ORD = r"(?:st|nd|rd|th)?"
_NUM = rf"(?P<n>[0-9]{{1,3}}|{_alternation(NUMBER_WORDS)})"
_NOT_AFTER_NUM = r"(?![0-9]|[/.-][0-9])"


def exact_date(year: int, month: int, day: int) -> date | None:
    """The date, or None for days that do not exist such as 30 February."""
    try:
        return date(year, month, day)
    except ValueError:
        return None


def next_month_day(today: date, month: int, day: int) -> date | None:
    """The next `month`/`day` on or after today, so "1/5" said in December is next January."""
    year = today.year + ((month, day) < (today.month, today.day))
    return exact_date(year, month, day)


def _next_day_of_month(today: date, day: int) -> date | None:
    """The next "20th" on or after today, skipping months too short to have it."""
    for offset in range(13):
        year, month = divmod(today.month - 1 + offset, 12)
        found = exact_date(today.year + year, month + 1, day)
        if found is not None and found >= today:
            return found
    return None


def _next_weekday(today: date, weekday: int) -> date:
    return today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1)


def _numeric(first: str, second: str, year: str | None, locale: str, today: date) -> date | None:
    """Month first for English locales, day first otherwise; swapped when only one reading works."""
    month, day = (int(first), int(second))
    if not locale.lower().startswith("en"):
        month, day = day, month
    if month > 12 >= day:
        month, day = day, month
    if year is None:
        return next_month_day(today, month, day)
    return exact_date(int(year) + (2000 if len(year) == 2 else 0), month, day)


def _named(m: re.Match[str], today: date) -> date | None:
    month, day = MONTHS[m["month"]], int(m["day"])
    return (
        exact_date(int(m["year"]), month, day) if m["year"] else next_month_day(today, month, day)
    )


def _in_days(m: re.Match[str], today: date) -> date:
    count = NUMBER_WORDS.get(m["n"]) or int(m["n"])
    return today + timedelta(days=count * (7 if m["unit"] else 1))


def _next_week(m: re.Match[str], today: date) -> date:
    """下周五 is Friday of next calendar week, not merely the next Friday."""
    return today + timedelta(days=7 - today.weekday() + ZH_WEEKDAYS[m["wd"]])


def _in_zh_days(m: re.Match[str], today: date) -> date:
    return today + timedelta(days=int(m["zn"]) * (7 if m["zunit"] else 1))


def _month_end(today: date) -> date:
    first_of_next = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return first_of_next - timedelta(days=1)


def _day_of_month(m: re.Match[str], today: date) -> date | None:
    return _next_day_of_month(today, int(m["d1"] or m["d2"] or m["d3"]))


Resolver = Callable[[re.Match[str], str, date], "date | None"]
_ASCII_RELATIVE = {word: n for word, n in RELATIVE_DAYS.items() if word.isascii()}
_CJK_RELATIVE = {word: n for word, n in RELATIVE_DAYS.items() if not word.isascii()}
_RULES: tuple[tuple[str, Resolver], ...] = (
    (  # 2026-12-20, 2026/12/20, 2026年12月20日
        r"(?<![0-9])(?P<y>[0-9]{4})\s*[-/.年]\s*(?P<m>[0-9]{1,2})\s*[-/.月]\s*"
        r"(?P<d>[0-9]{1,2})(?![0-9])\s*[日号號]?",
        lambda m, loc, t: exact_date(int(m["y"]), int(m["m"]), int(m["d"])),
    ),
    (  # 12/20/2026, 20.12.26
        r"(?<![0-9/.-])(?P<a>[0-9]{1,2})[-/.](?P<b>[0-9]{1,2})[-/.](?P<y>[0-9]{4}|[0-9]{2})"
        r"(?![0-9])",
        lambda m, loc, t: _numeric(m["a"], m["b"], m["y"], loc, t),
    ),
    (  # 12/20, 12-20 (not 12.20, which is more often money)
        rf"(?<![0-9/.-])(?P<a>[0-9]{{1,2}})[-/](?P<b>[0-9]{{1,2}}){_NOT_AFTER_NUM}",
        lambda m, loc, t: _numeric(m["a"], m["b"], None, loc, t),
    ),
    (  # 12月20日, 12月20号
        r"(?<![0-9])(?P<m>[0-9]{1,2})\s*月\s*(?P<d>[0-9]{1,2})(?![0-9])\s*[日号號]?",
        lambda m, loc, t: next_month_day(t, int(m["m"]), int(m["d"])),
    ),
    (  # dec 20, December 20th, 2026
        rf"(?<![a-z]){_MONTH}\s*(?P<day>[0-9]{{1,2}}){_ORD}(?![0-9a-z])"
        r"(?:,?\s*(?P<year>[0-9]{4}))?",
        lambda m, loc, t: _named(m, t),
    ),
    (  # 20 de diciembre (de 2026), 20th of december
        rf"(?<![0-9])(?P<day>[0-9]{{1,2}}){_ORD}\s*(?:de\s+|of\s+)?{_MONTH}"
        r"(?:,?\s*(?:de\s+|del\s+)?(?P<year>[0-9]{4}))?",
        lambda m, loc, t: _named(m, t),
    ),
    (  # 20号, the 20th, el 20
        r"(?<![0-9月])(?P<d1>[0-9]{1,2})\s*[日号號]"
        r"|(?<![0-9])(?P<d2>[0-9]{1,2})(?:st|nd|rd|th)(?![a-z])"
        rf"|(?<![a-z])(?:el|dia)\s+(?P<d3>[0-9]{{1,2}}){_NOT_AFTER_NUM}",
        lambda m, loc, t: _day_of_month(m, t),
    ),
    (  # in 5 days, en 2 semanas
        _word(rf"(?:in|en)\s+{_NUM}\s+(?:days?|dias?|(?P<unit>weeks?|semanas?))"),
        lambda m, loc, t: _in_days(m, t),
    ),
    (  # 5天后, 2周以后
        r"(?P<zn>[0-9]{1,3})\s*(?:天|(?P<zunit>周|个?星期))(?:之?后|以后)",
        lambda m, loc, t: _in_zh_days(m, t),
    ),
    (  # today, mañana (but not "esta mañana", this morning), 明天
        rf"(?<!la )(?<!esta ){_word(_alternation(_ASCII_RELATIVE))}|{_alternation(_CJK_RELATIVE)}",
        lambda m, loc, t: t + timedelta(days=RELATIVE_DAYS[m[0]]),
    ),
    (  # end of the month, fin de mes, 月底: the last day of this month
        _word(r"end of (?:the |this )?month|(?:a )?fin(?:al)? del? mes") + "|月底|月末",
        lambda m, loc, t: _month_end(t),
    ),
    (  # friday, fri, viernes
        _word(rf"(?P<wd>{_alternation(WEEKDAYS)})"),
        lambda m, loc, t: _next_weekday(t, WEEKDAYS[m["wd"]]),
    ),
    (  # 周五, 星期五, 礼拜五
        r"(?:周|星期|礼拜)(?P<wd>[一二三四五六日天])",
        lambda m, loc, t: _next_weekday(t, ZH_WEEKDAYS[m["wd"]]),
    ),
    (  # 下周五
        r"下个?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天])",
        lambda m, loc, t: _next_week(m, t),
    ),
)
_COMPILED = tuple((re.compile(pattern), resolve) for pattern, resolve in _RULES)


def find_dates(text: str, *, locale: str, today: date) -> list[DateMention]:
    """Every date named in `text`, in reading order; of overlapping readings the longest wins.

    Longest wins so that "20 de diciembre" is not read as the bare "el 20", nor
    "pasado manana" as "manana".
    """
    found = [
        DateMention(m.start(), m.end(), resolve(m, locale, today))
        for pattern, resolve in _COMPILED
        for m in pattern.finditer(text)
    ]
    kept: list[DateMention] = []  # sorted by start, never overlapping
    for mention in sorted(found, key=lambda d: (d.start - d.end, d.start)):
        at = bisect.bisect(kept, mention.start, key=lambda d: d.start)
        clear_before = at == 0 or kept[at - 1].end <= mention.start
        if clear_before and (at == len(kept) or mention.end <= kept[at].start):
            kept.insert(at, mention)
    return kept


def nearest_date(mentions: list[DateMention], anchor: int) -> DateMention | None:
    """The date that goes with the promise word at `anchor`: the first after it, else the
    nearest before it ("12月20日还" puts the date first). None when no date is named."""
    at = bisect.bisect_left(mentions, anchor, key=lambda d: d.start)
    if at < len(mentions):
        return mentions[at]
    return mentions[-1] if mentions else None
