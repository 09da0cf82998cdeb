"""The webhook server (`reminder serve`): provider webhooks, the agency API, `/healthz`.

`create_app(app)` builds the FastAPI application around an `App` from `bootstrap()`;
secrets come from the environment once, here. Paths (SPEC section 5):

    POST /webhooks/twilio/sms        inbound SMS            X-Twilio-Signature
    POST /webhooks/twilio/status     message/call status    X-Twilio-Signature
    POST /webhooks/twilio/voice      TwiML and keypresses   X-Twilio-Signature
    POST /webhooks/sendgrid/events   Event Webhook          ECDSA signature + timestamp
    POST /webhooks/sendgrid/inbound  Inbound Parse          ?key= secret or basic auth
    POST /agencies/{id}/outcomes     agency outcomes        bearer token (reminder.web.agencies)
    GET  /healthz                    liveness + database
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from reminder.bootstrap import App
from reminder.web import sendgrid_hooks, twilio_hooks
from reminder.web.security import WebhookSecrets

log = logging.getLogger(__name__)


def create_app(app: App, environ: Mapping[str, str] | None = None) -> FastAPI:
    """The FastAPI application serving `app`; `environ` defaults to os.environ."""
    api = FastAPI(title="reminder webhooks", docs_url=None, redoc_url=None)
    _redact_access_log()
    api.state.reminder = app
    api.state.secrets = WebhookSecrets.from_env(environ)
    api.include_router(twilio_hooks.router)
    api.include_router(sendgrid_hooks.router)
    agencies = _agency_router()
    if agencies is not None:
        api.include_router(agencies)

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        """Up, and the database answers: what a load balancer or supervisor checks."""
        try:
            await run_in_threadpool(_ping, app)
        except Exception:
            log.exception("healthz: database check failed")
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return api


def _agency_router() -> APIRouter | None:
    """The agency outcomes router, written by the handoff work in `reminder.web.agencies`.

    Included only when that module exists, so the webhook server runs before it lands;
    any other import error inside it is a real bug and is raised.
    """
    try:
        module = importlib.import_module("reminder.web.agencies")
    except ModuleNotFoundError as exc:
        if exc.name != "reminder.web.agencies":
            raise
        return None
    return module.router  # type: ignore[no-any-return]


class RedactSecrets(logging.Filter):
    """Hide `?key=<secret>` (Inbound Parse) in uvicorn's access log lines."""

    PATTERN = re.compile(r"(?i)([?&]key=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


def _ping(app: App) -> None:
    with app.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def serve(app: App) -> None:
    """Run the webhook server on `[server] host:port` until interrupted (blocking)."""
    import uvicorn

    server = app.config.server
    uvicorn.run(create_app(app), host=server.host, port=server.port, log_level="info")
