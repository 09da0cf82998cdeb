"""What a borrower's reply means: `parse_reply` turns SMS, email or keypad text into an `Intent`.

Pure: standard library only, no I/O, no clock (today is passed in). Replies come in English,
Spanish and Chinese, in any case, with or without accents, punctuation and extra words.

Precedence, when a reply says several things at once:

1. ``stop``: an opt-out keyword anywhere as a word wins over everything, even "don't stop"
   (compliance: an opt-out must never be missed; carriers read it the same way).
2. ``dispute``: "not my loan" must put collection on hold even if the reply also says paid.
3. ``paid``: "I paid, will pay the rest friday" is a paid claim to reconcile first.
4. ``promise``: a promise word (PROMISE, PAY, pagaré, 会还) with or without a date, or a
   weaker payment word (payment, pago, 还) that comes with a date.
5. ``callback``, 6. ``help``, 7. ``start`` (START, UNSTOP, or a bare YES / SÍ / 开始).
8. ``unknown``: nothing matched; a person reads it.

Every keyword except the opt-out ones is ignored when negated in its clause ("I haven't paid",
"don't call me", "no puedo pagar", "不要打电话"), so a refusal never reads as a commitment.
Two opt-out words get one narrow exception each, because they are everyday words in
collections: "end of the month" is a date and "TD Bank" is a bank.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import date

from reminder.domain.promise_dates import DateMention, find_dates, nearest_date

PRECEDENCE = ("stop", "dispute", "paid", "promise", "callback", "help", "start")
KINDS = frozenset({*PRECEDENCE, "unknown"})
PROBLEMS = frozenset({"date_missing", "date_in_past", "date_too_far"})


@dataclass(frozen=True)
class Intent:
    """A reply's meaning; a promise with a `problem` must not be recorded, only clarified.

    `promise_date` is still set for "date_in_past" and "date_too_far" so the clarification
    can quote the date the borrower gave. `language` is None when the text does not tell.
    """

    kind: str
    promise_date: date | None = None
    problem: str | None = None
    language: str | None = None


def _word(pattern: str) -> str:
    """Bound a Latin pattern by non-letters, so "end" never matches "tender" or "weekend"."""
    return rf"(?<![a-z])(?:{pattern})(?![a-z])"


_TD = _word("td") + r"(?!\s*bank)"
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "stop": (
        _word(r"stop|stopall|unsubscribe|cancel|cancelar|quit|opt[\s-]?out|revoke|baja"),
        _word("end") + r"(?!\s+of(?![a-z]))",
        _TD,
        "退订|取消订阅|不要再发|别再发|停止发送",
    ),
    "dispute": (
        _word(
            r"disput[a-z]*|fraud[a-z]*|identity theft|not my (?:loan|debt|account|bill|balance)"
            r"|(?:not|isnt|aint) mine|wrong (?:person|number|guy|people|account)"
            r"|(?:dont|do not|doesnt|does not) owe|never (?:borrowed|took|had|applied|signed)"
        ),
        _word(
            r"no es mi (?:deuda|prestamo|cuenta|credito)|no es mi[ao]|no (?:le )?debo"
            r"|nunca (?:pedi|saque|solicite|tuve|firme)|equivocad[ao]s?"
        ),
        "不是我的|不是我借的|不是本人|没有?借过|从来?没有?借|没有借款|打错了|打错电话|找错人"
        "|争议|异议|冒用|盗用",
    ),
    "paid": (
        r"(?<!get )(?<!gets )(?<!got )(?<!getting )(?<!be )(?<!being )" + _word("paid"),
        _word(r"payed|made (?:a|the|my) payment|pagado|pague|hice el pago|realice el pago"),
        _word(r"ya (?:lo |le )?(?:pague|pagamos|pago|pagaron)"),
        "已还|已经还|还清了|已付|已经付|付过了|还过了|已支付|已经支付|已转账|已经转账",
    ),
    "promise": (
        _word(r"promise[sd]?|promising|pay|pays|paying"),
        _word(r"pagare|pagaremos|pagaria|pagar|prometo|prometemos|promesa"),
        "承诺|保证|会还|会付|一定还",
    ),
    "weak_promise": (
        _word(r"payment|pago|abono"),
        r"还(?=[款钱给清上]|\W|$)|付(?=[款钱给清]|\W|$)",
    ),
    "callback": (
        _word(r"call(?:\s*back)?|phone me|ring me|llam(?:ame|eme|enme|adme|arme)"),
        _word(r"me (?:puede|pueden|podria|podrian) llamar"),
        "打电话|回电|致电|来电话|电话联系",
    ),
    "help": (_word(r"help|info|ayuda|informacion"), "帮助|求助|帮忙"),
    "start": (_word(r"start|unstop"),),
}
_PATTERNS = {kind: re.compile("|".join(parts)) for kind, parts in _KEYWORDS.items()}
_BARE_YES = re.compile(r"[\W_]*(?:yes|si|开始)[\W_]*")
_CLAUSE_END = re.compile(r"[,.;:!?¡¿\n，。；：！？、]")
_NEGATORS = frozenset({
    "not", "no", "never", "cant", "cannot", "wont", "dont", "didnt", "doesnt", "havent", "hasnt",
    "isnt", "unable", "nunca", "tampoco"
})  # fmt: skip
_ZH_NEGATORS = frozenset("不没别未无勿")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_ES_HINTS = re.compile(r"[ñ¿¡áéíóú]")
_ES_WORDS = frozenset({
    "ya", "el", "la", "los", "de", "mi", "es", "hoy", "manana", "por", "favor", "que", "pague",
    "pagado", "pagare", "pagar", "pago", "ayuda", "llamame", "disputa", "deuda", "prestamo",
    "dias", "dia", "semana", "yo", "soy", "lo", "le", "debo", "nunca", "si", "puedo", "voy",
    "hola", "gracias", "mas", "cuenta", "baja", "cancelar", "equivocado", "equivocada", "lunes",
    "martes", "miercoles", "jueves", "viernes", "sabado", "domingo", "enero", "febrero", "marzo",
    "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
    "dic", "ene"
})  # fmt: skip
_EN_WORDS = frozenset({
    "i", "im", "ive", "ill", "the", "my", "please", "already", "paid", "pay", "paying", "will",
    "call", "promise", "tomorrow", "today", "days", "day", "week", "weeks", "wrong", "person",
    "number", "loan", "debt", "dispute", "this", "is", "on", "it", "you", "yes", "can", "cant",
    "dont", "owe", "in", "back", "payment", "next", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "sunday", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "january",
    "february", "march", "april", "june", "july", "august", "september", "october", "november",
    "december", "jan", "feb", "apr", "jun", "jul", "aug", "sep", "oct", "nov", "dec"
})  # fmt: skip


def normalize(text: str) -> str:
    """Fold width, case, accents and apostrophes so "Ya PAGUÉ", "ya pague" and "ｙａ　ｐａｇｕé"
    read alike ("don't" becomes "dont"); whitespace collapses to single spaces."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    bare = "".join(char for char in folded if not unicodedata.combining(char))
    return " ".join(re.sub(r"['’‘`]", "", unicodedata.normalize("NFC", bare)).split())


def guess_language(text: str) -> str | None:
    """Tell "zh", "es" or "en" from the words used; None when a reply like "STOP" could be any."""
    norm = normalize(text)
    if _CJK.search(norm) or re.search(_TD, norm):
        return "zh"
    words = re.findall(r"[a-z]+", norm)
    spanish = sum(word in _ES_WORDS for word in words) + bool(_ES_HINTS.search(text.casefold()))
    english = sum(word in _EN_WORDS for word in words)
    if spanish == english:
        return None
    return "es" if spanish > english else "en"


def _negated(norm: str, start: int) -> bool:
    """Whether a negation comes shortly (three words, six characters) before `start` in the
    same clause; only the last 60 characters are looked at, so long emails stay linear."""
    clause = _CLAUSE_END.split(norm[max(0, start - 60) : start])[-1]
    latin = re.findall(r"[a-z]+", clause)[-3:]
    return any(word in _NEGATORS for word in latin) or bool(_ZH_NEGATORS & set(clause[-6:]))


def _hits(norm: str, kind: str) -> list[int]:
    """Where `kind`'s keywords occur and count; opt-outs count even when negated."""
    starts = [m.start() for m in _PATTERNS[kind].finditer(norm)]
    return starts if kind == "stop" else [s for s in starts if not _negated(norm, s)]


def _promise(norm: str, *, locale: str, today: date, max_days: int) -> Intent | None:
    """A promise intent, checking its date, or None when the reply promises nothing."""
    strong = [(start, True) for start in _hits(norm, "promise")]
    weak = [(start, False) for start in _hits(norm, "weak_promise")]
    mentions = find_dates(norm, locale=locale, today=today) if strong or weak else []
    for anchor, is_strong in sorted(strong + weak):
        mention = nearest_date(mentions, anchor)
        if is_strong or mention is not None:
            return _checked_promise(mention, today=today, max_days=max_days)
    return None


def _checked_promise(mention: DateMention | None, *, today: date, max_days: int) -> Intent:
    """Why a promised date cannot be recorded, if it cannot: missing, past or too far out."""
    if mention is None or mention.value is None:
        return Intent("promise", problem="date_missing")
    when = mention.value
    if when < today:
        return Intent("promise", when, problem="date_in_past")
    if (when - today).days > max_days:
        return Intent("promise", when, problem="date_too_far")
    return Intent("promise", when)


def parse_reply(text: str, *, locale: str, today: date, max_promise_days: int = 30) -> Intent:
    """Read one borrower reply; the first kind in `PRECEDENCE` that the text says wins.

    Args:
        text: The reply as received (SMS body or the text of an email).
        locale: The borrower's locale; only decides whether "12/11" is month first ("en...").
        today: The borrower's local date, which relative dates ("friday", "明天") count from.
        max_promise_days: How far ahead a promised date may be before it is "date_too_far".

    Returns:
        The intent, with `language` when the text tells it.
    """
    norm = normalize(text)
    language = guess_language(text)
    for kind in PRECEDENCE:
        if kind == "promise":
            found = _promise(norm, locale=locale, today=today, max_days=max_promise_days)
            if found is not None:
                return replace(found, language=language)
        elif _hits(norm, kind) or (kind == "start" and _BARE_YES.fullmatch(norm)):
            return Intent(kind, language=language)
    return Intent("unknown", language=language)
