"""The composition root: config + database + adapters -> an `App` the entry points use.

This is the only module that imports `integrations/`. Providers are listed in one explicit
registry; an adapter is built the first time its channel is used (so `reminder import`
needs no provider credentials), and `App.check_channels()` builds them all up front for
the commands that send (`run`, `serve`), failing early with the missing variable named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from reminder.clock import SystemClock
from reminder.config import AgencyConfig, Config, load_config
from reminder.db.engine import make_engine
from reminder.errors import ConfigError
from reminder.ports import AgencyTransport, Clock, Sender

SenderFactory = Callable[[Config, str], Sender]


def _outbox(config: Config, channel: str) -> Sender:
    from integrations.outbox import OutboxSender

    return OutboxSender(config.resolve_path(config.outbox.path), channel)


def _twilio_sms(config: Config, channel: str) -> Sender:
    from integrations.twilio_sms import TwilioSmsSender

    return TwilioSmsSender(config, channel)


def _twilio_voice(config: Config, channel: str) -> Sender:
    from integrations.twilio_voice import TwilioVoiceCaller

    return TwilioVoiceCaller(config, channel)


def _sendgrid(config: Config, channel: str) -> Sender:
    from integrations.sendgrid_email import SendGridEmailSender

    return SendGridEmailSender(config, channel)


def _smtp(config: Config, channel: str) -> Sender:
    from integrations.smtp_email import SmtpEmailSender

    return SmtpEmailSender(config, channel)


# channel -> provider name -> factory. Later adapters register here, nowhere else.
PROVIDERS: dict[str, dict[str, SenderFactory]] = {
    "sms": {"outbox": _outbox, "twilio": _twilio_sms},
    "email": {"outbox": _outbox, "sendgrid": _sendgrid, "smtp": _smtp},
    "voice": {"outbox": _outbox, "twilio": _twilio_voice},
}


def _folder_transport(config: Config, agency: AgencyConfig) -> AgencyTransport:
    from integrations.folder_transport import FolderTransport

    return FolderTransport.from_config(config, agency)


def _sftp_transport(config: Config, agency: AgencyConfig) -> AgencyTransport:
    from integrations.sftp_transport import SftpTransport

    return SftpTransport.from_config(config, agency)


def _https_transport(config: Config, agency: AgencyConfig) -> AgencyTransport:
    from integrations.https_transport import HttpsTransport

    return HttpsTransport.from_config(config, agency)


TransportFactory = Callable[[Config, AgencyConfig], AgencyTransport]

# [[agencies]] transport -> factory; built when a file is sent (credentials read then).
AGENCY_TRANSPORTS: dict[str, TransportFactory] = {
    "folder": _folder_transport,
    "sftp": _sftp_transport,
    "https": _https_transport,
}


@dataclass
class App:
    """Everything a command needs, built once at start-up."""

    config: Config
    engine: Engine
    clock: Clock
    senders: dict[str, Sender] = field(default_factory=dict)

    def sender(self, channel: str) -> Sender:
        if channel not in self.senders:
            provider = self.config.channel(channel).provider
            factory = PROVIDERS.get(channel, {}).get(provider)
            if factory is None:
                known = ", ".join(sorted(PROVIDERS.get(channel, {})))
                raise ConfigError(
                    f"channels.{channel}.provider",
                    f"unknown provider {provider!r} (known: {known})",
                    self.config.source,
                )
            self.senders[channel] = factory(self.config, channel)
        return self.senders[channel]

    def check_channels(self) -> None:
        """Build every channel's adapter now: a missing credential fails at start-up."""
        for channel in ("sms", "email", "voice"):
            self.sender(channel)


def bootstrap(
    config: Config | None = None,
    *,
    config_path: Path | None = None,
    clock: Clock | None = None,
    senders: dict[str, Sender] | None = None,
    engine: Engine | None = None,
    **engine_options: Any,
) -> App:
    """Build the application; tests pass fakes for `clock` and `senders`."""
    config = config or load_config(config_path)
    return App(
        config=config,
        engine=engine or make_engine(config.database_url, **engine_options),
        clock=clock or SystemClock(),
        senders=dict(senders or {}),
    )
