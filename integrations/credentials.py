"""Provider credentials and per-channel settings, read in one place at start-up.

Secrets come only from the environment (never config.toml); a missing one is a
`ConfigError` naming the variable, raised when the adapter is built (`App.check_channels`),
so `reminder run` fails at 07:00 with a clear message rather than mid-dispatch. Objects
holding a secret redact it when printed, so a traceback or a log line never shows it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from reminder.config import Config
from reminder.errors import ConfigError


def require_env(name: str, why: str) -> str:
    """The value of environment variable `name`, or ConfigError naming it."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(name, f"environment variable is not set (needed for {why})")
    return value


def channel_setting(config: Config, channel: str, key: str, default: Any = None) -> Any:
    """An extra key of `[channels.<channel>]` (`from`, `messaging_service_sid`, ...)."""
    extra = config.channel(channel).model_extra or {}
    return extra.get(key, default)


@dataclass(frozen=True)
class TwilioCredentials:
    """Account SID and auth token; the token never appears in repr()."""

    account_sid: str
    auth_token: str = field(repr=False)

    @classmethod
    def from_env(cls, channel: str) -> TwilioCredentials:
        why = f"[channels.{channel}] provider = \"twilio\""
        return cls(require_env("TWILIO_ACCOUNT_SID", why), require_env("TWILIO_AUTH_TOKEN", why))


@dataclass(frozen=True)
class SendGridCredentials:
    """The API key; never shown in repr()."""

    api_key: str = field(repr=False)

    @classmethod
    def from_env(cls) -> SendGridCredentials:
        why = '[channels.email] provider = "sendgrid"'
        return cls(require_env("SENDGRID_API_KEY", why))


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to submit mail: SMTP_HOST (required), SMTP_PORT, SMTP_USERNAME,
    SMTP_PASSWORD (both or neither), SMTP_STARTTLS (default true unless port 25/1025)."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    starttls: bool
    ssl: bool

    @classmethod
    def from_env(cls) -> SmtpSettings:
        why = '[channels.email] provider = "smtp"'
        host = require_env("SMTP_HOST", why)
        raw_port = os.environ.get("SMTP_PORT", "587").strip() or "587"
        if not raw_port.isdigit():
            raise ConfigError("SMTP_PORT", f"{raw_port!r} is not a port number")
        port = int(raw_port)
        username = os.environ.get("SMTP_USERNAME") or None
        password = os.environ.get("SMTP_PASSWORD") or None
        if username and not password:
            password = require_env("SMTP_PASSWORD", "SMTP_USERNAME is set")
        flag = os.environ.get("SMTP_STARTTLS")
        starttls = port not in (25, 465, 1025) if flag is None else flag.lower() in ("1", "true")
        return cls(host, port, username, password, starttls, ssl=port == 465)
