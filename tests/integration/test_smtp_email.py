"""The SMTP adapter against a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd not installed")

from integrations.smtp_email import SmtpEmailSender  # noqa: E402
from reminder.config import ChannelConfig, Config  # noqa: E402
from reminder.errors import ConfigError, PermanentSendError, TransientSendError  # noqa: E402
from reminder.ports import OutgoingMessage  # noqa: E402
from tests.fakes.prism import free_port  # noqa: E402


class Mailbox:
    """An aiosmtpd handler: keeps what it accepts, refuses what it is told to."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.envelopes: list[Any] = []
        self.refuse: dict[str, str] = {}  # recipient -> SMTP reply

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.envelopes.append(envelope)
        self.received.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted"


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    box = Mailbox()
    port = free_port()
    controller = aiosmtpd_controller.Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(port))
    monkeypatch.setenv("SMTP_STARTTLS", "false")
    yield box
    controller.stop()


def smtp_config(config: Config) -> Config:
    sender = "collections@lender.example"
    channel = ChannelConfig.model_validate({"provider": "smtp", "from": sender})
    return config.model_copy(update={"channels": {**config.channels, "email": channel}})


def message(to: str = "ana@example.com") -> OutgoingMessage:
    return OutgoingMessage(
        message_ids=(3,), channel="email", to=to, locale="es", subject="Recordatorio de pago",
        body="Hola Ana,\nTu pago vence pronto.", html="<p>Hola Ana</p>",
        reference="20261204-email-3",
        headers={"List-Unsubscribe": "<https://lender.example/unsubscribe>"},
    )  # fmt: skip


def test_a_message_arrives_with_text_html_unsubscribe_header_and_our_reference(config, mailbox):
    result = SmtpEmailSender(smtp_config(config)).send(message())
    [received] = mailbox.received
    assert received["Subject"] == "Recordatorio de pago"
    assert received["List-Unsubscribe"] == "<https://lender.example/unsubscribe>"
    assert received["Message-ID"] == "<20261204-email-3@reminder>"
    assert result.provider_id == "20261204-email-3@reminder"
    kinds = [part.get_content_type() for part in received.walk()]
    assert "text/plain" in kinds and "text/html" in kinds
    assert mailbox.envelopes[0].mail_from == "collections@lender.example"


def test_a_refused_recipient_is_permanent_and_a_busy_one_transient(config, mailbox):
    mailbox.refuse = {"gone@example.com": "550 No such user", "busy@example.com": "451 Later"}
    sender = SmtpEmailSender(smtp_config(config))
    with pytest.raises(PermanentSendError) as caught:
        sender.send(message("gone@example.com"))
    assert caught.value.code == "550"
    with pytest.raises(TransientSendError):
        sender.send(message("busy@example.com"))


def test_no_server_is_transient(config, monkeypatch):
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(free_port()))
    monkeypatch.setenv("SMTP_STARTTLS", "false")
    with pytest.raises(TransientSendError):
        SmtpEmailSender(smtp_config(config)).send(message())


def test_a_missing_host_is_a_start_up_error_naming_it(config, monkeypatch):
    monkeypatch.delenv("SMTP_HOST", raising=False)
    with pytest.raises(ConfigError) as caught:
        SmtpEmailSender(smtp_config(config))
    assert caught.value.field == "SMTP_HOST"
