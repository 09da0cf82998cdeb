"""`reminder worker`: a dispatcher process; run as many as the sending load needs.

Why a separate command: `serve` runs the daily run (and the webhooks) once per lender,
while sending scales out. Workers need nothing but the database: claims are taken per
consolidated group under a lock no other worker can share (see `claiming`), and each
channel's `rate_per_second` is one budget in the database (`shared_rate`), so four
workers together send no faster than one is allowed to. Pair them with
`reminder serve --no-dispatch` for the scheduler.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import asdict
from typing import Any

import typer

from reminder.bootstrap import App
from reminder.cli.common import command, emit_json, out_console, state
from reminder.db.migrate import upgrade_to_head
from reminder.rendering import check_templates
from reminder.services.dispatch import DispatchReport, dispatch_due
from reminder.services.recording import one_line

log = logging.getLogger(__name__)
DEFAULT_INTERVAL = 5.0
MAX_BACKOFF = 60.0  # seconds between passes at most while passes keep failing


def work(app: App, *, once: bool = False, interval: float = DEFAULT_INTERVAL,
         stop: threading.Event | None = None) -> DispatchReport:  # fmt: skip
    """Dispatch passes every `interval` seconds until `stop` is set (or one, with `once`).

    A pass that fails (the database went away for a moment, say) is logged in one line
    (no SQL, no parameters: they may hold a phone number) and the next one tried after a
    backoff that doubles while passes keep failing: a worker must outlive a bad pass, and
    the crash reconciliation at the start of every pass settles whatever the failed one
    left in `sending`. The stop is checked between passes, so a pass in flight always
    finishes and records what it sent.

    Returns:
        The counts of every pass added up.
    """
    stop = stop or threading.Event()
    total = DispatchReport()
    failures = 0
    while True:
        pause = interval
        try:
            total.add(dispatch_due(app))
            failures = 0
        except Exception as exc:  # the loop outlives a pass; `--once` reports it
            if once:
                raise
            failures += 1
            pause = min(MAX_BACKOFF, interval * 2 ** (failures - 1))
            log.error("dispatch pass failed (%s); next in %.1f s", one_line(exc), pause)
            total.errors.append(f"pass failed: {one_line(exc)}")
        if once or stop.wait(pause):
            return total


def worker(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="One dispatch pass, then exit."),
    interval: float = typer.Option(
        DEFAULT_INTERVAL, "--interval", min=0.1, help="Seconds between passes."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Send due messages: a pass every INTERVAL seconds until Ctrl-C / SIGTERM (exit 0)."""
    app = state(ctx).app()
    upgrade_to_head(app.engine)
    check_templates(app.config)
    app.check_channels()
    stop = threading.Event()
    if not once:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _stopper(stop))
        log.info("worker started: a pass every %s s", interval)
    report = work(app, once=once, interval=interval, stop=stop)
    summary: dict[str, Any] = asdict(report)
    if as_json:
        emit_json(summary)
    else:
        out_console.print(
            f"sent {report.sent}  failed {report.failed}  cancelled {report.cancelled}  "
            f"deferred {report.deferred}  unknown {report.unknown}", highlight=False,
        )  # fmt: skip
        for error in report.errors:
            out_console.print(f"  {error}", highlight=False)


def _stopper(stop: threading.Event) -> Any:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after the current pass", signum)
        stop.set()

    return handler


def register(app: typer.Typer) -> None:
    app.command("worker")(command(worker))
