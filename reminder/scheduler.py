"""`reminder serve`: the daily run on a schedule, the dispatcher, and the webhook server.

APScheduler 3.11 runs the daily run at `[run] time` in the lender's timezone with
`coalesce=True`, `max_instances=1` and a misfire grace of 12 hours. A process started
after the run time on a day the run ledger shows no finished run for adds a catch-up
run at once, so a machine that was down at 07:00 still runs that day, once.
The dispatcher runs every 30 seconds for messages whose `not_before` arrives later in
the day. Without it (`serve --no-dispatch`: `reminder worker` processes send) the daily
run only plans, so the scheduler's process sends nothing at all. Ctrl-C (SIGINT) or
SIGTERM stops everything cleanly: running jobs finish their current batch first.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from reminder.bootstrap import App
from reminder.errors import RunInProgress
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.dispatch import dispatch_due

log = logging.getLogger(__name__)
MISFIRE_GRACE_SECONDS = 12 * 3600
DISPATCH_EVERY_SECONDS = 30


def build_scheduler(app: App, *, dispatch: bool = True) -> BackgroundScheduler:
    """The scheduler with its jobs added (not started): tests inspect it as is."""
    run = app.config.run
    scheduler = BackgroundScheduler(timezone=run.tz)
    once = {"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS}
    trigger = CronTrigger(hour=run.run_time.hour, minute=run.run_time.minute, timezone=run.tz)
    scheduler.add_job(_daily, trigger, args=[app, dispatch], id="daily_run", name="daily run",
                      **once)  # fmt: skip
    if dispatch:
        scheduler.add_job(_dispatch, "interval", seconds=DISPATCH_EVERY_SECONDS, args=[app],
                          id="dispatch", name="dispatcher", coalesce=True, max_instances=1,
                          misfire_grace_time=DISPATCH_EVERY_SECONDS)
    if _missed_today(app):
        scheduler.add_job(_daily, args=[app, dispatch], id="catch_up", name="catch-up daily run",
                          next_run_time=app.clock.now())
    return scheduler


def _missed_today(app: App) -> bool:
    """Started after today's run time and the ledger has no finished run for today."""
    from reminder.services.daily_run import day_was_run

    now = app.clock.now().astimezone(app.config.run.tz)
    if now.time() < app.config.run.run_time:
        return False
    with app.engine.connect() as conn:
        return not day_was_run(conn, now.date())


def _daily(app: App, dispatch: bool = True) -> None:
    try:
        summary = run_day(app, RunOptions(skip_if_done=True, dispatch=dispatch))
        log.info("daily run %s: planned %s sent %s", summary["date"], summary["planned"],
                 summary["sent"])
    except RunInProgress:
        log.info("today's run is being done by another process; skipped here")
    except Exception:  # the scheduler must survive one bad day; the run ledger shows it
        log.exception("daily run failed")


def _dispatch(app: App) -> None:
    try:
        dispatch_due(app)
    except Exception:
        log.exception("dispatcher pass failed")


def serve(app: App, *, dispatch: bool = True, web: bool = True) -> None:
    """Run until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    server: Any = _web_server(app) if web else None

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()
        if server is not None:
            server.should_exit = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    scheduler = build_scheduler(app, dispatch=dispatch)
    scheduler.start()
    log.info("scheduler started: daily run at %s %s", app.config.run.time, app.config.run.timezone)
    try:
        if server is not None:
            server.run()  # returns once should_exit is set
        else:
            stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        log.info("stopped")


def _web_server(app: App) -> Any:
    try:
        import uvicorn

        from reminder.web import create_app  # type: ignore[attr-defined]
    except ImportError:
        log.warning("webhook server not available in this build; running without it")
        return None
    config = uvicorn.Config(create_app(app), host=app.config.server.host,
                            port=app.config.server.port, log_level="info")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return server
