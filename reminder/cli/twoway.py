"""`reminder inbox` (SPEC section 7): replies that need a person, and resolving them.

    reminder inbox [--json]
    reminder inbox resolve ID --note TEXT [--lift-dispute] [--lift-cease] [--json]

The webhook server itself is `reminder.web.serve(app)`, started by `reminder serve`.
"""

from __future__ import annotations

from dataclasses import asdict

import typer

from reminder.cli.common import command, emit_json, out_console, state
from reminder.services.inbox import pending, resolve

inbox_app = typer.Typer(
    help="Replies that need a person: unknown, dispute, callback, paid claims.",
    no_args_is_help=False,
)


@inbox_app.callback(invoke_without_command=True)
@command
def inbox(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout."),
) -> None:
    """List the replies waiting for a person, oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    app = state(ctx).app()
    with app.engine.connect() as conn:
        items = pending(conn)
    if as_json:
        emit_json(items)
        return
    if not items:
        out_console.print("inbox is empty")
        return
    for item in items:
        when = item["received_at"].isoformat(timespec="minutes")
        who = item["borrower_id"] or f"unknown sender {item['sender']}"
        date = f" {item['promise_date']}" if item["promise_date"] else ""
        out_console.print(
            f"#{item['id']} {when} {item['channel']} {who} [{item['intent']}{date}] "
            f"{(item['body'] or '').strip()[:120]}",
            highlight=False,
            markup=False,
        )


@inbox_app.command("resolve")
@command
def resolve_command(
    ctx: typer.Context,
    reply_id: int = typer.Argument(..., metavar="ID", help="The reply's id (from `inbox`)."),
    note: str = typer.Option(..., "--note", help="What was decided; kept with the reply."),
    lift_dispute: bool = typer.Option(False, "--lift-dispute", help="End the dispute hold."),
    lift_cease: bool = typer.Option(False, "--lift-cease", help="End a cease-contact hold."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Close one inbox item; disputes and cease requests can be lifted only here."""
    app = state(ctx).app()
    result = resolve(app, reply_id, note, lift_dispute=lift_dispute, lift_cease=lift_cease)
    if as_json:
        emit_json(asdict(result))
        return
    done = "was already resolved" if result.already_resolved else "resolved"
    lifted = f"; disputes lifted: {result.disputes_lifted}" if lift_dispute else ""
    lifted += f"; cease lifted: {result.cease_lifted}" if lift_cease else ""
    out_console.print(f"reply {reply_id} {done}{lifted}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `inbox` sub-app to `app`."""
    app.add_typer(inbox_app, name="inbox")
