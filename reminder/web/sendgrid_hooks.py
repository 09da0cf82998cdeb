"""SendGrid webhooks: the signed Event Webhook (delivery status) and Inbound Parse (replies).

Events are verified with the official `EventWebhook` helper (ECDSA P-256 over timestamp +
payload, public key from SENDGRID_WEBHOOK_PUBLIC_KEY) and a timestamp tolerance; the whole
batch is applied in one transaction, so a retried batch is simply applied again, harmlessly.
Inbound Parse cannot be signed: the URL configured at SendGrid carries `?key=<secret>` (or
basic-auth credentials), checked before the body is even read.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from reminder.bootstrap import App
from reminder.services.borrower_match import mask
from reminder.services.delivery_status import apply_in, sendgrid_event
from reminder.services.inbound_email import inbound_reply
from reminder.services.replies import handle_reply
from reminder.web.security import (
    SENDGRID_EVENTS_MAX_BODY,
    SENDGRID_INBOUND_MAX_BODY,
    bad_request,
    check_inbound_secret,
    check_sendgrid_events,
    read_body,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/webhooks/sendgrid", tags=["sendgrid"])
TEXT_FIELDS = ("from", "to", "subject", "text", "html", "headers", "email", "envelope")


def _app(request: Request) -> App:
    return request.app.state.reminder  # type: ignore[no-any-return]


@router.post("/events", status_code=204, response_class=Response)
async def events(request: Request) -> Response:
    """A signed batch of email events: delivered, bounce, dropped, unsubscribe, ..."""
    body = await read_body(request, SENDGRID_EVENTS_MAX_BODY)
    check_sendgrid_events(request, body, request.app.state.secrets)
    try:
        batch = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request() from exc
    if not isinstance(batch, list) or not all(isinstance(item, dict) for item in batch):
        raise bad_request()
    await run_in_threadpool(_apply_batch, _app(request), batch)
    return Response(status_code=204)


def _apply_batch(app: App, batch: list[dict[str, Any]]) -> None:
    with app.engine.begin() as conn:
        for item in batch:
            apply_in(conn, app, sendgrid_event(item), "email")


@router.post("/inbound", response_class=Response)
async def inbound(request: Request) -> Response:
    """A borrower's email reply, as Inbound Parse posts it (multipart form)."""
    check_inbound_secret(request, request.app.state.secrets)
    body = await read_body(request, SENDGRID_INBOUND_MAX_BODY)
    fields = await _form_fields(request, body)
    reply = inbound_reply(fields)
    if reply is None:
        raise bad_request()
    outcome = await run_in_threadpool(handle_reply, _app(request), reply)
    log.info(
        "inbound email from %s: %s%s",
        mask(reply.sender),
        outcome.intent,
        " (duplicate)" if outcome.duplicate else "",
    )
    return Response(status_code=200)


async def _form_fields(request: Request, body: bytes) -> dict[str, str]:
    """The text fields of the (already size-checked) form; attachments are ignored."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise bad_request()
    copy = Request(request.scope, receive=replay)
    try:
        form = await copy.form(max_files=50, max_fields=200)
    except Exception as exc:  # the multipart parser raises several types for bad input
        raise bad_request() from exc
    fields: dict[str, str] = {}
    try:
        for name in TEXT_FIELDS:
            value = form.get(name)
            if isinstance(value, str):
                fields[name] = value
            elif isinstance(value, UploadFile):  # raw mode may post the MIME as a file part
                fields[name] = (await value.read()).decode("utf-8", "replace")
    finally:
        await form.close()
    return fields
