"""Helpers for the webhook tests: the real app under uvicorn on loopback, signed requests.

Requests are signed the way the providers sign them, with their own algorithms: Twilio's
`RequestValidator.compute_signature` (HMAC-SHA1 of public URL + sorted params), SendGrid's
ECDSA P-256 over timestamp + payload with a key pair made here (the public key goes to the
app exactly as SendGrid shows it: base64 DER, no PEM armour).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, func, select
from twilio.request_validator import RequestValidator

from reminder.bootstrap import App, bootstrap
from reminder.clock import FixedClock
from reminder.config import Config, ServerConfig
from reminder.db.tables import contact_flags, messages, promises, replies
from reminder.ports import OutgoingMessage, SendResult
from reminder.web import create_app

PUBLIC_URL = "https://bot.lender.example"
TWILIO_TOKEN = "test-auth-token-0123456789abcdef"
INBOUND_SECRET = "inbound-secret-7f3a9c"


class RecordingSender:
    """A channel adapter that keeps what it was asked to send (SMS, email or voice)."""

    provider = "fake"

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        with self.lock:
            self.sent.append(message)
            return SendResult(provider=self.provider, provider_id=f"FAKE{len(self.sent):06d}")


@dataclass
class SendGridKeys:
    """An ECDSA P-256 key pair standing in for SendGrid's signing key."""

    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def public_b64(self) -> str:
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, payload: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "Content-Type": "application/json",
        }


def twilio_headers(path_and_query: str, params: dict[str, str]) -> dict[str, str]:
    """Twilio's signature of a form post to `PUBLIC_URL + path_and_query`."""
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        PUBLIC_URL + path_and_query, params
    )
    return {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


@dataclass
class Harness:
    """A running webhook server with its App, fake senders and an HTTP client."""

    app: App
    base_url: str
    client: httpx.Client
    senders: dict[str, RecordingSender]
    keys: SendGridKeys
    clock: FixedClock

    def __repr__(self) -> str:  # hypothesis prints fixtures in failure reports
        return f"Harness({self.base_url})"

    def twilio(self, path_and_query: str, params: dict[str, str], **kw: Any) -> httpx.Response:
        """POST a correctly signed Twilio webhook."""
        headers = twilio_headers(path_and_query, params) | kw.pop("headers", {})
        return self.client.post(path_and_query, content=urlencode(params), headers=headers, **kw)

    def sms(self, sid: str, sender: str, body: str) -> httpx.Response:
        params = {"MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": sender,
                  "To": "+15005550006", "Body": body}  # fmt: skip
        return self.twilio("/webhooks/twilio/sms", params)

    def sendgrid_events(self, events: list[dict[str, Any]], **kw: Any) -> httpx.Response:
        import json

        payload = json.dumps(events).encode()
        return self.client.post(
            "/webhooks/sendgrid/events", content=payload, headers=self.keys.headers(payload), **kw
        )

    def inbound_email(self, fields: dict[str, str], key: str = INBOUND_SECRET) -> httpx.Response:
        files = {name: (None, value) for name, value in fields.items()}
        return self.client.post(f"/webhooks/sendgrid/inbound?key={key}", files=files)


def webhook_config(config: Config) -> Config:
    """The shipped config with a public URL unlike the loopback address we listen on."""
    return config.model_copy(update={"server": ServerConfig(public_url=PUBLIC_URL)})


@contextmanager
def live_server(engine: Engine, config: Config, clock: FixedClock) -> Iterator[Harness]:
    """Start `create_app` under uvicorn on 127.0.0.1 (a free port) for one test."""
    senders = {channel: RecordingSender() for channel in ("sms", "email", "voice")}
    app = bootstrap(webhook_config(config), clock=clock, senders=senders, engine=engine)  # type: ignore[arg-type]
    keys = SendGridKeys()
    environ = {
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "SENDGRID_WEBHOOK_PUBLIC_KEY": keys.public_b64,
        "SENDGRID_INBOUND_SECRET": INBOUND_SECRET,
    }
    server = uvicorn.Server(
        uvicorn.Config(create_app(app, environ), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            yield Harness(app, base_url, client, senders, keys, clock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def state_counts(engine: Engine) -> dict[str, Any]:
    """Everything a webhook may change, to compare before and after a request."""
    with engine.connect() as conn:
        return {
            "replies": conn.execute(select(func.count()).select_from(replies)).scalar_one(),
            "promises": conn.execute(select(func.count()).select_from(promises)).scalar_one(),
            "flags": conn.execute(
                select(
                    contact_flags.c.kind, contact_flags.c.channel, contact_flags.c.lifted_at
                ).order_by(contact_flags.c.id)
            ).all(),
            "messages": conn.execute(
                select(messages.c.id, messages.c.status, messages.c.error_code).order_by(
                    messages.c.id
                )
            ).all(),
        }
