"""`reminder preview STAGE CHANNEL [--locale L] [--json]` (SPEC section 8).

Renders the stage's template with realistic sample data (two loans, four-digit amounts,
a long name) so a lender sees what a borrower would get; for SMS it also shows the
encoding (GSM-7 or UCS-2) and the segment count against `[channels.sms] max_segments`.
Needs no database and no provider credentials.
"""

from __future__ import annotations

import typer
from jinja2 import TemplateError, TemplateNotFound

from reminder.cli.common import command, emit_json, out_console, state
from reminder.config import CHANNELS, load_config
from reminder.domain.sms_encoding import sms_encoding
from reminder.errors import ConfigError, InputError
from reminder.rendering import Renderer, sample_context


def register(app: typer.Typer) -> None:
    """Add the preview command to `app`."""

    @app.command("preview")
    @command
    def preview(
        ctx: typer.Context,
        stage: str = typer.Argument(..., help="a stage name from config.toml"),
        channel: str = typer.Argument(..., help="sms | email | voice"),
        locale: str | None = typer.Option(None, "--locale", "-l", help="default: [run] locale"),
        as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    ) -> None:
        """Render a template with sample data; for SMS, its encoding and segment count."""
        config = load_config(state(ctx).config_path)
        if channel not in CHANNELS:
            raise InputError(f"CHANNEL: {channel!r} is not one of {', '.join(CHANNELS)}")
        found = config.stage(stage)
        if found is None or found.handoff:
            names = ", ".join(s.name for s in config.stages if not s.handoff)
            raise InputError(f"STAGE: {stage!r} is not a reminder stage (stages: {names})")
        locale = locale or config.run.default_locale
        renderer = Renderer(config)
        try:
            used = renderer.template_locale(channel, stage, locale)
            rendered = renderer.render(channel, stage, locale, sample_context(renderer, stage,
                                                                              locale))
        except TemplateNotFound as exc:
            raise ConfigError(f"templates/{channel}/{locale}/{stage}", "not found") from exc
        except TemplateError as exc:
            raise ConfigError(f"templates/{channel}/{used}/{stage}", str(exc)) from exc
        document: dict[str, object] = {"stage": stage, "channel": channel, "locale": locale,
                                       "template_locale": used, "body": rendered.body}
        if channel == "email":
            document |= {"subject": rendered.subject, "html": rendered.html}
        if channel == "sms":
            encoding = sms_encoding(rendered.body)
            limit = config.channel("sms").max_segments
            document |= {"encoding": encoding.encoding, "units": encoding.units,
                         "segments": encoding.segments, "max_segments": limit}
        if as_json:
            emit_json(document)
            return
        _print(document)


def _print(document: dict[str, object]) -> None:
    head = f"{document['stage']} / {document['channel']} / {document['locale']}"
    if document["template_locale"] != document["locale"]:
        head += f" (templates of {document['template_locale']})"
    out_console.print(f"[bold]{head}[/bold]", highlight=False)
    if "subject" in document:
        out_console.print(f"Subject: {document['subject']}", highlight=False, markup=False)
    out_console.print("", document["body"], "", sep="\n", highlight=False, markup=False,
                      soft_wrap=True)
    if "segments" in document:
        over = document["segments"] > document["max_segments"]  # type: ignore[operator]
        note = f"  [red]more than max_segments = {document['max_segments']}[/red]" if over else ""
        out_console.print(
            f"{document['encoding']}, {document['units']} units, "
            f"{document['segments']} segment(s){note}", highlight=False)  # fmt: skip
    if document.get("html"):
        out_console.print("----- html -----", str(document["html"]), sep="\n",
                          highlight=False, markup=False)  # fmt: skip
