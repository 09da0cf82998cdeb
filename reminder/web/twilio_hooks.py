"""Twilio webhooks: inbound SMS, message/call status callbacks, the voice menu (TwiML).

Every request is checked against `X-Twilio-Signature` (the official RequestValidator,
over `[server] public_url` + path + query) before anything else happens. Auto-replies to
SMS are sent through the SMS adapter by `reminder.services.replies`, so the inbound
webhook always answers an empty `<Response/>`: the HTTP answer never carries borrower data.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import ImmutableMultiDict
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import Gather, VoiceResponse

from reminder.bootstrap import App
from reminder.services.borrower_match import mask
from reminder.services.delivery_status import apply_status, twilio_event
from reminder.services.replies import InboundReply, handle_reply
from reminder.services.reply_texts import SAY_VOICES
from reminder.services.voice_menu import VoiceTurn, is_machine, replace_call, voice_turn
from reminder.web.security import (
    TWILIO_MAX_BODY,
    WebhookSecrets,
    bad_request,
    check_twilio,
    form_params,
    read_body,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/webhooks/twilio", tags=["twilio"])
XML = "application/xml"
MAX_SID = 64


def _app(request: Request) -> App:
    return request.app.state.reminder  # type: ignore[no-any-return]


async def _verified(request: Request) -> ImmutableMultiDict[str, str]:
    """The posted parameters, once size and signature are checked (4xx otherwise)."""
    body = await read_body(request, TWILIO_MAX_BODY)
    params = form_params(body)
    secrets: WebhookSecrets = request.app.state.secrets
    check_twilio(request, params, secrets, _app(request).config.server.public_url)
    return params


def _ref(request: Request) -> str | None:
    """Our send reference from the callback URL (we put it there; it never holds NUL)."""
    ref = request.query_params.get("ref")
    if ref is not None and ("\x00" in ref or len(ref) > 80):
        raise bad_request()
    return ref or None


def _sid(params: ImmutableMultiDict[str, str], *names: str) -> str:
    for name in names:
        value = params.get(name, "").strip()
        if value and len(value) <= MAX_SID and value.isalnum():
            return value
    raise bad_request()


@router.post("/sms", response_class=Response)
async def inbound_sms(request: Request) -> Response:
    """A borrower's SMS: recorded and acted on once per MessageSid."""
    params = await _verified(request)
    sid = _sid(params, "MessageSid", "SmsSid")
    sender = params.get("From", "")
    if not sender:
        raise bad_request()
    inbound = InboundReply(
        channel="sms",
        sender=sender,
        body=params.get("Body", ""),
        provider_ref=f"twilio:{sid}",
    )
    outcome = await run_in_threadpool(handle_reply, _app(request), inbound)
    log.info(
        "inbound sms %s from %s: %s%s",
        sid,
        mask(sender),
        outcome.intent,
        " (duplicate)" if outcome.duplicate else "",
    )
    return Response(str(MessagingResponse()), media_type=XML)


@router.post("/status", status_code=204, response_class=Response)
async def status_callback(request: Request) -> Response:
    """A message or call status: moves the send's rows forward, never back."""
    params = await _verified(request)
    ref = _ref(request)
    event = twilio_event(dict(params), ref)
    if not event.ref and not event.provider_id:
        raise bad_request()
    await run_in_threadpool(apply_status, _app(request), event)
    return Response(status_code=204)


@router.post("/voice", response_class=Response)
async def voice(request: Request) -> Response:
    """TwiML for a reminder call: the reminder and a one-key menu, or a short voicemail."""
    params = await _verified(request)
    ref = _ref(request)
    call_sid = _sid(params, "CallSid")
    digits = params.get("Digits") or None
    answered_by = params.get("AnsweredBy") or None
    app = _app(request)
    if request.query_params.get("event") == "amd":  # asynchronous AMD: a verdict, no turn
        if not is_machine(answered_by):
            return Response(str(VoiceResponse()), media_type=XML)
        turn = await run_in_threadpool(voice_turn, app, ref, call_sid, None, answered_by)
        twiml = _twiml(turn, app.config.server.public_url, ref)
        await run_in_threadpool(replace_call, app, call_sid, twiml)
        return Response(twiml, media_type=XML)
    turn = await run_in_threadpool(voice_turn, app, ref, call_sid, digits, answered_by)
    return Response(_twiml(turn, app.config.server.public_url, ref), media_type=XML)


def _twiml(turn: VoiceTurn, public_url: str, ref: str | None) -> str:
    """The turn as TwiML; the menu's action URL is what Twilio will sign for the keypress."""
    response = VoiceResponse()
    voice = {"language": turn.language, "voice": SAY_VOICES.get(turn.language, "Polly.Joanna")}
    if turn.menu is None:
        response.say(turn.say, **voice)
        response.hangup()
        return str(response)
    action = public_url.rstrip("/") + "/webhooks/twilio/voice"
    if ref:
        action += f"?ref={quote(ref, safe='')}"
    gather = Gather(num_digits=1, action=action, method="POST", timeout=8)
    gather.say(turn.say, **voice)
    gather.say(turn.menu, **voice)
    response.append(gather)
    response.hangup()
    return str(response)
