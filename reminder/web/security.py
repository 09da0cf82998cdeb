"""Who may call the webhooks: Twilio signatures, SendGrid ECDSA signatures, a shared secret.

Everything here rejects before any state is touched, with a bare 4xx that echoes nothing:
403 for a missing or wrong signature or secret (and when the secret is not configured:
fail closed), 413 for a body over the endpoint's limit, 400 for a body we cannot parse.
Secrets are read from the environment once, when the app is built, and never printed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

TWILIO_MAX_BODY = 64 * 1024  # an SMS webhook is ~1 KiB; a full 1600-char body stays far below
SENDGRID_EVENTS_MAX_BODY = 5 * 1024 * 1024  # SendGrid batches events: a few MiB at most
SENDGRID_INBOUND_MAX_BODY = 30 * 1024 * 1024  # Inbound Parse's own limit, attachments included
SENDGRID_TOLERANCE_SECONDS = 300  # a signed event batch older (or newer) than this is a replay


@dataclass(frozen=True)
class WebhookSecrets:
    """The credentials webhooks are checked with; `repr` never shows them."""

    twilio_auth_token: str | None = field(default=None, repr=False)
    sendgrid_public_key: str | None = field(default=None, repr=False)
    sendgrid_inbound_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSecrets:
        """TWILIO_AUTH_TOKEN, SENDGRID_WEBHOOK_PUBLIC_KEY, SENDGRID_INBOUND_SECRET."""
        env = os.environ if environ is None else environ
        return cls(
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            sendgrid_public_key=env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
            sendgrid_inbound_secret=env.get("SENDGRID_INBOUND_SECRET") or None,
        )


def forbidden() -> HTTPException:
    return HTTPException(status_code=403, detail="forbidden")


def bad_request() -> HTTPException:
    return HTTPException(status_code=400, detail="bad request")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request()
        if int(declared) > limit:
            raise HTTPException(status_code=413, detail="too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail="too large")
        chunks.append(chunk)
    return b"".join(chunks)


def form_params(body: bytes) -> ImmutableMultiDict[str, str]:
    """An application/x-www-form-urlencoded body (what Twilio posts) as a multi-dict."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=500)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request() from exc
    if any("\x00" in name or "\x00" in value for name, value in pairs):
        raise bad_request()  # no provider sends NUL; PostgreSQL text cannot store it
    return ImmutableMultiDict(pairs)


def public_url_of(request: Request, public_url: str) -> str:
    """The URL Twilio signed: `[server] public_url` + path + query, whatever host we run on."""
    query = request.url.query
    return public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")


def check_twilio(
    request: Request, params: ImmutableMultiDict[str, str], secrets: WebhookSecrets, public_url: str
) -> None:
    """403 unless X-Twilio-Signature is Twilio's HMAC of the public URL and the params."""
    signature = request.headers.get("x-twilio-signature")
    if not signature or not secrets.twilio_auth_token:
        raise forbidden()
    validator = RequestValidator(secrets.twilio_auth_token)
    if not validator.validate(public_url_of(request, public_url), params, signature):
        raise forbidden()


def check_sendgrid_events(request: Request, body: bytes, secrets: WebhookSecrets) -> None:
    """403 unless the batch carries SendGrid's ECDSA signature over timestamp + payload,
    and the timestamp is within the tolerance (an old, re-posted batch is a replay)."""
    signature = request.headers.get(EventWebhookHeader.SIGNATURE)
    timestamp = request.headers.get(EventWebhookHeader.TIMESTAMP)
    if not signature or not timestamp or not secrets.sendgrid_public_key:
        raise forbidden()
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > SENDGRID_TOLERANCE_SECONDS:
        raise forbidden()
    try:
        verifier = EventWebhook(secrets.sendgrid_public_key)
        valid = verifier.verify_signature(body.decode("utf-8"), signature, timestamp)
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error) as exc:
        raise forbidden() from exc
    if not valid:
        raise forbidden()


def check_inbound_secret(request: Request, secrets: WebhookSecrets) -> None:
    """403 unless `?key=` or the basic-auth password equals SENDGRID_INBOUND_SECRET.

    SendGrid cannot sign Inbound Parse posts, so the URL configured there carries a
    secret; comparisons are constant-time so the secret cannot be guessed byte by byte.
    """
    expected = secrets.sendgrid_inbound_secret
    if not expected:
        raise forbidden()
    offered = request.query_params.get("key")
    if offered is None:
        offered = _basic_password(request.headers.get("authorization"))
    if offered is None or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise forbidden()


def _basic_password(header: str | None) -> str | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None
