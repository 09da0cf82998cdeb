"""Message text from Jinja2 templates: templates/<channel>/<locale>/<stage>.<ext>.

Lookup order for a locale: the lender's own `templates/` beside config.toml, then the
bundled ones; within each, the exact locale (`zh-CN`), its language (`zh`), then
`[run] default_locale`. StrictUndefined makes a template naming an unknown variable fail
when templates are checked at start-up, not at 07:00. HTML is autoescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
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
from reminder.resources import bundled_templates_dir

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


def money(amount: Decimal, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=babel_locale(locale))


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
        )

    def _candidates(self, locale: str) -> list[str]:
        default = self.config.run.default_locale
        return list(dict.fromkeys([locale, locale.split("-")[0], default]))

    def template_locale(self, channel: str, stage: str, locale: str) -> str:
        """The locale whose templates will be used (after fallback)."""
        for candidate in self._candidates(locale):
            try:
                self.env.get_template(f"{channel}/{candidate}/{stage}.{EXTENSIONS[channel][-1]}")
            except TemplateNotFound:
                continue
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
            return Rendered(body=parts["txt"], subject=parts["subject.txt"], html=parts["html"])
        return Rendered(body=parts["txt"])
