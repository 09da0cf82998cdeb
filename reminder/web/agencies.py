"""`POST /agencies/{agency_id}/outcomes`: agencies report outcomes over HTTP.

The body is a JSON array of outcome objects with the fields of the outcome file
(case_id, outcome, amount, date, agency_ref, note). Each agency authenticates with the
bearer token held in the environment variable its config names (`outcome_token_env`),
compared in constant time. Answers: 404 unknown agency, 401 no token, 403 wrong token (or
no token configured for the agency), 413 body over `MAX_BODY_BYTES`, 422 not a JSON array;
otherwise 200 with the import summary, where a rejected row's `line` is its position in
the array counted from 1. Rows are applied exactly as `reminder handoff import` does.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from reminder.bootstrap import App
from reminder.services.outcomes import ingest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 5 * 1024 * 1024
router = APIRouter()


def _check_token(request: Request, env_name: str | None, agency_id: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise HTTPException(401, "bearer token required", {"WWW-Authenticate": "Bearer"})
    expected = os.environ.get(env_name) if env_name else None
    if not expected:
        log.warning("agency %s: outcome token variable %s is not set", agency_id, env_name)
        raise HTTPException(403, "outcomes over HTTP are not enabled for this agency")
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise HTTPException(403, "wrong token")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/agencies/{agency_id}/outcomes")
async def post_outcomes(agency_id: str, request: Request) -> dict[str, Any]:
    """Validate and apply an agency's outcomes; the summary says what happened per row."""
    app: App = request.app.state.reminder
    agency = next((a for a in app.config.agencies if a.id == agency_id), None)
    if agency is None:
        raise HTTPException(404, "unknown agency")
    _check_token(request, agency.outcome_token_env, agency_id)
    body = await _read_body(request)
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, "the body is not JSON") from exc
    if not isinstance(document, list):
        raise HTTPException(422, "expected a JSON array of outcome objects")
    rows = [(index, item) for index, item in enumerate(document, start=1)]
    report = await run_in_threadpool(ingest, app, agency_id, rows)
    return report.as_dict()
