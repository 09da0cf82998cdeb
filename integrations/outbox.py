"""The local outbox: the default channel adapter, no credentials, nothing leaves the machine.

Each send is one readable text file, `<outbox>/<channel>/<reference>.txt`
(the dispatcher's references start with the run date, so a folder listing reads by day),
written under a temporary name and renamed, so a file is either whole or absent. The
reference is the dispatcher's idempotency key: sending the same reference again rewrites
the same file, never a second one.
"""

from __future__ import annotations

import os
from pathlib import Path

from reminder.ports import OutgoingMessage, SendResult


class OutboxSender:
    """Implements SmsSender, EmailSender and VoiceCaller by writing files."""

    provider = "outbox"
    rate_limited = False  # nothing leaves the machine: `rate_per_second` does not apply

    def __init__(self, root: Path, channel: str) -> None:
        self.root = root
        self.channel = channel

    def send(self, message: OutgoingMessage) -> SendResult:
        folder = self.root / self.channel
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{message.reference}.txt"
        temporary = folder / f".{message.reference}.tmp"
        lines = [f"To: {message.to}", f"Channel: {message.channel}", f"Locale: {message.locale}"]
        if message.subject:
            lines.append(f"Subject: {message.subject}")
        lines.extend(f"{name}: {value}" for name, value in message.headers.items())
        lines.extend(["", message.body, ""])
        temporary.write_text("\n".join(lines), encoding="utf-8")
        os.replace(temporary, final)
        return SendResult(provider=self.provider, provider_id=f"outbox:{final.name}")

    def lookup(self, message: OutgoingMessage, since: object = None) -> SendResult | None:
        """The file an earlier send of this reference wrote, if any (crash reconciliation)."""
        final = self.root / self.channel / f"{message.reference}.txt"
        if not final.exists():
            return None
        return SendResult(provider=self.provider, provider_id=f"outbox:{final.name}")
