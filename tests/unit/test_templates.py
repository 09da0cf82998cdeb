"""Every template renders for every stage, channel and locale; SMS fit; goldens per locale.

Set REMINDER_UPDATE_GOLDEN=1 to rewrite tests/golden/ after a deliberate wording change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from reminder.config import Config
from reminder.domain.sms_encoding import sms_encoding
from reminder.errors import ConfigError
from reminder.rendering import Renderer, check_templates, sample_context

STAGES = ("upcoming", "early", "mid", "late")
CHANNELS = ("sms", "email", "voice")
LOCALES = ("en", "es", "zh-CN")
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
OPT_OUT = {"en": "Reply STOP to opt out", "es": "Responde BAJA para no recibir más mensajes",
           "zh-CN": "回复TD退订"}  # fmt: skip


@pytest.fixture
def renderer(config: Config) -> Renderer:
    return Renderer(config)


def test_every_locale_has_its_own_templates(renderer: Renderer):
    assert set(LOCALES) <= set(renderer.locales())
    for channel in CHANNELS:
        for locale in LOCALES:
            for stage in STAGES:
                assert renderer.template_locale(channel, stage, locale) == locale


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("stage", STAGES)
def test_each_template_renders_and_names_lender_amount_and_how_to_pay(
    renderer: Renderer, config: Config, stage: str, channel: str, locale: str
):
    context = sample_context(renderer, stage, locale)
    rendered = renderer.render(channel, stage, locale, context)
    body = rendered.body
    if channel == "sms":  # amounts lose their no-break spaces (GSM-7 has none)
        context = {k: v.replace("\xa0", " ") if isinstance(v, str) else v
                   for k, v in context.items()}  # fmt: skip
    assert config.lender.name in body and context["total"] in body
    if stage in ("upcoming", "early") and channel != "voice":
        assert context["due_date"] in body
    if channel == "sms":
        assert OPT_OUT[locale] in rendered.body
        assert sms_encoding(rendered.body).segments <= config.channel("sms").max_segments
        assert config.lender.payment_url in rendered.body or config.lender.phone in rendered.body
    if channel == "email":
        assert rendered.subject and "\n" not in rendered.subject
        assert config.lender.unsubscribe_url in rendered.body
        assert f'href="{config.lender.unsubscribe_url}"' in (rendered.html or "")
        assert config.lender.payment_url in rendered.body
    if channel == "voice":
        assert "1" in rendered.body and "3" in rendered.body and "7" in rendered.body


def test_the_start_up_check_renders_every_configured_combination(config: Config):
    checks = check_templates(config)
    stages = {s.name for s in config.stages if not s.handoff}
    assert {c.stage for c in checks} == stages and {c.locale for c in checks} >= set(LOCALES)
    assert all(c.encoding is not None for c in checks if c.channel == "sms")


def _override(config: Config, path: str, text: str) -> None:
    target = config.base_dir / "templates" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def test_an_unknown_variable_fails_at_start_up_naming_the_template(config: Config):
    _override(config, "sms/es/mid.txt", "{{ lender.name }}: {{ amount_owed }}")
    with pytest.raises(ConfigError) as caught:
        check_templates(config)
    assert caught.value.field == "templates/sms/es/mid" and "amount_owed" in str(caught.value)


def test_a_stage_without_templates_fails_at_start_up(config: Config):
    stages = (*config.stages, config.stages[0].model_copy(update={"name": "final",
                                                                   "dpd": (40000, 40001)}))
    with pytest.raises(ConfigError) as caught:
        check_templates(config.model_copy(update={"stages": stages}))
    assert "final" in caught.value.field


def test_an_sms_longer_than_max_segments_only_warns(config: Config, caplog):
    _override(config, "sms/en/early.txt", "{{ lender.name }}: " + "long words " * 60)
    with caplog.at_level(logging.WARNING, logger="reminder.rendering"):
        checks = check_templates(config)
    assert "templates/sms/en/early renders to 5 SMS segments" in caplog.text
    assert any(c.encoding and c.encoding.segments == 5 for c in checks)


def test_html_is_autoescaped_and_text_is_not(renderer: Renderer):
    context = sample_context(renderer, "early", "en")
    context["borrower"] = {"name": "Tom <b>& Jerry", "first_name": "Tom"}
    rendered = renderer.render("email", "early", "en", context)
    assert "Tom &lt;b&gt;&amp; Jerry" in (rendered.html or "")
    assert "Tom <b>& Jerry" in rendered.body


def test_an_unknown_locale_falls_back_to_its_language_then_the_default(renderer: Renderer):
    assert renderer.template_locale("sms", "early", "es-MX") == "es"
    assert renderer.template_locale("sms", "early", "fr") == "en"


def _golden_text(renderer: Renderer, locale: str) -> dict[str, str]:
    context = sample_context(renderer, "late", locale)
    email = renderer.render("email", "late", locale, context)
    return {
        "sms.txt": renderer.render("sms", "late", locale, context).body,
        "email.txt": f"Subject: {email.subject}\n\n{email.body}\n\n----- html -----\n{email.html}",
        "voice.txt": renderer.render("voice", "late", locale, context).body,
    }


@pytest.mark.parametrize("locale", LOCALES)
def test_golden_renderings_per_locale(renderer: Renderer, locale: str):
    for name, text in _golden_text(renderer, locale).items():
        path = GOLDEN / locale / name
        if os.environ.get("REMINDER_UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
        assert path.read_text(encoding="utf-8") == text + "\n", f"golden {locale}/{name}"


def test_preview_prints_the_sms_with_its_encoding_and_segments():
    import json

    from typer.testing import CliRunner

    from reminder.cli import app

    config = str(Path(__file__).resolve().parents[2] / "config.toml")
    runner = CliRunner()
    done = runner.invoke(app, ["--config", config, "preview", "late", "sms", "-l", "zh-CN",
                               "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert (document["encoding"], document["segments"]) == ("UCS-2", 2)
    assert document["body"].endswith("回复TD退订")
    text = runner.invoke(app, ["--config", config, "preview", "early", "sms"])
    assert "GSM-7" in text.stdout and "segment" in text.stdout
    assert runner.invoke(app, ["--config", config, "preview", "handoff", "sms"]).exit_code == 2
