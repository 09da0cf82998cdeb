"""Twilio REST 2010-04-01 shapes for the fake server: resources, errors, pages and faults.

Field names follow ``api.v2010.account.message`` / ``api.v2010.account.call`` and
``ListMessageResponse`` in ``shared/provider-specs/twilio_api_v2010.json``. Keys starting with
``_`` are the fake's own bookkeeping and are never sent.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

from reminder.domain.sms_encoding import sms_encoding

API_PREFIX = "/2010-04-01/Accounts/"


@dataclass(frozen=True)
class Fault:
    """One programmed failure. Build with the class methods rather than by hand."""

    kind: str  # "error" (an HTTP error with Twilio's JSON body), "slow", "late" or "drop"
    status: int = 500
    code: int | None = None
    message: str = ""
    retry_after: int | None = None
    delay: float = 0.0
    accept: bool = False  # slow/drop: whether the message is accepted (recorded) at all

    @classmethod
    def opted_out(cls) -> Fault:
        """Twilio 21610: the recipient replied STOP."""
        return cls("error", 400, 21610, "Attempt to send to unsubscribed recipient")

    @classmethod
    def invalid_number(cls) -> Fault:
        """Twilio 21211: the To number is not a valid phone number."""
        return cls("error", 400, 21211, "Invalid 'To' Phone Number")

    @classmethod
    def rate_limited(cls, retry_after: int = 1) -> Fault:
        """HTTP 429 (Twilio 20429) with a Retry-After header in seconds."""
        return cls("error", 429, 20429, "Too Many Requests", retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """HTTP 500 or 503 (Twilio 20500 / 20503)."""
        message = "Service Unavailable" if status == 503 else "Internal Server Error"
        return cls("error", status, 20000 + status, message)

    @classmethod
    def slow(cls, seconds: float, accept: bool = True) -> Fault:
        """Answer after ``seconds`` (more than the client timeout, to time it out).

        With ``accept`` the message is recorded on arrival and a 201 follows; without, nothing
        is recorded and a 503 (Twilio 20503) follows.
        """
        return cls("slow", delay=seconds, accept=accept)

    @classmethod
    def late(cls, seconds: float) -> Fault:
        """Hold the request ``seconds``, then accept it: the provider took the message after
        the client gave up, so a lookup right after the timeout does not find it yet."""
        return cls("late", delay=seconds, accept=True)

    @classmethod
    def dropped(cls, accept: bool = False) -> Fault:
        """Close the socket without answering; ``accept`` records the message first."""
        return cls("drop", accept=accept)


def fault_label(fault: Fault) -> str:
    """A fault's kind as the fake counts it: "429", "500", "timeout_taken" (accepted, then
    answered too late), "timeout_late" (accepted after the client gave up), "timeout_lost"
    (never accepted), "drop" / "drop_taken"."""
    if fault.kind == "error":
        return str(fault.status)
    if fault.kind == "slow":
        return "timeout_taken" if fault.accept else "timeout_lost"
    if fault.kind == "late":
        return "timeout_late"
    return "drop_taken" if fault.accept else "drop"


@dataclass
class FaultPhase:
    """An outage, then the recovery: for ``seconds`` from the first create request after it
    is set, a fraction ``p`` of creates fail with a seeded mix of 429 (Retry-After), 500 and
    timeouts (held ``slow_seconds``; a third accepted on arrival, a third accepted after the
    hold, a third never accepted); after that, none."""

    p: float
    seconds: float
    seed: int = 0
    slow_seconds: float = 2.0
    retry_after: int = 1
    started_at: float | None = None
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self, now: float) -> Fault | None:
        """The fault for a create arriving at ``now`` (time.time()), or None."""
        if self.started_at is None:
            self.started_at = now
        if now - self.started_at >= self.seconds or self.rng.random() >= self.p:
            return None
        kind = self.rng.choice(["429", "500", "timeout"])
        if kind == "timeout":
            kind = self.rng.choice(["timeout_taken", "timeout_late", "timeout_lost"])
        return {"429": Fault.rate_limited(self.retry_after), "500": Fault.server_error(),
                "timeout_taken": Fault.slow(self.slow_seconds),
                "timeout_late": Fault.late(self.slow_seconds),
                "timeout_lost": Fault.slow(self.slow_seconds, accept=False)}[kind]

    def ended(self, now: float) -> bool:
        """Whether the phase has started and is over."""
        return self.started_at is not None and now - self.started_at >= self.seconds


@dataclass(frozen=True)
class Accepted:
    """A message or call the fake accepted, as logged (one JSON line each)."""

    kind: str  # "message" | "call"
    sid: str
    to: str
    from_: str  # From, or the MessagingServiceSid
    body: str  # Body for a message; Twiml or Url for a call
    status_callback: str
    arrived_at: float  # time.time() on arrival


Records = list[Accepted] | list[dict[str, Any]]


def _rows(records: Records) -> list[dict[str, Any]]:
    return [r if isinstance(r, dict) else asdict(r) for r in records]


def duplicate_pairs(records: Records) -> list[tuple[str, str]]:
    """Return every (To, Body) message pair accepted more than once."""
    seen = Counter((r["to"], r["body"]) for r in _rows(records) if r["kind"] == "message")
    return [pair for pair, n in seen.items() if n > 1]


def duplicate_callbacks(records: Records) -> list[str]:
    """Return every non-empty StatusCallback URL accepted more than once."""
    seen = Counter(r["status_callback"] for r in _rows(records) if r["status_callback"])
    return [url for url, n in seen.items() if n > 1]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Read the JSON-lines log a fake in another process wrote (a torn last line is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def error_body(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's JSON error body, which the client turns into ``TwilioRestException``."""
    info = f"https://www.twilio.com/docs/errors/{code}"
    return {"code": code, "message": message, "more_info": info, "status": status}


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment.replace(microsecond=0))


def new_resource(
    kind: str, account_sid: str, form: dict[str, str], now: float
) -> tuple[dict[str, Any], Accepted]:
    """Build the resource a create returns (status "queued") and its log record."""
    moment = datetime.fromtimestamp(now, UTC)
    res = "Messages" if kind == "message" else "Calls"
    sid = ("SM" if kind == "message" else "CA") + secrets.token_hex(16)
    uri = f"{API_PREFIX}{account_sid}/{res}/{sid}.json"
    to, from_ = form.get("To"), form.get("From")
    common: dict[str, Any] = {
        "sid": sid, "account_sid": account_sid, "to": to, "from": from_, "status": "queued",
        "date_created": _rfc2822(moment), "date_updated": _rfc2822(moment), "price": None,
        "price_unit": "USD", "api_version": "2010-04-01", "uri": uri,
        "direction": "outbound-api", "_sent_at": moment,
    }  # fmt: skip
    if kind == "message":
        body = form.get("Body", "")
        resource = common | {
            "body": body, "num_segments": str(sms_encoding(body).segments),
            "date_sent": _rfc2822(moment), "error_code": None, "error_message": None,
            "num_media": "0", "messaging_service_sid": form.get("MessagingServiceSid"),
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
        }  # fmt: skip
        text = body
    else:
        resource = common | {
            "to_formatted": to, "from_formatted": from_, "parent_call_sid": None,
            "phone_number_sid": None, "start_time": None, "end_time": None, "duration": None,
            "answered_by": None, "forwarded_from": None, "group_sid": None,
            "caller_name": None, "queue_time": "0", "trunk_sid": None,
            "subresource_uris": {"recordings": uri.replace(".json", "/Recordings.json")},
        }  # fmt: skip
        text = form.get("Twiml") or form.get("Url", "")
    sender = from_ or form.get("MessagingServiceSid", "")
    record = Accepted(kind, sid, to or "", sender, text, form.get("StatusCallback", ""), now)
    return resource, record


def public(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the fake's bookkeeping keys."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


def _date_matches(resource: dict[str, Any], query: dict[str, str]) -> bool:
    """Apply DateSent / DateSent< / DateSent> (inclusive, by day when no time is given)."""
    sent = resource["_sent_at"]
    for op in ("", "<", ">"):
        value = query.get("DateSent" + op)
        if not value:
            continue
        bound = datetime.fromisoformat(value.replace("Z", "+00:00"))
        bound = bound if bound.tzinfo else bound.replace(tzinfo=UTC)
        by_day = not op or len(value) == 10 or bound.time() == datetime.min.time()
        left, right = (sent.date(), bound.date()) if by_day else (sent, bound)
        if not {"": left == right, "<": left <= right, ">": left >= right}[op]:
            return False
    return True


def list_page(resources: list[dict[str, Any]], query: dict[str, str], path: str) -> dict:
    """One page of a Messages.json / Calls.json list, newest first, filtered like Twilio."""
    messages = path.endswith("/Messages.json")
    rows = [
        r for r in reversed(resources)
        if r["sid"].startswith("SM" if messages else "CA")
        and all(not query.get(k) or r[k.lower()] == query[k] for k in ("To", "From"))
        and _date_matches(r, query)
    ]  # fmt: skip
    size, page = int(query.get("PageSize") or 50), int(query.get("Page") or 0)
    chunk = rows[page * size : (page + 1) * size]
    keep = {k: v for k, v in query.items() if k not in ("Page", "PageToken", "PageSize")}

    def page_uri(n: int) -> str:
        return path + "?" + urlencode(keep | {"PageSize": size, "Page": n})

    more = (page + 1) * size < len(rows)
    return {
        "messages" if messages else "calls": [public(r) for r in chunk],
        "page": page, "page_size": size, "start": page * size,
        "end": page * size + max(len(chunk) - 1, 0), "uri": page_uri(page),
        "first_page_uri": page_uri(0), "next_page_uri": page_uri(page + 1) if more else None,
        "previous_page_uri": page_uri(page - 1) if page else None,
    }  # fmt: skip


def post_status_callbacks(
    record: Accepted, base: str, account_sid: str, auth_token: str, statuses: tuple[str, ...]
) -> None:
    """POST Twilio's status callbacks for ``record``, as a form signed like Twilio signs it.

    The request goes to ``base`` plus the StatusCallback URL's path and query (the app's public
    URL is not reachable from a test); ``X-Twilio-Signature`` is computed over the original
    URL, as Twilio computes it. ErrorCode is sent only for "failed" and "undelivered" (30003).
    """
    parts = urlsplit(record.status_callback)
    target = base.rstrip("/") + parts.path + ("?" + parts.query if parts.query else "")
    signer = RequestValidator(auth_token)
    for status in statuses:
        form = {
            "MessageSid": record.sid, "SmsSid": record.sid, "MessageStatus": status,
            "SmsStatus": status, "To": record.to, "From": record.from_,
            "AccountSid": account_sid, "ApiVersion": "2010-04-01",
        }  # fmt: skip
        if status in ("failed", "undelivered"):
            form["ErrorCode"] = "30003"
        headers = {
            "X-Twilio-Signature": signer.compute_signature(record.status_callback, form),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        request = urllib.request.Request(target, urlencode(form).encode(), headers)
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).close()
