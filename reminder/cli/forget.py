"""`reminder forget BORROWER_ID`: erase a borrower's personal data, keep the books and the trail.

Name, phone and email become NULL; the subjects and bodies of the messages sent to the
borrower are erased; the sender and body of the borrower's replies are masked; free-text
notes about the borrower lose any copy of the name, phone or email. Loans, installments,
payments, cases and the audit log stay as they are: audit rows hold ids only, so the chain
still verifies. Everything happens in one transaction together with a `forget` audit row.
A second `forget` of the same borrower changes nothing and records that it found nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from sqlalchemy import Connection, Table, func, select, update

from reminder.cli.common import command, emit_json, out_console, state
from reminder.db.tables import borrowers, cases, contact_flags, loans, messages, outcomes, replies
from reminder.errors import InputError
from reminder.services import audit

MASK = "***"
ERASED_BODY = "[erased]"


def _scrub(text: str | None, secrets: list[str]) -> str | None:
    """`text` with every copy of a secret replaced by the mask (None stays None)."""
    if text is None:
        return None
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _scrub_notes(conn: Connection, table: Table, key: str, where: Any, columns: tuple[str, ...],
                 secrets: list[str]) -> int:  # fmt: skip
    """Mask the secrets in free-text columns of the (few) rows about the borrower."""
    changed = 0
    query = select(table.c[key], *(table.c[name] for name in columns)).where(where)
    for row in conn.execute(query).all():
        values = {name: _scrub(row[i + 1], secrets) for i, name in enumerate(columns)}
        if any(values[name] != row[i + 1] for i, name in enumerate(columns)):
            conn.execute(update(table).where(table.c[key] == row[0]).values(**values))
            changed += 1
    return changed


def forget_borrower(conn: Connection, borrower_id: str, at: datetime) -> dict[str, int]:
    """Erase the borrower's personal data in `conn`'s transaction; returns what changed."""
    person = conn.execute(
        select(borrowers.c.name, borrowers.c.phone, borrowers.c.email).where(
            borrowers.c.borrower_id == borrower_id
        )
    ).first()
    if person is None:
        raise InputError(f"no borrower {borrower_id!r}")
    present = [value for value in person if value]
    # longest first (a name inside an email); a 1-2 letter name would mangle every note
    secrets = sorted({value for value in present if len(value) >= 3}, key=len, reverse=True)
    counts = {"borrower": 1 if present else 0}
    if present:
        conn.execute(
            update(borrowers)
            .where(borrowers.c.borrower_id == borrower_id)
            .values(name=None, phone=None, email=None, updated_at=at)
        )
    counts["messages"] = conn.execute(
        update(messages)
        .where(
            messages.c.borrower_id == borrower_id,
            (messages.c.body.is_not(None)) | (messages.c.subject.is_not(None)),
        )
        .values(body=None, subject=None)
    ).rowcount
    counts["replies"] = conn.execute(
        update(replies)
        .where(
            replies.c.borrower_id == borrower_id,
            (func.coalesce(replies.c.sender, "") != MASK)
            | (func.coalesce(replies.c.body, "") != ERASED_BODY),
        )
        .values(sender=MASK, body=ERASED_BODY)
    ).rowcount
    counts["notes"] = _scrub_notes(
        conn, messages, "id", messages.c.borrower_id == borrower_id, ("error",), secrets
    ) + _scrub_notes(
        conn, replies, "id", replies.c.borrower_id == borrower_id, ("resolution_note",), secrets
    ) + _scrub_notes(
        conn, contact_flags, "id", contact_flags.c.borrower_id == borrower_id,
        ("note", "lifted_note"), secrets,
    ) + _scrub_notes(
        conn, outcomes, "id",
        outcomes.c.case_id.in_(
            select(cases.c.case_id).join(loans, loans.c.loan_id == cases.c.loan_id)
            .where(loans.c.borrower_id == borrower_id)
        ),
        ("note",), secrets,
    )  # fmt: skip
    audit.append(conn, "forget", borrower_id=borrower_id, at=at,
                 detail={"erased": counts, "nothing_left": not any(counts.values())})  # fmt: skip
    return counts


def forget(
    ctx: typer.Context,
    borrower_id: str = typer.Argument(..., help="The borrower whose personal data to erase."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Erase a borrower's name, phone, email and message texts; keep ledger and audit trail."""
    app = state(ctx).app()
    with app.engine.begin() as conn:
        counts = forget_borrower(conn, borrower_id, app.clock.now())
    if as_json:
        emit_json({"borrower_id": borrower_id, "erased": counts})
        return
    if not any(counts.values()):
        out_console.print(f"borrower {borrower_id}: nothing left to erase")
        return
    out_console.print(
        f"borrower {borrower_id}: personal data erased (messages {counts['messages']}, "
        f"replies {counts['replies']}, notes {counts['notes']}); ledger and audit trail kept"
    )


def register(app: typer.Typer) -> None:
    app.command("forget")(command(forget))
