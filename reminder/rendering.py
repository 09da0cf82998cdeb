"""Message text from Jinja2 templates: templates/<channel>/<locale>/<stage>.<ext>.

Lookup order for a locale: the lender's own `templates/` beside config.toml, then the
bundled ones; within each, the exact locale (`zh-CN`), its language (`zh`), then
`[run] default_locale`. StrictUndefined makes a template naming an unknown variable fail
when templates are checked at start-up (`check_templates`), not at 07:00. HTML is
autoescaped. Files starting with `_` (email layouts) are shared pieces, not stages.

Template variables: `lender` (name, phone, payment_url, support_email, unsubscribe_url),
`borrower` (name, first_name), `loans` (loan_id, amount, due_date, dpd, stage, each
formatted for the locale), `total`, `due_date` (the oldest), `dpd` and `stage` (of the
most advanced loan), `locale`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from babel.dates import format_date
from babel.numbers import format_currency
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    select_autoescape,
)

from reminder.config import Config
from reminder.domain.sms_encoding import SmsEncoding, sms_encoding
from reminder.errors import ConfigError
from reminder.resources import bundled_templates_dir

log = logging.getLogger(__name__)

EXTENSIONS = {"sms": ("txt",), "voice": ("txt",), "email": ("subject.txt", "txt", "html")}


@dataclass(frozen=True)
class Rendered:
    body: str
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True)
class LoanLine:
    """One loan named in a (possibly consolidated) message."""

    loan_id: str
    currency: str
    amount: Decimal
    due_date: date
    dpd: int
    stage: str


def babel_locale(locale: str) -> str:
    return locale.replace("-", "_")


@lru_cache(maxsize=8192)
def money(amount: Decimal, currency: str, locale: str) -> str:
    """An amount as the locale writes it (cached: Babel parses its patterns every call)."""
    return format_currency(amount, currency, locale=babel_locale(locale))


@lru_cache(maxsize=4096)
def day(value: date, locale: str) -> str:
    return format_date(value, format="medium", locale=babel_locale(locale))


class Renderer:
    """Renders one channel's message for a borrower and their due loans."""

    def __init__(self, config: Config) -> None:
        self.config = config
        searched = [config.resolve_path("templates"), bundled_templates_dir()]
        loader = ChoiceLoader([FileSystemLoader(str(p)) for p in searched if p.exists()])
        self.env = Environment(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            keep_trailing_newline=False,
            trim_blocks=True,
            auto_reload=False,  # a Renderer lives for one pass: no stat() per message
        )
        self._chosen: dict[tuple[str, str, str], str] = {}

    def _candidates(self, locale: str) -> list[str]:
        default = self.config.run.default_locale
        return list(dict.fromkeys([locale, locale.split("-")[0], default]))

    def template_locale(self, channel: str, stage: str, locale: str) -> str:
        """The locale whose templates will be used (after fallback)."""
        key = (channel, stage, locale)
        if key in self._chosen:
            return self._chosen[key]
        for candidate in self._candidates(locale):
            try:
                self.env.get_template(f"{channel}/{candidate}/{stage}.{EXTENSIONS[channel][-1]}")
            except TemplateNotFound:
                continue
            self._chosen[key] = candidate
            return candidate
        raise TemplateNotFound(f"{channel}/{locale}/{stage}")

    def context(
        self, borrower: dict[str, Any], lines: list[LoanLine], locale: str
    ) -> dict[str, Any]:
        """The variables every template gets (documented in README "Templates")."""
        lead = max(lines, key=lambda line: line.dpd)
        currencies = {line.currency for line in lines}
        total: str
        if len(currencies) == 1:
            total = money(sum((line.amount for line in lines), Decimal(0)), lead.currency, locale)
        else:
            total = " + ".join(money(line.amount, line.currency, locale) for line in lines)
        name = borrower.get("name") or ""
        return {
            "lender": self.config.lender.model_dump(),
            "borrower": {"name": name, "first_name": name.split(" ")[0] if name else ""},
            "loans": [
                {
                    "loan_id": line.loan_id,
                    "amount": money(line.amount, line.currency, locale),
                    "due_date": day(line.due_date, locale),
                    "dpd": line.dpd,
                    "stage": line.stage,
                }
                for line in lines
            ],
            "stage": lead.stage,
            "dpd": lead.dpd,
            "total": total,
            "due_date": day(min(line.due_date for line in lines), locale),
            "locale": locale,
        }

    def render(self, channel: str, stage: str, locale: str, context: dict[str, Any]) -> Rendered:
        chosen = self.template_locale(channel, stage, locale)
        parts = {
            ext: self.env.get_template(f"{channel}/{chosen}/{stage}.{ext}").render(context).strip()
            for ext in EXTENSIONS[channel]
        }
        if channel == "email":
            subject = " ".join(parts["subject.txt"].split())  # one line, whatever the template
            return Rendered(body=parts["txt"], subject=subject, html=parts["html"])
        if channel == "sms":
            # Babel puts no-break spaces in some locales' amounts (es: "100,00\xa0US$"):
            # outside GSM-7, they would turn a whole SMS into UCS-2 (70 instead of 160).
            return Rendered(body=parts["txt"].replace("\xa0", " ").replace("\u202f", " "))
        return Rendered(body=parts["txt"])

    def locales(self) -> list[str]:
        """Every locale some template folder exists for (bundled or the lender's)."""
        found: set[str] = set()
        for name in self.env.list_templates():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] in EXTENSIONS:
                found.add(parts[1])
        return sorted(found)


SAMPLE_NAMES = {"en": "Alexandra Thompson-Williams", "es": "María Fernanda Gutiérrez",
                "zh-CN": "欧阳明华"}  # fmt: skip
SAMPLE_CURRENCY = {"en": "USD", "es": "USD", "zh-CN": "CNY"}


def sample_lines(stage: str, dpd: int, locale: str, today: date | None = None) -> list[LoanLine]:
    """Realistic data for previews and checks: two loans, four-digit amounts."""
    today = today or date(2026, 12, 4)
    currency = SAMPLE_CURRENCY.get(locale, "USD")
    return [
        LoanLine("LN-2024-000187", currency, Decimal("1234.56"), today - timedelta(days=dpd),
                 dpd, stage),
        LoanLine("LN-2025-004512", currency, Decimal("389.00"), today - timedelta(days=dpd - 1),
                 dpd - 1, stage),
    ]  # fmt: skip


def sample_context(renderer: Renderer, stage: str, locale: str) -> dict[str, Any]:
    """The context `reminder preview` and `check_templates` render with."""
    config = renderer.config
    found = config.stage(stage)
    dpd = found.dpd[1] if found is not None else 5
    name = SAMPLE_NAMES.get(locale) or SAMPLE_NAMES.get(locale.split("-")[0], "Alex Morgan")
    return renderer.context({"name": name}, sample_lines(stage, dpd, locale), locale)


@dataclass(frozen=True)
class TemplateCheck:
    """One rendered (stage, channel, locale) of the start-up check."""

    stage: str
    channel: str
    locale: str
    rendered: Rendered
    encoding: SmsEncoding | None = None


def check_templates(config: Config, renderer: Renderer | None = None) -> list[TemplateCheck]:
    """Render every stage x channel x present locale with sample data, at start-up.

    Raises ConfigError naming the template when one is missing or names an unknown
    variable (StrictUndefined); logs a warning when an SMS needs more than
    `[channels.sms] max_segments` segments. Returns what was rendered (for tests, preview).
    """
    from jinja2 import TemplateError

    renderer = renderer or Renderer(config)
    max_segments = config.channel("sms").max_segments
    checks: list[TemplateCheck] = []
    for stage in config.stages:
        if stage.handoff:
            continue
        channels = {c for grade in ("A", "B", "C", "D", "E", None)
                    for c in stage.for_grade(grade)[1]}  # fmt: skip
        for channel in sorted(channels):
            for locale in renderer.locales():
                where = f"templates/{channel}/{locale}/{stage.name}"
                try:
                    context = sample_context(renderer, stage.name, locale)
                    rendered = renderer.render(channel, stage.name, locale, context)
                except TemplateNotFound as exc:
                    raise ConfigError(where, f"template not found: {exc}") from exc
                except TemplateError as exc:
                    raise ConfigError(where, f"{type(exc).__name__}: {exc}") from exc
                encoding = sms_encoding(rendered.body) if channel == "sms" else None
                if encoding and encoding.segments > max_segments:
                    log.warning("%s renders to %d SMS segments (%s), more than "
                                "[channels.sms] max_segments = %d", where, encoding.segments,
                                encoding.encoding, max_segments)  # fmt: skip
                checks.append(TemplateCheck(stage.name, channel, locale, rendered, encoding))
    return checks
