"""The official twilio client (9.x) against tests.fakes.fake_twilio, on loopback."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, Fault, read_log

REPO_ROOT = Path(__file__).resolve().parents[2]
ALICE, BOB, SENDER = "+15005550006", "+15005550007", "+15005550001"


class RecordingHttpClient(TwilioHttpClient):
    """Keeps every response: TwilioRestException does not carry the headers (Retry-After)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.responses: list[Response] = []

    def request(self, *args: Any, **kwargs: Any) -> Response:
        response = super().request(*args, **kwargs)
        self.responses.append(response)
        return response


class RebasingHttpClient(TwilioHttpClient):
    """The other way to reach a fake: rewrite Twilio's host in every URL."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        url = url.replace("https://api.twilio.com", self.base_url)
        return super().request(method, url, *args, **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def make_client(fake: FakeTwilio, timeout: float = 2.0, token: str = AUTH_TOKEN) -> Client:
    client = Client(ACCOUNT_SID, token, http_client=RecordingHttpClient(timeout=timeout))
    client.api.base_url = fake.base_url  # twilio 9.x has no base-URL argument
    return client


@pytest.fixture
def client(fake: FakeTwilio) -> Client:
    return make_client(fake)


def send(client: Client, to: str = ALICE, body: str = "Your payment is due", **kw: Any) -> Any:
    return client.messages.create(to=to, from_=SENDER, body=body, **kw)


def test_official_client_creates_a_message_and_gets_a_sid(fake: FakeTwilio, client: Client):
    message = send(client, body="Payment of €120 due", status_callback="https://x.test/s")
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.to, message.from_) == ("queued", ALICE, SENDER)
    assert (message.body, message.num_segments, message.account_sid) == (
        "Payment of €120 due", "1", ACCOUNT_SID)
    assert isinstance(message.date_created, dt.datetime)
    [accepted] = fake.messages
    assert (accepted.sid, accepted.to, accepted.status_callback) == (message.sid, ALICE,
                                                                     "https://x.test/s")
    assert client.messages(message.sid).fetch().body == "Payment of €120 due"


def test_a_rebasing_http_client_subclass_also_reaches_the_fake(fake: FakeTwilio):
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=RebasingHttpClient(fake.base_url))
    assert send(client).sid == fake.messages[0].sid


def test_a_messaging_service_sid_can_replace_from(fake: FakeTwilio, client: Client):
    message = client.messages.create(to=ALICE, messaging_service_sid="MG" + "1" * 32, body="x")
    assert message.messaging_service_sid == "MG" + "1" * 32


def test_a_wrong_auth_token_gets_401(fake: FakeTwilio):
    with pytest.raises(TwilioRestException) as caught:
        send(make_client(fake, token="wrong"))
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert fake.messages == []


def test_an_opted_out_recipient_raises_21610_and_others_still_get_through(
    fake: FakeTwilio, client: Client
):
    fake.fail_recipient(BOB, Fault.opted_out())
    for _ in range(2):
        with pytest.raises(TwilioRestException) as caught:
            send(client, to=BOB)
        assert (caught.value.status, caught.value.code) == (400, 21610)
        assert "unsubscribed" in caught.value.msg
    send(client, to=ALICE)
    assert [m.to for m in fake.messages] == [ALICE]


def test_an_invalid_number_raises_21211(fake: FakeTwilio, client: Client):
    fake.fail_next(Fault.invalid_number())
    with pytest.raises(TwilioRestException) as caught:
        send(client)
    assert caught.value.code == 21211


def test_429_shows_the_retry_after_header(fake: FakeTwilio, client: Client):
    fake.fail_next(Fault.rate_limited(retry_after=3))
    with pytest.raises(TwilioRestException) as caught:
        send(client)
    assert (caught.value.status, caught.value.code) == (429, 20429)
    assert client.http_client.responses[-1].headers["Retry-After"] == "3"


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_for_the_next_n_requests_then_success(
    fake: FakeTwilio, client: Client, status: int
):
    fake.fail_next(Fault.server_error(status), times=2)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as caught:
            send(client)
        assert caught.value.status == status
    assert send(client).status == "queued"
    assert len(fake.messages) == 1 and fake.create_requests == 3


def test_a_dropped_connection_raises_a_connection_error(fake: FakeTwilio, client: Client):
    fake.fail_next(Fault.dropped())
    with pytest.raises(requests.exceptions.ConnectionError):
        send(client)
    assert fake.messages == []


def test_a_drop_after_accepting_then_a_retry_sends_twice(fake: FakeTwilio, client: Client):
    fake.fail_recipient(ALICE, Fault.dropped(accept=True), times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        send(client, body="Reminder B")
    send(client, body="Reminder B")
    assert fake.duplicate_pairs() == [(ALICE, "Reminder B")]


def test_after_a_timeout_list_by_to_finds_the_message_the_provider_took(fake: FakeTwilio):
    client = make_client(fake, timeout=0.3)
    fake.fail_next(Fault.slow(2.0))
    with pytest.raises(requests.exceptions.Timeout):
        send(client, body="Reminder A")
    found = client.messages.list(to=ALICE, date_sent=dt.datetime.now(dt.UTC), limit=20)
    assert [m.body for m in found] == ["Reminder A"]


def test_a_slow_failure_that_accepts_nothing_answers_503(fake: FakeTwilio, client: Client):
    fake.fail_next(Fault.slow(0.2, accept=False))
    with pytest.raises(TwilioRestException) as caught:
        send(client)
    assert caught.value.status == 503 and fake.messages == []


def test_list_by_to_pages_newest_first(fake: FakeTwilio, client: Client):
    sids = [send(client, body=f"n{i}").sid for i in range(5)]
    send(client, to=BOB)
    assert [m.sid for m in client.messages.list(to=ALICE, page_size=2)] == sids[::-1]
    page = client.messages.page(to=ALICE, page_size=2)
    assert page.next_page_url and "Page=1" in page.next_page_url
    assert len(client.messages.list(from_=SENDER)) == 6


def test_date_sent_filters_by_day(fake: FakeTwilio, client: Client):
    send(client)
    today, yesterday = dt.date.today(), dt.date.today() - dt.timedelta(days=1)
    assert len(client.messages.list(date_sent_after=yesterday)) == 1
    assert client.messages.list(date_sent_before=yesterday) == []
    assert client.messages.list(date_sent=dt.datetime(2020, 1, 1)) == []
    assert len(client.messages.list(date_sent_before=today + dt.timedelta(days=1))) == 1


def test_random_faults_are_mixed_and_repeat_for_the_same_seed():
    def outcomes(seed: int) -> list[str]:
        with FakeTwilio() as fake:
            fake.fail_randomly(0.6, seed=seed, slow_seconds=0.3)
            client, seen = make_client(fake, timeout=0.1), []
            for i in range(20):
                try:
                    seen.append(send(client, body=str(i)).status)
                except TwilioRestException as exc:
                    seen.append(str(exc.status))
                except requests.exceptions.Timeout:
                    seen.append("timeout")
            return seen

    first = outcomes(seed=7)
    assert first == outcomes(seed=7)
    assert {"queued", "429", "500", "timeout"} <= set(first)


def test_a_late_accept_is_not_listed_until_after_the_clients_timeout(fake: FakeTwilio):
    fake.fail_next(Fault.late(0.6))
    with pytest.raises(requests.exceptions.Timeout):
        send(make_client(fake, timeout=0.2), body="late")
    assert fake.messages == []  # a lookup right after the timeout finds nothing...
    [record] = fake.wait_for(1, timeout=3)  # ...yet the provider takes it
    assert record.body == "late" and fake.stats()["faults"] == {"timeout_late": 1}


def test_a_fault_phase_fails_a_mix_then_recovers(fake: FakeTwilio):
    control = f"{fake.base_url}/_fake/faults"
    requests.post(control, json={"p": 1.0, "seconds": 0.8, "seed": 3, "slow_seconds": 0.3},
                  timeout=5).raise_for_status()  # fmt: skip
    client, seen = make_client(fake, timeout=0.1), []
    started = time.monotonic()
    while time.monotonic() - started < 0.8:
        try:
            seen.append(send(client, body=str(len(seen))).status)
        except TwilioRestException as exc:
            seen.append(str(exc.status))
        except requests.exceptions.Timeout:
            seen.append("timeout")
    assert "queued" not in seen and {"429", "500"} <= set(seen)
    assert send(client, body="after").status == "queued"  # recovered
    stats = requests.get(f"{fake.base_url}/_fake/stats", timeout=5).json()
    assert sum(stats["faults"].values()) == len(seen) and stats["phase"]["ended"]
    assert set(stats["faults"]) <= {"429", "500", "timeout_taken", "timeout_late",
                                    "timeout_lost"}  # fmt: skip


def test_duplicate_helpers_spot_a_repeated_send(fake: FakeTwilio, client: Client):
    send(client, body="once", status_callback="https://x.test/s?id=1")
    send(client, body="twice", status_callback="https://x.test/s?id=2")
    assert fake.duplicate_pairs() == [] and fake.duplicate_callbacks() == []
    send(client, body="twice", status_callback="https://x.test/s?id=2")
    assert fake.duplicate_pairs() == [(ALICE, "twice")]
    assert fake.duplicate_callbacks() == ["https://x.test/s?id=2"]


def test_calls_are_created_with_twiml_and_machine_detection(fake: FakeTwilio, client: Client):
    call = client.calls.create(to=ALICE, from_=SENDER, twiml="<Response><Say>Hi</Say></Response>",
                               machine_detection="Enable", status_callback="https://x.test/v")
    assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid) and call.status == "queued"
    assert fake.accepted[0].kind == "call" and fake.messages == []
    with pytest.raises(TwilioRestException) as caught:
        client.calls.create(to=ALICE, from_=SENDER)
    assert caught.value.code == 21205


def test_latency_is_added_to_every_answer(fake: FakeTwilio, client: Client):
    fake.set_latency(0.2)
    started = time.monotonic()
    send(client)
    assert time.monotonic() - started >= 0.2


def test_concurrent_senders_each_get_a_distinct_sid(fake: FakeTwilio):
    def worker(n: int) -> None:
        client = make_client(fake)
        for i in range(5):
            send(client, body=f"{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({m.sid for m in fake.messages}) == 40 and fake.duplicate_pairs() == []


def test_status_callback_is_posted_signed_to_the_base_when_asked(client: Client):
    received: list[tuple[str, dict[str, str], str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            received.append((self.path, form, self.headers["X-Twilio-Signature"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{receiver.server_address[1]}"
    public_url = "https://bot.lender.example/webhooks/twilio/status?m=9"
    try:
        with FakeTwilio(status_callback_base=base) as fake:
            client.api.base_url = fake.base_url
            sid = send(client, status_callback=public_url).sid
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        receiver.shutdown()
        receiver.server_close()
    [(path, form, signature)] = received
    assert path == "/webhooks/twilio/status?m=9"
    assert (form["MessageSid"], form["MessageStatus"], form["To"]) == (sid, "delivered", ALICE)
    assert RequestValidator(AUTH_TOKEN).validate(public_url, form, signature)


def test_runs_as_a_separate_process_and_logs_json_lines(tmp_path: Path):
    log = tmp_path / "accepted.jsonl"
    command = [sys.executable, "-m", "tests.fakes.fake_twilio", "--port", "0",
               "--latency-ms", "5", "--log", str(log)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        base_url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        client = Client(ACCOUNT_SID, AUTH_TOKEN)
        client.api.base_url = base_url
        sid = send(client, body="from another process").sid
        rows = read_log(log)
        assert [(r["sid"], r["to"], r["body"]) for r in rows] == [
            (sid, ALICE, "from another process")]
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
        process.stdout.close()
