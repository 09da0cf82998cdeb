"""Twilio Programmable Voice: the `twilio` voice provider, with the official client.

The call is placed with `Url` = `/webhooks/twilio/voice?ref=<reference>` and synchronous
answering-machine detection (`MachineDetection=DetectMessageEnd`): Twilio first finds
out whether a person or a machine answered, then asks our webhook what to say, with
`AnsweredBy` in the request. A person hears the reminder in their language and a one-key
menu (1: payment link by SMS, 2: call me back, 3: promise to pay within 7 days); a
voicemail gets a short message naming only the lender — never the debt, which whoever
plays the tape back must not hear. The words live in one place: the webhook
(`reminder.services.voice_menu`), which reads the rendered body stored on the message row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import requests
from twilio.base.exceptions import TwilioException

from integrations.credentials import channel_setting
from integrations.twilio_sms import ambiguous, callback_url, confirm, make_client, translate
from reminder.config import Config
from reminder.errors import ConfigError
from reminder.ports import OutgoingMessage, SendResult


class TwilioVoiceCaller:
    """VoiceCaller over Twilio's Calls resource."""

    provider = "twilio"
    lookup_window = timedelta(minutes=2)

    def __init__(self, config: Config, channel: str = "voice") -> None:
        self.client, self.http = make_client(config, channel)
        self.config = config
        self.sender = channel_setting(config, channel, "from")
        if not self.sender:
            raise ConfigError(f"channels.{channel}.from", "set the caller number for Twilio")

    def send(self, message: OutgoingMessage) -> SendResult:
        started = datetime.now().astimezone()
        voice_url = callback_url(self.config, "/webhooks/twilio/voice", message.reference)
        try:
            call = self.client.calls.create(
                to=message.to,
                from_=self.sender,
                url=voice_url,
                method="POST",
                machine_detection="DetectMessageEnd",
                status_callback=message.callback_url
                or callback_url(self.config, "/webhooks/twilio/status", message.reference),
            )  # no StatusCallbackEvent: Twilio's default is "completed" only, what we want
        except (TwilioException, requests.RequestException) as exc:
            if ambiguous(exc):
                since = started - timedelta(seconds=5)
                return confirm(lambda: self._find(message, since), exc, self.http)
            raise translate(exc, self.http) from exc
        return SendResult(provider=self.provider, provider_id=call.sid)

    def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """A call to this number from our number created since `since`, if any.

        Calls carry nothing of ours that the list returns; one call per borrower per
        claim (the cap and the claim guarantee it) makes to + from + time enough.
        """
        try:
            return self._find(message, since)
        except (TwilioException, requests.RequestException) as exc:
            raise translate(exc, self.http) from exc

    def _find(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        query: dict[str, Any] = {"to": message.to, "from_": self.sender, "limit": 50}
        floor = since.replace(microsecond=0)
        for call in self.client.calls.list(**query):
            if call.date_created is None or call.date_created >= floor:
                return SendResult(provider=self.provider, provider_id=call.sid)
        return None
