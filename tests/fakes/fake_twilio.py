"""A real HTTP server on loopback that speaks enough Twilio REST 2010-04-01 for the twilio client.

It does what a Prism mock cannot: Twilio error codes (21610, 21211), 429 with Retry-After, 5xx,
responses slower than the client's timeout, dropped connections, seeded random failures,
status callbacks, a time-bounded fault phase (an outage, then the recovery), and a log of
every accepted message to check for duplicate sends.

Faults apply to create requests only (``POST .../Messages.json`` and ``.../Calls.json``); a
per-recipient rule wins over the next-N queue, which wins over random failures and the fault
phase. A "slow" or "dropped" fault with ``accept=True`` records the message first: the
provider took it, the client never heard back, which is the case duplicate-send tests need;
a "late" fault records it only after the hold, when the client has already given up.

In process::

    with FakeTwilio(latency=0.05) as fake:
        client.api.base_url = fake.base_url
        fake.fail_recipient("+15005550009", Fault.opted_out())

As a process (prints ``listening on http://127.0.0.1:PORT``; JSON lines appended per accept)::

    python -m tests.fakes.fake_twilio --port 0 --latency-ms 50 --log /tmp/accepted.jsonl \
        --fault-rate 0.3 --fault-seconds 60 --slow-seconds 2.5

Control endpoints (no auth; not Twilio's): ``GET /_fake/stats`` answers ``stats()`` as JSON,
``POST /_fake/faults`` with a JSON ``{"p", "seconds", "seed", "slow_seconds"}`` starts a
fault phase (``fail_for``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import random
import re
import signal
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.twilio_wire import (
    Accepted,
    Fault,
    FaultPhase,
    duplicate_callbacks,
    duplicate_pairs,
    error_body,
    fault_label,
    list_page,
    new_resource,
    post_status_callbacks,
    public,
    read_log,
)

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "Accepted", "FakeTwilio", "Fault", "FaultPhase",
           "duplicate_callbacks", "duplicate_pairs", "read_log"]

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "fake-auth-token"
_ROUTE = re.compile(r"^/2010-04-01/Accounts/(?P<acct>[^/]+)/(?P<res>Messages|Calls)"
                    r"(?:/(?P<sid>[^/]+))?\.json$")


class FakeTwilio:
    """The fake Twilio server; every public method is thread-safe.

    Args:
        account_sid: The AccountSid that basic auth and the URL path must carry.
        auth_token: The token basic auth must carry; it also signs status callbacks.
        port: Port on 127.0.0.1; 0 picks a free one (see ``port``).
        latency: Seconds added to every answer.
        log_path: Where to append a JSON line per accepted message or call.
        status_callback_base: When set, POST a status callback after each accepted message
            to this scheme://host:port plus the StatusCallback URL's path and query, signed
            with ``X-Twilio-Signature`` for the original URL.
        callback_statuses: The MessageStatus values sent, in order.
    """

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN, *,
                 port: int = 0, latency: float = 0.0, log_path: str | Path | None = None,
                 status_callback_base: str | None = None,
                 callback_statuses: tuple[str, ...] = ("delivered",)) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.status_callback_base, self.callback_statuses = status_callback_base, callback_statuses
        self._lock, self._stopping = threading.Lock(), threading.Event()
        self._latency = latency
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._resources: dict[str, dict[str, Any]] = {}
        self._accepted: list[Accepted] = []
        self._next: deque[Fault] = deque()
        self._by_recipient: dict[str, list[Any]] = {}
        self._random: tuple[float, random.Random, float] | None = None
        self._phase: FaultPhase | None = None
        self.create_requests = 0
        self.faults: Counter[str] = Counter()  # every fault applied, by `fault_label`
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``client.api.base_url``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeTwilio:
        """Serve in a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers, close the socket and the log."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._log:
            self._log.close()

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_latency(self, seconds: float) -> None:
        """Set the delay added to every answer."""
        with self._lock:
            self._latency = seconds

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` create requests (after any already queued)."""
        with self._lock:
            self._next.extend([fault] * times)

    def fail_recipient(self, to: str, fault: Fault, times: int | None = None) -> None:
        """Apply ``fault`` to sends to ``to``: ``times`` times, or always when None."""
        with self._lock:
            self._by_recipient[to] = [fault, times]

    def fail_randomly(self, p: float, seed: int = 0, slow_seconds: float = 2.0) -> None:
        """Fail a fraction ``p`` of creates with a seeded mix of 429, 500 and slow (accepted)."""
        with self._lock:
            self._random = (p, random.Random(seed), slow_seconds)

    def fail_for(self, p: float, seconds: float, seed: int = 0, slow_seconds: float = 2.0,
                 ) -> None:  # fmt: skip
        """Start a fault phase (see ``FaultPhase``): for ``seconds`` from the next create, a
        fraction ``p`` fails with a mix of 429, 500 and timeouts; then the provider recovers."""
        with self._lock:
            self._phase = FaultPhase(p, seconds, seed=seed, slow_seconds=slow_seconds)

    def clear_faults(self) -> None:
        """Forget every programmed fault."""
        with self._lock:
            self._next.clear()
            self._by_recipient.clear()
            self._random = None
            self._phase = None

    def stats(self) -> dict[str, Any]:
        """Create requests, accepted messages and calls, faults by kind, the fault phase."""
        with self._lock:
            phase = self._phase
            return {
                "create_requests": self.create_requests, "accepted": len(self._accepted),
                "faults": dict(self.faults),
                "phase": None if phase is None else {
                    "p": phase.p, "seconds": phase.seconds, "started_at": phase.started_at,
                    "ended": phase.ended(time.time())},
            }  # fmt: skip

    @property
    def accepted(self) -> list[Accepted]:
        """A snapshot of every accepted message and call, in arrival order."""
        with self._lock:
            return list(self._accepted)

    @property
    def messages(self) -> list[Accepted]:
        """A snapshot of the accepted messages only."""
        return [a for a in self.accepted if a.kind == "message"]

    def duplicate_pairs(self) -> list[tuple[str, str]]:
        """Return every (To, Body) pair accepted more than once."""
        return duplicate_pairs(self.accepted)

    def duplicate_callbacks(self) -> list[str]:
        """Return every StatusCallback URL accepted more than once."""
        return duplicate_callbacks(self.accepted)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Accepted]:
        """Wait until ``count`` messages were accepted; return them (maybe fewer on timeout)."""
        deadline = time.monotonic() + timeout
        while len(found := self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    def _pick_fault(self, to: str) -> Fault | None:
        with self._lock:
            self.create_requests += 1
            fault = self._choose_fault(to)
            if fault is not None:
                self.faults[fault_label(fault)] += 1
            return fault

    def _choose_fault(self, to: str) -> Fault | None:
        rule = self._by_recipient.get(to)
        if rule and rule[1] != 0:
            rule[1] = None if rule[1] is None else rule[1] - 1
            return rule[0]
        if self._next:
            return self._next.popleft()
        if self._random and self._random[1].random() < self._random[0]:
            choice = self._random[1].choice(["429", "500", "slow"])
            return {"429": Fault.rate_limited(), "500": Fault.server_error(),
                    "slow": Fault.slow(self._random[2])}[choice]
        return self._phase.pick(time.time()) if self._phase else None

    def _create(self, res: str, form: dict[str, str], at: float | None = None) -> dict[str, Any]:
        """Take a message or call; `at` is when its request arrived (default: now)."""
        kind = "message" if res == "Messages" else "call"
        resource, record = new_resource(kind, self.account_sid, form, at or time.time())
        with self._lock:
            self._resources[record.sid] = resource
            self._accepted.append(record)
            if self._log:
                self._log.write(json.dumps(asdict(record)) + "\n")
                self._log.flush()
        if kind == "message" and self.status_callback_base and record.status_callback:
            base, statuses = self.status_callback_base, self.callback_statuses
            args = (record, base, self.account_sid, self.auth_token, statuses)
            threading.Thread(target=post_status_callbacks, args=args, daemon=True).start()
        return resource


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once
    fake: FakeTwilio

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts) are expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs: +40 ms each
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """No access log on stderr."""

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None,
              ) -> None:
        data = json.dumps(public(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int, message: str, **headers: str) -> None:
        self._send(status, error_body(status, code, message), headers)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        arrived = time.time()  # the provider's clock on receipt, before the latency
        url = urlsplit(self.path)
        if url.path.startswith("/_fake/"):
            return self._control(method, url.path, raw)
        form = {k: v[0] for k, v in parse_qs(raw or url.query, keep_blank_values=True).items()}
        fake._stopping.wait(fake._latency)
        expected = f"{fake.account_sid}:{fake.auth_token}".encode()
        if self.headers.get("Authorization", "") != "Basic " + base64.b64encode(expected).decode():
            return self._error(401, 20003, "Authenticate")
        match = _ROUTE.match(url.path)
        if not match or match["acct"] != fake.account_sid or (method == "POST" and match["sid"]):
            return self._error(404, 20404, f"The requested resource {url.path} was not found")
        if method == "GET":
            return self._get(match["sid"], form, url.path)
        if not form.get("To"):
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if match["res"] == "Messages" and not form.get("Body") and not form.get("MediaUrl"):
            return self._error(400, 21602, "Message body is required.")
        if match["res"] == "Calls" and not any(form.get(k) for k in ("Url", "Twiml")):
            return self._error(400, 21205, "Url parameter is required.")
        fault = fake._pick_fault(form["To"])
        if fault and fault.kind == "error":
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            return self._error(fault.status, fault.code or fault.status, fault.message, **extra)
        on_arrival = not fault or (fault.accept and fault.kind != "late")
        resource = fake._create(match["res"], form, arrived) if on_arrival else None
        if fault and fault.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault and fault.kind == "slow":
            fake._stopping.wait(fault.delay)
            if resource is None:
                return self._error(503, 20503, "Service Unavailable")
        if fault and fault.kind == "late":
            if fake._stopping.wait(fault.delay):
                return None  # shutting down: the log is closed
            resource = fake._create(match["res"], form)
        return self._send(201, resource or {})

    def _control(self, method: str, path: str, raw: str) -> None:
        """The fake's own endpoints: read the figures, start a fault phase."""
        fake = self.server.fake
        if method == "GET" and path == "/_fake/stats":
            return self._send(200, fake.stats())
        if method == "POST" and path == "/_fake/faults":
            spec = json.loads(raw or "{}")
            fake.fail_for(float(spec["p"]), float(spec["seconds"]), int(spec.get("seed", 0)),
                          float(spec.get("slow_seconds", 2.0)))  # fmt: skip
            return self._send(200, fake.stats())
        return self._error(404, 20404, f"The requested resource {path} was not found")

    def _get(self, sid: str | None, query: dict[str, str], path: str) -> None:
        fake = self.server.fake
        with fake._lock:
            resources = list(fake._resources.values())
        if not sid:
            return self._send(200, list_page(resources, query, path))
        found = [r for r in resources if r["sid"] == sid]
        if not found:
            return self._error(404, 20404, f"The requested resource {path} was not found")
        return self._send(200, found[0])


def main(argv: list[str] | None = None) -> None:
    """Run the fake until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--log", default=None, help="append accepted messages as JSON lines")
    parser.add_argument("--account-sid", default=ACCOUNT_SID)
    parser.add_argument("--auth-token", default=AUTH_TOKEN)
    parser.add_argument("--status-callback-base", default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="fault phase: the fraction of creates that fail")
    parser.add_argument("--fault-seconds", type=float, default=60.0,
                        help="fault phase: how long, from the first create request")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--slow-seconds", type=float, default=2.0,
                        help="fault phase: how long a timeout holds the request")
    args = parser.parse_args(argv)
    fake = FakeTwilio(args.account_sid, args.auth_token, port=args.port,
                      latency=args.latency_ms / 1000, log_path=args.log,
                      status_callback_base=args.status_callback_base)
    if args.fault_rate:
        fake.fail_for(args.fault_rate, args.fault_seconds, args.fault_seed, args.slow_seconds)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # As its own process the fake keeps every message taken (50,000 in the scale test);
    # a full garbage collection over them paused every request thread for ~70 ms, then
    # the queued requests were read, and stamped, in one burst. What it allocates per
    # request holds no cycles, so reference counting frees it without the collector.
    gc.disable()
    fake.start()
    print(f"listening on {fake.base_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    fake.stop()


if __name__ == "__main__":
    main()
