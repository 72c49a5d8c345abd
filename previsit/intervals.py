"""Calendar arithmetic: durations written as "10y", "27mo", "4w", "60d", and ages on a date.

The one place where the project adds intervals to dates or computes ages, so that every
rule, the renewal logic and the tests agree on what "one year after 2024-02-29" means
(2025-02-28: the last day of the month when the day does not exist).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime

from previsit.errors import DurationError

_DURATION = re.compile(r"^\s*(\d+)\s*(y|mo|w|d)\s*$")
_UNIT_WORDS = {"y": ("year", "years"), "mo": ("month", "months"), "w": ("week", "weeks"),
               "d": ("day", "days")}
# The longest duration a rule may name, per unit: 200 years. Anything longer is a typo (a
# look-back of 99999999999999999999y), and refusing it when the rule is loaded names the
# file, where accepting it would fail at evaluation.
MAX_AMOUNT = {"y": 200, "mo": 200 * 12, "w": 200 * 53, "d": 200 * 366}




@dataclass(frozen=True)
class Duration:
    """A calendar duration: years and months are calendar units, weeks and days are exact."""

    amount: int
    unit: str  # "y", "mo", "w" or "d"

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = _DURATION.match(str(text))
        if not match:
            raise DurationError(
                f"{text!r} is not a duration; write a whole number followed by y, mo, w or d "
                "(for example 10y, 27mo, 4w, 60d)"
            )
        amount, unit = int(match.group(1)), match.group(2)
        if amount > MAX_AMOUNT[unit]:
            raise DurationError(
                f"{text!r} is longer than any rule needs; at most {MAX_AMOUNT[unit]}{unit} "
                "(200 years)")
        return cls(amount, unit)

    def after(self, start: date) -> date:
        """The date this duration after `start`."""
        return add(start, self)

    def before(self, end: date) -> date:
        """The date this duration before `end`."""
        return add(end, Duration(-self.amount, self.unit))

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"

    def words(self) -> str:
        singular, plural = _UNIT_WORDS[self.unit]
        return f"{self.amount} {singular if abs(self.amount) == 1 else plural}"


def add(start: date, duration: Duration) -> date:
    """Add a duration to a date, clamping to the end of the month for y/mo units.

    A result outside the calendar (before 0001-01-01, after 9999-12-31) is that calendar
    end: a chart dated 9999-12-31, or a supply of 10**18 days, gives "never" rather than an
    OverflowError out of the run.
    """
    if duration.unit in ("y", "mo"):
        months = duration.amount * (12 if duration.unit == "y" else 1)
        index = start.year * 12 + (start.month - 1) + months
        year, month = divmod(index, 12)
        if year < date.min.year:
            return date.min
        if year > date.max.year:
            return date.max
        month += 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return date(year, month, day)
    days = duration.amount * (7 if duration.unit == "w" else 1)
    ordinal = start.toordinal() + days
    return date.fromordinal(min(max(ordinal, 1), date.max.toordinal()))


def age_on(birth_date: date, on: date) -> int:
    """Completed years of age on a date (a person born 1981-11-24 is 44 on 2026-11-23)."""
    years = on.year - birth_date.year
    if (on.month, on.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def parse_fhir_date(value: object) -> date | None:
    """The calendar date of a FHIR date/dateTime/instant string, or None if unreadable.

    Partial dates take their first day ("1975" -> 1975-01-01, "1975-06" -> 1975-06-01),
    which is how FHIR defines the start of their period. A time zone is ignored: a
    result at 23:30 local time belongs to the day the clinic saw it.
    """
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def parse_fhir_datetime(value: object) -> datetime | None:
    """A FHIR dateTime/instant with a time, or None when it has no time or is unreadable."""
    if not isinstance(value, str) or len(value) <= 10:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def influenza_season_start(on: date, start_month: int = 8) -> date:
    """First day of the influenza season that `on` falls in (seasons start in August)."""
    year = on.year if on.month >= start_month else on.year - 1
    return date(year, start_month, 1)
