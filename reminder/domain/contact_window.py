"""When may a borrower be contacted: the first instant inside the contact window.

Pure functions over the run instant, the borrower's timezone and the lender's calendar.
DST is handled by building the local wall-clock time with zoneinfo and converting back
(a window start inside a spring-forward gap moves to the first valid instant).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Slot:
    """The first allowed instant for one timezone and what its local date is."""

    timezone: str
    not_before: datetime  # aware, UTC
    local_date: date
    holiday: str | None  # the holiday's name, if the local date is one
    weekend: bool


def _local(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The aware instant of wall-clock `at` on `day`, normalised through UTC (DST gaps)."""
    naive = datetime.combine(day, at)
    instant = naive.replace(tzinfo=zone).astimezone(UTC)
    return instant.astimezone(zone)


def first_contact_instant(
    run_at: datetime, zone: ZoneInfo, window: tuple[time, time]
) -> datetime:
    """The first instant >= run_at whose local time in `zone` is inside [start, end)."""
    local_now = run_at.astimezone(zone)
    start, end = window
    today = local_now.date()
    opens = _local(today, start, zone)
    closes = _local(today, end, zone)
    if local_now < opens:
        return opens
    if local_now < closes:
        return local_now
    return _local(today + timedelta(days=1), start, zone)


@lru_cache(maxsize=64)
def _calendar(country: str, year: int) -> dict[date, str]:
    import holidays as holidays_lib

    return dict(holidays_lib.country_holidays(country, years=year, observed=True))


def holiday_name(day: date, country: str) -> str | None:
    """The public holiday on `day` in `country` (observed days included), or None."""
    if not country:
        return None
    return _calendar(country, day.year).get(day)


def slot_for(
    run_at: datetime,
    timezone: str,
    window: tuple[time, time],
    holiday_country: str,
    skip_weekends: bool,
) -> Slot:
    """Everything the policy needs to know about contacting someone in `timezone`."""
    instant = first_contact_instant(run_at, ZoneInfo(timezone), window)
    local_day = instant.date()
    return Slot(
        timezone=timezone,
        not_before=instant.astimezone(UTC),
        local_date=local_day,
        holiday=holiday_name(local_day, holiday_country),
        weekend=skip_weekends and local_day.weekday() >= 5,
    )
