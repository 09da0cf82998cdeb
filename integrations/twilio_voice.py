"""Twilio Programmable Voice: the `twilio` voice provider, with the official client.

The call carries its TwiML inline: the reminder is spoken (`<Say language=...>`) in the
borrower's language inside a `<Gather numDigits="1">` whose action posts the keypress to
`/webhooks/twilio/voice?ref=<reference>` (1: payment link by SMS, 2: call me back,
3: promise to pay within 7 days). Answering-machine detection runs asynchronously and
reports to the same webhook (`&event=amd`), so the webhook can replace the message with a
limited-content one on a voicemail (no debt details for whoever plays the tape back).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import requests
from twilio.base.exceptions import TwilioException
from twilio.twiml.voice_response import VoiceResponse

from integrations.credentials import channel_setting
from integrations.twilio_sms import ambiguous, callback_url, make_client, translate
from reminder.config import Config
from reminder.errors import ConfigError
from reminder.ports import OutgoingMessage, SendResult

# Our locales -> a <Say> language Twilio speaks (Basic/Polly/Google voices accept these).
SAY_LANGUAGES = {"en": "en-US", "es": "es-US", "zh-CN": "cmn-CN", "zh": "cmn-CN"}
SAY_VOICES = {"en-US": "Polly.Joanna", "es-US": "Polly.Lupe", "cmn-CN": "Polly.Zhiyu"}
MENU_HINT = {
    "en": "Press 1, 2 or 3.",
    "es": "Marque 1, 2 o 3.",
    "zh-CN": "请按1、2或3。",
}
GOODBYE = {
    "en": "We did not receive a choice. Goodbye.",
    "es": "No recibimos ninguna opción. Adiós.",
    "zh-CN": "我们没有收到您的选择。再见。",
}


def say_language(locale: str) -> str:
    """The Twilio <Say> language for a borrower locale (exact, then language, then en-US)."""
    return SAY_LANGUAGES.get(locale) or SAY_LANGUAGES.get(locale.split("-")[0]) or "en-US"


def _text(table: dict[str, str], locale: str) -> str:
    return table.get(locale) or table.get(locale.split("-")[0]) or table["en"]


def twiml(message: OutgoingMessage, action_url: str) -> str:
    """The call's TwiML: the words, a one-digit menu, then a goodbye if nothing is pressed."""
    language = say_language(message.locale)
    voice = {"language": language, "voice": SAY_VOICES[language]}
    response = VoiceResponse()
    gather = response.gather(num_digits=1, action=action_url, method="POST", timeout=8)
    gather.say(message.body, **voice)
    gather.pause(length=1)
    gather.say(_text(MENU_HINT, message.locale), **voice)
    response.say(_text(GOODBYE, message.locale), **voice)
    return str(response)


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
                twiml=twiml(message, voice_url),
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=voice_url + "&event=amd",
                status_callback=message.callback_url
                or callback_url(self.config, "/webhooks/twilio/status", message.reference),
            )  # no StatusCallbackEvent: Twilio's default is "completed" only, what we want
        except (TwilioException, requests.RequestException) as exc:
            if ambiguous(exc):
                found = self._find(message, started - timedelta(seconds=5))
                if found is not None:
                    return found
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
