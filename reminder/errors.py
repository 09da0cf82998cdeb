"""The exception tree of `reminder`.

    ReminderError
    ├── ConfigError            config.toml is invalid (names the field)            -> exit 2
    ├── InputError             a user-supplied file or argument is unusable         -> exit 2
    ├── SendError              a provider refused or failed a send
    │   ├── TransientSendError     timeouts, 429, 5xx: retried with backoff
    │   │   └── UnconfirmedSendError   may have reached the provider: looked up, not resent
    │   └── PermanentSendError     invalid number, unsubscribed: never retried
    ├── TransportError         an agency transport failed (folder, SFTP, HTTPS)
    └── RunInProgress          another live process holds the lease on a day's run   -> exit 1

Errors raised by libraries (SQLAlchemy, twilio, sendgrid, paramiko) are translated into
these at the boundary that calls them (`raise X(...) from exc`).
"""

from __future__ import annotations


class ReminderError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ReminderError):
    """The configuration is invalid; `field` names the offending key."""

    def __init__(self, field: str, problem: str, source: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")


class InputError(ReminderError):
    """A file or argument given by the user cannot be used at all."""


class SendError(ReminderError):
    """A send through a provider did not succeed."""

    def __init__(self, message: str, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)


class TransientSendError(SendError):
    """Worth retrying later (timeouts, 429, 5xx)."""

    def __init__(
        self, message: str, code: str | None = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, code)


class UnconfirmedSendError(TransientSendError):
    """The request may have reached the provider (a timeout, a dropped connection after it
    left) and a lookup has not found it yet: the provider may still be taking it.

    Never retried at once: the dispatcher hands the message to reconciliation, which looks
    it up again once the provider's listing has caught up (the channel's lookup window) and
    sends it again only if the provider still does not have it.
    """


class PermanentSendError(SendError):
    """Never worth retrying (invalid number, unsubscribed recipient)."""

    def __init__(self, message: str, code: str | None = None, opted_out: bool = False) -> None:
        self.opted_out = opted_out
        super().__init__(message, code)


class TransportError(ReminderError):
    """An agency transport could not deliver a file."""


class RunInProgress(ReminderError):
    """Another live process holds the lease on this day's run."""

    def __init__(self, run_date: object, owner: str | None) -> None:
        self.run_date = run_date
        self.owner = owner
        super().__init__(f"the run of {run_date} is in progress in another process ({owner})")
