"""An Inbound Parse post as an `InboundReply`: who wrote, what they wrote this time.

A reply email quotes our reminder, and our reminder says "pay" and "unsubscribe": reading
the quote would turn every answer into a promise or an opt-out. So only the new text counts:
lines up to the first quote marker ("On ... wrote:", "El ... escribió:", "在...写道",
"-----Original Message-----", a `>` line). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.parser import HeaderParser

from reminder.services.replies import InboundReply

_QUOTE_START = re.compile(
    r"^\s*(?:on\b.*\bwrote:?|el\b.*\bescribi[oó]:?|.*在.*写道[:：]?"
    r"|-{2,}\s*original message\s*-{2,}|-{2,}\s*mensaje original\s*-{2,}"
    r"|from:\s.*|de:\s.*|发件人[:：].*)\s*$",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^>]+>")
MAX_TEXT = 4000


def latest_text(text: str) -> str:
    """The part of an email body the sender just wrote (quoted history removed)."""
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.lstrip().startswith(">") or _QUOTE_START.match(line):
            break
        kept.append(line)
    return "\n".join(kept).strip()


def html_text(markup: str) -> str:
    """Crude but safe: tags dropped, entities decoded (only used when there is no text part)."""
    spaced = re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\n", markup)
    text = html.unescape(_TAG.sub(" ", spaced))
    return "\n".join(" ".join(line.split()) for line in text.splitlines()).strip()


def _raw_mime(raw: str) -> tuple[Mapping[str, str], str, str]:
    """Headers, plain text and subject of a raw MIME message ("post raw" mode)."""
    message = message_from_bytes(raw.encode("utf-8", "surrogateescape"), policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = ""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
        if part is not None:
            content = part.get_content()
            body = content if part.get_content_subtype() == "plain" else html_text(content)
    except Exception:  # the email package raises a zoo (LookupError, KeyError, ...) on junk
        body = ""
    headers = {key.lower(): str(value) for key, value in message.items()}
    return headers, body, headers.get("subject", "")


def inbound_reply(fields: Mapping[str, str]) -> InboundReply | None:
    """The reply in an Inbound Parse post (parsed or raw mode); None without a sender."""
    fields = {name: value.replace("\x00", "") for name, value in fields.items()}
    if fields.get("email"):
        headers, body, subject = _raw_mime(fields["email"])
        sender = headers.get("from", "")
    else:
        parsed = HeaderParser().parsestr(fields.get("headers", ""))
        headers = {key.lower(): str(value) for key, value in parsed.items()}
        sender = fields.get("from", "") or headers.get("from", "")
        subject = fields.get("subject", "") or headers.get("subject", "")
        body = fields.get("text") or html_text(fields.get("html", ""))
    if not sender:
        return None
    text = latest_text(body)[:MAX_TEXT] or subject.strip()
    return InboundReply(
        channel="email",
        sender=sender,
        body=text,
        provider_ref=_reference(headers.get("message-id", ""), sender, subject, body),
        subject=subject,
        auto_submitted=_automatic(headers),
    )


def _automatic(headers: Mapping[str, str]) -> bool:
    """Out-of-office and other robots (RFC 3834): never answered, to avoid mail loops."""
    auto = headers.get("auto-submitted", "no").strip().lower()
    precedence = headers.get("precedence", "").strip().lower()
    return auto != "no" or precedence in ("bulk", "junk", "list", "auto_reply")


def _reference(message_id: str, sender: str, subject: str, body: str) -> str:
    """The provider reference: the Message-ID, or a digest of the content when it has none.

    SendGrid re-posts the same email on retry, so either is stable across retries.
    """
    message_id = message_id.strip()
    if message_id and len(message_id) <= 100:
        return f"email:{message_id}"
    source = message_id or "\x00".join((sender, subject, body))
    return "email:sha256:" + hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()
