"""Who sent a reply: a phone number (E.164) or an email address, matched to borrowers.

Providers hand us senders in their own shapes ("+1 212-555-0100", "Ana <ANA@Example.com>");
borrowers are stored in E.164 and as imported. Several borrowers may share one address
(a household phone): every one of them is returned, the most recently contacted first,
because an opt-out must cover the number while other intents concern the person we wrote to.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

import phonenumbers
from sqlalchemy import Connection, func, select

from reminder.db.tables import borrowers, messages


def mask(address: str) -> str:
    """A phone number or email address as logs may show it ("+12***00", "a***@example.com")."""
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}***@{domain[-60:]}"
    return f"{address[:3]}***{address[-2:]}" if len(address) > 5 else "***"


def e164(raw: str | None, region: str | None = None) -> str | None:
    """`raw` as E.164, or None when it is no valid phone number."""
    if not raw:
        return None
    try:
        parsed = phonenumbers.parse(raw.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def email_address(raw: str | None) -> str | None:
    """The bare, lower-cased address of a From header, or None."""
    if not raw:
        return None
    _, address = parseaddr(raw)
    address = address.strip().lower()
    if "@" not in address or len(address) > 254:
        return None
    return address


def normalized_sender(channel: str, raw: str | None) -> str | None:
    """The sender as we store addresses: E.164 for sms/voice, lower-case email for email."""
    return email_address(raw) if channel == "email" else e164(raw)


def find_borrowers(conn: Connection, channel: str, sender: str) -> list[dict[str, Any]]:
    """Borrowers with this address, most recently messaged (on any channel) first."""
    if channel == "email":
        match = func.lower(borrowers.c.email) == sender.lower()
    else:
        match = borrowers.c.phone == sender
    last_contact = (
        select(func.max(messages.c.id))
        .where(messages.c.borrower_id == borrowers.c.borrower_id)
        .scalar_subquery()
    )
    query = (
        select(
            borrowers.c.borrower_id,
            borrowers.c.phone,
            borrowers.c.email,
            borrowers.c.locale,
            borrowers.c.timezone,
            last_contact.label("last_contact"),
        )
        .where(match)
        .order_by(borrowers.c.borrower_id)
    )
    rows = [dict(row) for row in conn.execute(query).mappings()]
    rows.sort(key=lambda row: -(row["last_contact"] or 0))
    return rows
