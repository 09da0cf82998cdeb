"""The ports adapters implement: one small Protocol per kind of outside world, one verb each.

Adapters live in `integrations/`; only `reminder.bootstrap` imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    """One send: possibly several message rows (loans) consolidated for one borrower."""

    message_ids: tuple[int, ...]
    channel: str  # sms | email | voice
    to: str  # E.164 phone number or email address
    body: str  # SMS text, email plain text, or the words a call speaks
    locale: str
    reference: str  # our idempotency key for this send (stable across retries)
    subject: str | None = None
    html: str | None = None
    callback_url: str | None = None  # where the provider reports status for this send
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """What the provider said: its id for the message, and its first status."""

    provider: str
    provider_id: str
    status: str = "sent"


class SmsSender(Protocol):
    def send(self, message: OutgoingMessage) -> SendResult: ...


class EmailSender(Protocol):
    def send(self, message: OutgoingMessage) -> SendResult: ...


class VoiceCaller(Protocol):
    def send(self, message: OutgoingMessage) -> SendResult: ...


Sender = SmsSender | EmailSender | VoiceCaller


@dataclass(frozen=True)
class TransportResult:
    """Where an agency file ended up (path or URL) and the transport's own reference."""

    location: str
    reference: str | None = None


class AgencyTransport(Protocol):
    def deliver(self, file_name: str, content: bytes) -> TransportResult: ...


class Clock(Protocol):
    def now(self) -> datetime: ...
