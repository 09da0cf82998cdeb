"""SendGrid v3 Mail Send: the `sendgrid` email provider, with the official client.

Our reference rides in `custom_args` (`{"ref": ...}`, never an address or a name), so the
Event Webhook can find the rows. `send_batch()` puts up to 1,000 messages in one request:
the request's content is a shared template of two substitution tags and each
personalization carries its own rendered text, subject, headers and reference; `send()` is
a batch of one. SendGrid has no API to look a single send up afterwards (Email Activity is
a paid add-on), so `lookup()` is absent and a crash mid-send leaves the row `unknown`.

SendGrid accepts mail to an unsubscribed address and drops it later (the Event Webhook
reports it); a 400 that names an unsubscribe/suppression is treated as opted out.
"""

from __future__ import annotations

import json
import socket
import urllib.error
from collections.abc import Sequence
from typing import Any

import python_http_client.exceptions as http_errors
import sendgrid

from integrations.credentials import SendGridCredentials, channel_setting
from integrations.twilio_sms import retry_after
from reminder.config import Config
from reminder.errors import ConfigError, PermanentSendError, SendError, TransientSendError
from reminder.ports import OutgoingMessage, SendResult

MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTION_BYTES = 10_000  # per personalization, all substitutions together
TEXT_TAG, HTML_TAG = "%reminder_text%", "%reminder_html%"
DEFAULT_HOST = "https://api.sendgrid.com"


def translate(exc: Exception) -> SendError:
    """A python-http-client / urllib error as our TransientSendError or PermanentSendError."""
    if isinstance(exc, http_errors.HTTPError):
        status = int(exc.status_code)
        body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body)
        text = f"sendgrid {status}: {body[:300]}"
        if status == 429 or status >= 500 or status in (401, 403):
            headers = dict(exc.headers.items()) if exc.headers else {}
            return TransientSendError(text, str(status), retry_after(headers))
        unsubscribed = any(word in body.lower() for word in ("unsubscribe", "suppress"))
        return PermanentSendError(text, str(status), opted_out=unsubscribed)
    if isinstance(exc, TimeoutError | socket.timeout):
        return TransientSendError("sendgrid timeout", "timeout")
    if isinstance(exc, urllib.error.URLError | OSError):
        return TransientSendError(f"sendgrid connection: {type(exc).__name__}", "connection")
    return TransientSendError(f"sendgrid: {exc}", "sendgrid")


class SendGridEmailSender:
    """EmailSender over SendGrid; `send_batch` for many messages in one request."""

    provider = "sendgrid"
    max_batch = MAX_PERSONALIZATIONS

    def __init__(self, config: Config, channel: str = "email") -> None:
        credentials = SendGridCredentials.from_env()
        host = (config.channel(channel).base_url or DEFAULT_HOST).rstrip("/")
        self.api = sendgrid.SendGridAPIClient(credentials.api_key, host=host)
        self.api.client.timeout = float(channel_setting(config, channel, "timeout_seconds", 10))
        sender = channel_setting(config, channel, "from")
        if not sender:
            raise ConfigError(f"channels.{channel}.from", "set the sender address for SendGrid")
        self.sender = {"email": sender, "name": config.lender.name}

    def send(self, message: OutgoingMessage) -> SendResult:
        outcome = self.send_batch([message])[0]
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | SendError]:
        """Send many messages, one request per 1,000; an outcome per message, in order.

        A failed request fails only its own messages (returned, not raised), so one bad
        chunk does not stop the others.
        """
        outcomes: list[SendResult | SendError] = []
        for start in range(0, len(messages), MAX_PERSONALIZATIONS):
            chunk = messages[start : start + MAX_PERSONALIZATIONS]
            try:
                message_id = self._post(request_body(chunk, self.sender))
            except SendError as exc:
                outcomes.extend([exc] * len(chunk))
                continue
            outcomes.extend(
                SendResult(self.provider, f"{message_id or 'sendgrid'}:{m.reference}")
                for m in chunk
            )
        return outcomes

    def _post(self, body: dict[str, Any]) -> str | None:
        try:
            response = self.api.client.mail.send.post(request_body=body)
        except Exception as exc:  # the client raises HTTPError subclasses and urllib errors
            raise translate(exc) from exc
        headers = response.headers or {}
        return headers.get("X-Message-Id") or headers.get("x-message-id")


def request_body(messages: Sequence[OutgoingMessage], sender: dict[str, str]) -> dict[str, Any]:
    """One v3 mail/send body for up to 1,000 messages sharing the substitution template."""
    if not 0 < len(messages) <= MAX_PERSONALIZATIONS:
        raise ValueError(f"1 to {MAX_PERSONALIZATIONS} messages per request")
    has_html = any(m.html for m in messages)
    content = [{"type": "text/plain", "value": TEXT_TAG}]
    if has_html:
        content.append({"type": "text/html", "value": HTML_TAG})
    return {
        "from": sender,
        "subject": messages[0].subject or "-",
        "content": content,
        "personalizations": [_personalization(m, has_html) for m in messages],
    }


def _personalization(message: OutgoingMessage, has_html: bool) -> dict[str, Any]:
    substitutions = {TEXT_TAG: message.body}
    if has_html:
        substitutions[HTML_TAG] = message.html or _as_html(message.body)
    size = len(json.dumps(substitutions, ensure_ascii=False).encode())
    if size > MAX_SUBSTITUTION_BYTES:
        raise PermanentSendError(f"email too large for SendGrid ({size} bytes)", "too_large")
    found: dict[str, Any] = {
        "to": [{"email": message.to}],
        "subject": message.subject or "-",
        "substitutions": substitutions,
        "custom_args": {"ref": message.reference},
    }
    if message.headers:
        found["headers"] = dict(message.headers)
    return found


def _as_html(text: str) -> str:
    from html import escape

    return "<p>" + escape(text).replace("\n", "<br>") + "</p>"
