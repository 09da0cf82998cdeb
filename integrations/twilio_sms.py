"""Twilio Programmable Messaging: the `twilio` SMS provider, with the official client.

Also the home of what Twilio SMS and Voice share (client construction honouring
`base_url`, error translation), so `twilio_voice` imports it from here.

Our reference travels in the StatusCallback URL (`?ref=`), never a phone number or a name,
so the status webhook can find the rows. The message list API does not echo that URL back,
so `lookup()` (crash reconciliation, and the check after an ambiguous timeout) matches the
one field we control that it does return: the exact body, sent to this number since the
message was claimed. A timeout the lookup cannot settle is `UnconfirmedSendError`, never
retried on the spot: Twilio may still be taking a request its client gave up on.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
import requests.utils
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from integrations.credentials import TwilioCredentials, channel_setting
from reminder.config import Config
from reminder.errors import (
    ConfigError,
    PermanentSendError,
    TransientSendError,
    UnconfirmedSendError,
)
from reminder.ports import OutgoingMessage, SendResult

log = logging.getLogger(__name__)
# twilio logs every request's query (a lookup's To number) and response body at INFO:
# its own logger is held at WARNING so that no phone number or message text reaches logs.
wire_log = logging.getLogger(__name__ + ".wire")
wire_log.setLevel(logging.WARNING)

TWILIO_API = "https://api.twilio.com"
OPTED_OUT = 21610  # "Attempt to send to unsubscribed recipient" (the borrower sent STOP)
TRANSIENT_STATUSES = frozenset({401, 403, 408, 409, 429})  # auth: a config fix, not the message


class HeaderKeepingHttpClient(TwilioHttpClient):
    """TwilioHttpClient that keeps the last response's headers per thread (for Retry-After),
    pools as many connections as the dispatcher runs threads (for http:// too), and reads
    proxy settings once: requests otherwise scans os.environ on every call (13% of the
    CPU a send costs)."""

    def __init__(self, timeout: float, pool_size: int, base_url: str = TWILIO_API) -> None:
        proxy = requests.utils.get_environ_proxies(base_url)
        super().__init__(timeout=timeout, proxy=proxy, logger=wire_log)
        assert self.session is not None
        self.session.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.session.verify = bundle
        self._local = threading.local()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.headers = {}
        response = super().request(*args, **kwargs)
        self._local.headers = dict(response.headers or {})
        return response

    @property
    def last_headers(self) -> dict[str, str]:
        return getattr(self._local, "headers", {})


def make_client(config: Config, channel: str) -> tuple[Client, HeaderKeepingHttpClient]:
    """An official client for `channel`, pointed at `[channels.X] base_url` when set."""
    credentials = TwilioCredentials.from_env(channel)
    settings = config.channel(channel)
    timeout = float(channel_setting(config, channel, "timeout_seconds", 10))
    pool = int(channel_setting(config, channel, "concurrency", 32))
    base_url = (settings.base_url or TWILIO_API).rstrip("/")
    http = HeaderKeepingHttpClient(timeout=timeout, pool_size=pool, base_url=base_url)
    client = Client(credentials.account_sid, credentials.auth_token, http_client=http)
    if settings.base_url:
        client.api.base_url = base_url  # twilio 9 has no host argument
    return client, http


def callback_url(config: Config, path: str, reference: str) -> str:
    """`[server] public_url` + path + `?ref=<reference>`: our id, never PII."""
    return f"{config.server.public_url.rstrip('/')}{path}?ref={quote(reference, safe='')}"


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; dates are rare here)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


PHONE_IN_TEXT = re.compile(r"\+?\d[\d ()-]{6,}\d")


def mask_phones(text: str) -> str:
    """Twilio's error texts often quote the number ("The 'To' number +1415… is not valid"):
    keep the country-code end and the last two digits only, so no stored or logged error
    carries a full phone number."""
    return PHONE_IN_TEXT.sub(lambda m: f"{m.group()[:3]}***{m.group()[-2:]}", text)


def translate(exc: Exception, http: HeaderKeepingHttpClient) -> Exception:
    """A twilio/requests error as our TransientSendError or PermanentSendError."""
    if isinstance(exc, TwilioRestException):
        code = str(exc.code or exc.status)
        text = mask_phones(f"twilio {exc.status}/{code}: {exc.msg}")
        if exc.code == OPTED_OUT:
            return PermanentSendError(text, code, opted_out=True)
        if exc.status >= 500 or exc.status in TRANSIENT_STATUSES:
            return TransientSendError(text, code, retry_after(http.last_headers))
        return PermanentSendError(text, code)
    if isinstance(exc, requests.Timeout):
        return TransientSendError(f"twilio timeout: {type(exc).__name__}", "timeout")
    if isinstance(exc, requests.RequestException):
        return TransientSendError(f"twilio connection: {type(exc).__name__}", "connection")
    return TransientSendError(f"twilio: {exc}", "twilio")


def ambiguous(exc: Exception) -> bool:
    """True when the request may have reached Twilio before failing (a retry could duplicate)."""
    return isinstance(exc, requests.RequestException) and not isinstance(
        exc, requests.ConnectTimeout
    )


def confirm(find: Callable[[], SendResult | None], exc: Exception,
            http: HeaderKeepingHttpClient) -> SendResult:  # fmt: skip
    """After an ambiguous failure: what Twilio lists for the send, else UnconfirmedSendError.

    Not found is no proof: the request may still be in Twilio's hands (it takes what its
    client gave up on), so the send is left to reconciliation rather than retried now.
    """
    try:
        found = find()
    except (TwilioException, requests.RequestException):
        found = None  # the lookup failed too: still unconfirmed
    if found is not None:
        return found
    error = translate(exc, http)
    raise UnconfirmedSendError(f"{error}; not listed by Twilio yet", error.code) from exc


class TwilioSmsSender:
    """SmsSender over Twilio's Messages resource."""

    provider = "twilio"
    body_max_segments = 10  # Twilio's own cap; ours is [channels.sms] max_segments
    lookup_window = timedelta(minutes=2)  # how long the message list may lag behind a create

    def __init__(self, config: Config, channel: str = "sms") -> None:
        self.client, self.http = make_client(config, channel)
        self.config = config
        self.sender = channel_setting(config, channel, "from")
        self.service = channel_setting(config, channel, "messaging_service_sid")
        if not (self.sender or self.service):
            raise ConfigError(
                f"channels.{channel}.from", "set `from` or `messaging_service_sid` for Twilio"
            )

    def send(self, message: OutgoingMessage) -> SendResult:
        started = datetime.now().astimezone()
        sender = {"messaging_service_sid": self.service} if self.service else {"from_": self.sender}
        try:
            created = self.client.messages.create(
                to=message.to,
                body=message.body,
                status_callback=message.callback_url
                or callback_url(self.config, "/webhooks/twilio/status", message.reference),
                **sender,
            )
        except (TwilioException, requests.RequestException) as exc:
            if ambiguous(exc):
                since = started - timedelta(seconds=5)
                return confirm(lambda: self._find(message, since), exc, self.http)
            raise translate(exc, self.http) from exc
        return SendResult(provider=self.provider, provider_id=created.sid)

    def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """The message Twilio accepted for this send since `since`, if any."""
        try:
            return self._find(message, since)
        except (TwilioException, requests.RequestException) as exc:
            raise translate(exc, self.http) from exc

    def _find(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        query: dict[str, Any] = {"to": message.to, "date_sent_after": since.date(), "limit": 200}
        if self.sender and not self.service:
            query["from_"] = self.sender
        for found in self.client.messages.list(**query):
            created = found.date_created
            if found.body == message.body and (created is None or created >= _floor(since)):
                return SendResult(provider=self.provider, provider_id=found.sid)
        return None


def _floor(moment: datetime) -> datetime:
    """Twilio dates have whole seconds: compare from the start of `moment`'s second."""
    return moment.replace(microsecond=0)
