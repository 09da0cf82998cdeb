"""config.toml -> validated, typed configuration objects.

The file is parsed once at start-up; every problem becomes a `ConfigError` that names the
offending field (``stages[1].dpd``, ``policy.contact_window``) so a user can fix it.
Secrets never live here: providers read them from the environment (see `reminder.env`).
"""

from __future__ import annotations

import os
import tomllib
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reminder.errors import ConfigError
from reminder.resources import bundled_config_path

CHANNELS = ("sms", "email", "voice")
GRADES = ("A", "B", "C", "D", "E")
Channel = Literal["sms", "email", "voice"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_hhmm(value: str) -> time:
    try:
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{value!r} is not a time of day HH:MM") from exc


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA timezone {value!r}") from exc
    return value


class DatabaseConfig(_Model):
    url: str = "sqlite:///reminder.db"


class RunConfig(_Model):
    time: str = "07:00"
    timezone: str = "America/New_York"
    default_locale: str = "en"

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        _parse_hhmm(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @property
    def run_time(self) -> time:
        return _parse_hhmm(self.time)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class PolicyConfig(_Model):
    contact_window: tuple[str, str] = ("08:00", "21:00")
    skip_weekends: bool = False
    holidays: str = "US"
    promise_grace_days: int = Field(2, ge=0)
    paid_claim_days: int = Field(3, ge=0)
    max_promise_days: int = Field(30, ge=1)
    caps: dict[Channel, tuple[int, int]] = Field(
        default_factory=lambda: {"sms": (3, 7), "voice": (7, 7), "email": (5, 7)}
    )

    @field_validator("contact_window")
    @classmethod
    def _window(cls, value: tuple[str, str]) -> tuple[str, str]:
        start, end = (_parse_hhmm(v) for v in value)
        if start >= end:
            raise ValueError("the window must start before it ends, within one day")
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: str) -> str:
        if value:
            import holidays as holidays_lib

            if value.upper() not in holidays_lib.list_supported_countries():
                raise ValueError(f"no public-holiday calendar for country {value!r}")
        return value.upper()

    @field_validator("caps")
    @classmethod
    def _caps(cls, value: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for channel, (count, days) in value.items():
            if count < 0 or days < 1:
                raise ValueError(f"{channel}: expected [contacts >= 0, days >= 1]")
        return value

    @property
    def window(self) -> tuple[time, time]:
        return _parse_hhmm(self.contact_window[0]), _parse_hhmm(self.contact_window[1])


class GradeOverride(_Model):
    every_days: int | None = Field(None, ge=0)
    channels: tuple[Channel, ...] | None = None


class StageConfig(_Model):
    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    dpd: tuple[int, int]
    every_days: int = Field(0, ge=0)
    channels: tuple[Channel, ...] = ()
    handoff: bool = False
    grades: dict[Literal["A", "B", "C", "D", "E"], GradeOverride] = Field(default_factory=dict)

    @field_validator("dpd")
    @classmethod
    def _dpd(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError("the range must be [low, high] with low <= high")
        return value

    @model_validator(mode="after")
    def _reminders_or_handoff(self) -> StageConfig:
        if self.handoff and self.channels:
            raise ValueError("a handoff stage sends no reminders: remove its channels")
        return self

    def for_grade(self, grade: str | None) -> tuple[int, tuple[str, ...]]:
        """The cadence (every_days, channels) that applies to a borrower of `grade`."""
        override = self.grades.get(grade) if grade else None  # type: ignore[call-overload]
        every = self.every_days
        channels: tuple[str, ...] = self.channels
        if override is not None:
            every = override.every_days if override.every_days is not None else every
            channels = override.channels if override.channels is not None else channels
        return every, channels


class ChannelConfig(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    provider: str = "outbox"
    rate_per_second: float = Field(10, gt=0)
    base_url: str | None = None
    max_segments: int = Field(3, ge=1)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"


class HandoffConfig(_Model):
    min_balance: Decimal = Decimal("50.00")
    recall_after_days: int = Field(180, ge=1)
    resume_after_recall: bool = False


class AgencyConfig(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    name: str
    share: float = Field(1, gt=0)
    commission_rate: Decimal = Decimal("0")
    transport: Literal["folder", "sftp", "https"] = "folder"
    path: str | None = None
    outcome_token_env: str | None = None


class LenderConfig(_Model):
    """Who the borrower is dealing with: named in every message (required by law)."""

    name: str = "Lender"
    phone: str = ""
    payment_url: str = ""
    support_email: str = ""
    unsubscribe_url: str = ""


class OutboxConfig(_Model):
    path: str = "outbox"


class Config(_Model):
    database: DatabaseConfig = DatabaseConfig()
    run: RunConfig = RunConfig()
    policy: PolicyConfig = PolicyConfig()
    stages: tuple[StageConfig, ...] = ()
    channels: dict[Channel, ChannelConfig] = Field(default_factory=dict)
    server: ServerConfig = ServerConfig()
    handoff: HandoffConfig = HandoffConfig()
    agencies: tuple[AgencyConfig, ...] = ()
    outbox: OutboxConfig = OutboxConfig()
    lender: LenderConfig = LenderConfig()
    base_dir: Path = Path(".")
    source: str = "config.toml"

    @model_validator(mode="after")
    def _stages_do_not_overlap(self) -> Config:
        names: set[str] = set()
        ordered = sorted(enumerate(self.stages), key=lambda item: item[1].dpd[0])
        for (_, before), (index, after) in zip(ordered, ordered[1:], strict=False):
            if after.dpd[0] <= before.dpd[1]:
                raise ValueError(
                    f"stages[{index}].dpd: range {list(after.dpd)} of stage {after.name!r} "
                    f"overlaps {list(before.dpd)} of stage {before.name!r}"
                )
        for index, stage in enumerate(self.stages):
            if stage.name in names:
                raise ValueError(f"stages[{index}].name: duplicate stage {stage.name!r}")
            names.add(stage.name)
        agency_ids = [agency.id for agency in self.agencies]
        if len(set(agency_ids)) != len(agency_ids):
            raise ValueError("agencies: duplicate agency id")
        return self

    def channel(self, name: str) -> ChannelConfig:
        return self.channels.get(name, ChannelConfig())  # type: ignore[call-overload]

    def stage(self, name: str) -> StageConfig | None:
        return next((s for s in self.stages if s.name == name), None)

    def resolve_path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def database_url(self) -> str:
        """The database URL: REMINDER_DATABASE_URL wins; a relative SQLite path is resolved."""
        url = os.environ.get("REMINDER_DATABASE_URL") or self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix):]
            if rest and rest != ":memory:":
                url = prefix + str((self.base_dir / rest).resolve())
        return url


def _field_name(loc: tuple[object, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if item == "[key]":
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(file)"


def parse_config(data: dict[str, object], base_dir: Path, source: str) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming the first bad field."""
    try:
        return Config.model_validate({**data, "base_dir": base_dir, "source": source})
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = tuple(p for p in error["loc"] if p not in ("function-after", "tagged-union"))
        if not loc and ": " in message and message.split(": ", 1)[0].startswith(("stages", "ag")):
            field, message = message.split(": ", 1)
            raise ConfigError(field, message, source) from exc
        raise ConfigError(_field_name(loc), message, source) from exc


def default_config_path() -> Path | None:
    """Where to read the config when --config is not given: $REMINDER_CONFIG, ./config.toml."""
    env = os.environ.get("REMINDER_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.exists() else None


def load_config(path: Path | None = None) -> Config:
    """Load and validate the config; without a file, the bundled default rooted at the cwd."""
    path = path or default_config_path()
    if path is None:
        bundled = bundled_config_path()
        with bundled.open("rb") as handle:
            data = tomllib.load(handle)
        return parse_config(data, Path.cwd(), "default config.toml")
    if not path.exists():
        raise ConfigError("--config", f"no such file: {path}")
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), str(path)) from exc
    return parse_config(data, path.resolve().parent, str(path))
