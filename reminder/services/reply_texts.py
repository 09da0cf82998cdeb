"""Auto-reply and voice-menu words from `templates/replies/<locale>/<name>.txt`.

The same lookup as message templates (the lender's own `templates/` first, then the bundled
ones; exact locale, then its language, then `[run] default_locale`), so a lender can
reword or add a language without touching code. StrictUndefined: a typo in a template
fails loudly instead of texting a borrower a blank.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from jinja2 import TemplateNotFound

from reminder.config import Config
from reminder.rendering import Renderer, day

# Twilio <Say language=...> for a borrower locale's language.
SAY_LANGUAGES = {"en": "en-US", "es": "es-US", "zh": "cmn-CN"}
# The same Polly voices the voice adapter speaks the call with, so the voice never changes.
SAY_VOICES = {"en-US": "Polly.Joanna", "es-US": "Polly.Lupe", "cmn-CN": "Polly.Zhiyu"}


class ReplyTexts:
    """Renders one named reply text for a locale."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.env = Renderer(config).env

    def locale_for(self, locale: str | None) -> str:
        """The locale whose reply templates exist, after fallback (for dates and <Say>)."""
        for candidate in self._candidates(locale):
            try:
                self.env.get_template(f"replies/{candidate}/help.txt")
            except TemplateNotFound:
                continue
            return candidate
        return self.config.run.default_locale

    def _candidates(self, locale: str | None) -> list[str]:
        default = self.config.run.default_locale
        wanted = locale or default
        return list(dict.fromkeys([wanted, wanted.split("-")[0], default]))

    def render(self, name: str, locale: str | None, *, promise_date: date | None = None) -> str:
        """The text of reply `name` (e.g. "stop", "promise_date_in_past") in `locale`."""
        chosen = self.locale_for(locale)
        context: dict[str, Any] = {
            "lender": self.config.lender.model_dump(),
            "promise_date": day(promise_date, chosen) if promise_date else "",
            "max_promise_days": self.config.policy.max_promise_days,
        }
        for candidate in self._candidates(chosen):
            try:
                template = self.env.get_template(f"replies/{candidate}/{name}.txt")
            except TemplateNotFound:
                continue
            return template.render(context).strip()
        raise TemplateNotFound(f"replies/{locale}/{name}.txt")

    def say_language(self, locale: str | None) -> str:
        """The Twilio <Say> language for a borrower locale."""
        return SAY_LANGUAGES.get(self.locale_for(locale).split("-")[0], "en-US")
