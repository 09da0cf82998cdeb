"""The SendGrid adapter with the official client: against a Prism mock of SendGrid's own
spec (request shape, batches) and a tiny local server for what Prism cannot answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from integrations.sendgrid_email import SendGridEmailSender, request_body
from reminder.config import ChannelConfig, Config
from reminder.errors import ConfigError, PermanentSendError, TransientSendError
from reminder.ports import OutgoingMessage


def email_config(config: Config, base_url: str) -> Config:
    channel = ChannelConfig.model_validate({"provider": "sendgrid", "base_url": base_url,
                                            "from": "collections@lender.example",
                                            "timeout_seconds": 2})  # fmt: skip
    return config.model_copy(update={"channels": {**config.channels, "email": channel}})


def email(n: int = 1, subject: str = "Example Lending Co.: payment reminder") -> OutgoingMessage:
    return OutgoingMessage(
        message_ids=(n,), channel="email", to=f"borrower{n}@example.com", locale="en",
        body=f"Dear borrower {n},\nYour payment is due.", html=f"<p>Dear borrower {n}</p>",
        subject=subject, reference=f"20261204-email-{n}",
        headers={"List-Unsubscribe": "<https://lender.example/unsubscribe>"},
    )  # fmt: skip


class FakeSendGrid(BaseHTTPRequestHandler):
    """Answers /v3/mail/send with the next programmed (status, headers, body), else 202."""

    answers: list[tuple[int, dict[str, str], str]] = []
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.bodies.append(json.loads(self.rfile.read(length)))
        status, headers, body = self.answers.pop(0) if self.answers else (202, {}, "")
        self.send_response(status)
        headers = {"X-Message-Id": "sgid123", **headers} if status == 202 else headers
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local() -> Iterator[type[FakeSendGrid]]:
    handler = type("Handler", (FakeSendGrid,), {"answers": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    handler.base_url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test-key")


def test_a_send_carries_our_reference_in_custom_args_and_no_pii(config, local, key):
    sender = SendGridEmailSender(email_config(config, local.base_url))
    result = sender.send(email())
    assert (result.provider, result.provider_id) == ("sendgrid", "sgid123:20261204-email-1")
    [body] = local.bodies
    [person] = body["personalizations"]
    assert person["custom_args"] == {"ref": "20261204-email-1"}
    assert person["headers"]["List-Unsubscribe"] == "<https://lender.example/unsubscribe>"
    assert person["substitutions"]["%reminder_text%"].startswith("Dear borrower 1")
    assert body["from"] == {"email": "collections@lender.example", "name": config.lender.name}


def test_a_batch_of_1500_goes_in_two_requests(config, local, key):
    sender = SendGridEmailSender(email_config(config, local.base_url))
    outcomes = sender.send_batch([email(n) for n in range(1500)])
    assert [len(b["personalizations"]) for b in local.bodies] == [1000, 500]
    assert outcomes[1499].provider_id.endswith("20261204-email-1499")


def test_429_is_transient_with_retry_after(config, local, key):
    local.answers.append((429, {"Retry-After": "7"}, '{"errors":[{"message":"too many"}]}'))
    with pytest.raises(TransientSendError) as caught:
        SendGridEmailSender(email_config(config, local.base_url)).send(email())
    assert (caught.value.code, caught.value.retry_after) == ("429", 7.0)


def test_a_server_error_is_transient_and_fails_only_its_own_batch(config, local, key):
    local.answers.append((500, {}, '{"errors":[{"message":"oops"}]}'))
    outcomes = SendGridEmailSender(email_config(config, local.base_url)).send_batch(
        [email(n) for n in range(1001)])
    assert isinstance(outcomes[0], TransientSendError) and outcomes[1000].provider == "sendgrid"


def test_a_rejected_unsubscribed_address_is_an_opt_out(config, local, key):
    answer = '{"errors":[{"message":"The recipient is on the unsubscribe list"}]}'
    local.answers.append((400, {}, answer))
    with pytest.raises(PermanentSendError) as caught:
        SendGridEmailSender(email_config(config, local.base_url)).send(email())
    assert caught.value.opted_out is True


def test_an_unreachable_host_is_transient(config, key):
    from tests.fakes.prism import free_port

    sender = SendGridEmailSender(email_config(config, f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TransientSendError):
        sender.send(email())


def test_a_missing_api_key_is_a_start_up_error_naming_it(config, monkeypatch):
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    with pytest.raises(ConfigError) as caught:
        SendGridEmailSender(email_config(config, "http://127.0.0.1:9"))
    assert caught.value.field == "SENDGRID_API_KEY"


def test_the_request_body_never_exceeds_1000_personalizations():
    with pytest.raises(ValueError):
        request_body([email(n) for n in range(1001)], {"email": "x@example.com"})


@pytest.fixture(scope="module")
def prism_sendgrid() -> Iterator[str]:
    from tests.fakes.prism import SENDGRID_SPEC, prism_mock

    with prism_mock(SENDGRID_SPEC) as base_url:
        yield base_url


def test_single_and_batched_requests_match_sendgrids_own_spec(config, prism_sendgrid, key):
    sender = SendGridEmailSender(email_config(config, prism_sendgrid))
    assert sender.send(email()).provider == "sendgrid"
    outcomes = sender.send_batch([email(n) for n in range(1000)])
    assert all(o.provider == "sendgrid" for o in outcomes)  # type: ignore[union-attr]
