"""SMTP submission: the `smtp` email provider, for lenders without SendGrid.

Settings come from the environment (SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD,
SMTP_STARTTLS; see `integrations.credentials.SmtpSettings`). Our reference is the local
part of the Message-ID (`<ref@reminder>`), so a bounce names it and nothing personal.
SMTP has no way to ask a server what it accepted earlier, so there is no `lookup()`.
A connection per send keeps this simple and robust; SMTP is the low-volume option.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from integrations.credentials import SmtpSettings, channel_setting
from reminder.config import Config
from reminder.errors import ConfigError, PermanentSendError, SendError, TransientSendError
from reminder.ports import OutgoingMessage, SendResult


def translate(exc: Exception) -> SendError:
    """smtplib / socket errors as ours: 4xx and network trouble retry, 5xx does not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        code = codes[0] if codes else 550
        cls = TransientSendError if 400 <= code < 500 else PermanentSendError
        return cls(f"smtp recipient refused ({code})", str(code))
    if isinstance(exc, smtplib.SMTPResponseException):
        code = int(exc.smtp_code)
        text = f"smtp {code}: {exc.smtp_error!r}"[:300]
        if 400 <= code < 500:
            return TransientSendError(text, str(code))
        if code in (530, 535):  # authentication: a configuration fix, not this message
            return TransientSendError(text, str(code))
        return PermanentSendError(text, str(code))
    return TransientSendError(f"smtp connection: {type(exc).__name__}", "connection")


class SmtpEmailSender:
    """EmailSender over plain SMTP (STARTTLS or implicit TLS when configured)."""

    provider = "smtp"

    def __init__(self, config: Config, channel: str = "email") -> None:
        self.settings = SmtpSettings.from_env()
        self.sender = channel_setting(config, channel, "from")
        if not self.sender:
            raise ConfigError(f"channels.{channel}.from", "set the sender address for SMTP")
        self.sender_name = config.lender.name
        self.timeout = float(channel_setting(config, channel, "timeout_seconds", 10))

    def _message(self, message: OutgoingMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = f"{self.sender_name} <{self.sender}>" if self.sender_name else self.sender
        email["To"] = message.to
        email["Subject"] = message.subject or ""
        email["Message-ID"] = f"<{message.reference}@reminder>"
        for name, value in message.headers.items():
            email[name] = value
        email.set_content(message.body)
        if message.html:
            email.add_alternative(message.html, subtype="html")
        return email

    def send(self, message: OutgoingMessage) -> SendResult:
        email = self._message(message)
        settings = self.settings
        try:
            if settings.ssl:
                context = ssl.create_default_context()
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    settings.host, settings.port, timeout=self.timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(settings.host, settings.port, timeout=self.timeout)
            with smtp:
                if settings.starttls and not settings.ssl:
                    smtp.starttls(context=ssl.create_default_context())
                if settings.username and settings.password:
                    smtp.login(settings.username, settings.password)
                smtp.send_message(email, from_addr=self.sender, to_addrs=[message.to])
        except (smtplib.SMTPException, OSError) as exc:
            raise translate(exc) from exc
        return SendResult(provider=self.provider, provider_id=email["Message-ID"].strip("<>"))
