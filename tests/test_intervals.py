"""Calendar arithmetic: durations, month-end clamping, ages, FHIR dates, influenza seasons."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from previsit.errors import DurationError
from previsit.intervals import (
    Duration,
    add,
    age_on,
    influenza_season_start,
    parse_fhir_date,
    parse_fhir_datetime,
)

# --- Duration.parse ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "amount", "unit"), [
    ("10y", 10, "y"),
    ("27mo", 27, "mo"),
    ("4w", 4, "w"),
    ("60d", 60, "d"),
    (" 6 mo ", 6, "mo"),
    ("0d", 0, "d"),
])
def test_parse_reads_amount_and_unit(text: str, amount: int, unit: str) -> None:
    assert Duration.parse(text) == Duration(amount, unit)


@pytest.mark.parametrize("text", ["10", "y", "1.5y", "10 years", "-1y", "10m", "", "6mos"])
def test_parse_refuses_what_is_not_a_duration_and_says_how_to_write_one(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        Duration.parse(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "is not a duration" in message
    assert "10y, 27mo, 4w, 60d" in message


def test_duration_error_is_a_value_error() -> None:
    # Callers (the rule loader) catch ValueError to report a field error.
    with pytest.raises(ValueError, match="is not a duration"):
        Duration.parse("soon")


def test_str_round_trips_and_words_are_singular_or_plural() -> None:
    assert str(Duration.parse("27mo")) == "27mo"
    assert Duration(1, "y").words() == "1 year"
    assert Duration(10, "y").words() == "10 years"
    assert Duration(1, "mo").words() == "1 month"
    assert Duration(4, "w").words() == "4 weeks"
    assert Duration(60, "d").words() == "60 days"


# --- add / after / before ------------------------------------------------------------------


def test_one_year_after_leap_day_is_the_last_day_of_february() -> None:
    assert add(date(2024, 2, 29), Duration(1, "y")) == date(2025, 2, 28)
    assert Duration(4, "y").after(date(2024, 2, 29)) == date(2028, 2, 29)


@pytest.mark.parametrize(("start", "expected"), [
    (date(2025, 1, 31), date(2025, 2, 28)),
    (date(2024, 1, 31), date(2024, 2, 29)),
    (date(2025, 3, 31), date(2025, 4, 30)),
    (date(2025, 1, 15), date(2025, 2, 15)),
])
def test_one_month_after_clamps_to_the_end_of_a_shorter_month(start: date,
                                                                expected: date) -> None:
    assert Duration(1, "mo").after(start) == expected


def test_months_roll_over_the_year_in_both_directions() -> None:
    assert Duration(3, "mo").after(date(2025, 11, 30)) == date(2026, 2, 28)
    assert Duration(27, "mo").after(date(2024, 12, 1)) == date(2027, 3, 1)
    assert Duration(3, "mo").before(date(2026, 2, 28)) == date(2025, 11, 28)
    assert Duration(1, "mo").before(date(2026, 1, 15)) == date(2025, 12, 15)


def test_weeks_and_days_are_exact_day_counts() -> None:
    start = date(2026, 12, 1)
    assert Duration(4, "w").after(start) == date(2026, 12, 29)
    assert Duration(60, "d").after(start) == start + timedelta(days=60)
    assert Duration(60, "d").after(start) == date(2027, 1, 30)
    assert Duration(1, "w").before(date(2026, 3, 1)) == date(2026, 2, 22)
    assert Duration(365, "d").before(date(2025, 3, 1)) == date(2024, 3, 1)


def test_before_subtracts_with_the_same_clamping() -> None:
    assert Duration(1, "y").before(date(2025, 2, 28)) == date(2024, 2, 28)
    assert Duration(1, "y").before(date(2024, 2, 29)) == date(2023, 2, 28)
    assert Duration(1, "mo").before(date(2024, 3, 31)) == date(2024, 2, 29)
    assert Duration(10, "y").before(date(2026, 12, 1)) == date(2016, 12, 1)


# --- age_on --------------------------------------------------------------------------------


def test_age_changes_on_the_birthday_not_before() -> None:
    born = date(1981, 11, 24)
    assert age_on(born, date(2026, 11, 23)) == 44
    assert age_on(born, date(2026, 11, 24)) == 45
    assert age_on(born, date(2026, 11, 25)) == 45


def test_age_on_the_day_of_birth_is_zero() -> None:
    assert age_on(date(2026, 5, 5), date(2026, 5, 5)) == 0
    assert age_on(date(2026, 5, 5), date(2027, 5, 4)) == 0


def test_leap_day_birthday_counts_from_first_of_march_in_common_years() -> None:
    born = date(2000, 2, 29)
    assert age_on(born, date(2026, 2, 28)) == 25
    assert age_on(born, date(2026, 3, 1)) == 26
    # in a leap year the birthday itself exists
    assert age_on(born, date(2028, 2, 28)) == 27
    assert age_on(born, date(2028, 2, 29)) == 28


# --- parse_fhir_date / parse_fhir_datetime -------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1975", date(1975, 1, 1)),
    ("1975-06", date(1975, 6, 1)),
    ("1975-06-15", date(1975, 6, 15)),
    # the clinic's local day, not the UTC day (23:30 at -05:00 is 04:30 UTC the next day)
    ("2024-03-10T23:30:00-05:00", date(2024, 3, 10)),
    ("2024-03-10T00:15:00+09:00", date(2024, 3, 10)),
    ("2024-03-10T12:00:00Z", date(2024, 3, 10)),
    ("2024-03-10T12:00:00.123Z", date(2024, 3, 10)),
])
def test_fhir_dates_of_every_precision(value: str, expected: date) -> None:
    assert parse_fhir_date(value) == expected


@pytest.mark.parametrize("value", [
    "garbage", "abcd", "1975-13", "2025-02-30", "75", "", "yesterday at noon", None, 1975,
    ["1975-06-15"], {"start": "1975-06-15"},
])
def test_unreadable_dates_are_none(value: object) -> None:
    assert parse_fhir_date(value) is None


def test_fhir_datetime_keeps_time_and_offset() -> None:
    parsed = parse_fhir_datetime("2024-03-10T23:30:00Z")
    assert parsed == datetime(2024, 3, 10, 23, 30, tzinfo=UTC)
    offset = parse_fhir_datetime("2024-03-10T23:30:00-05:00")
    assert offset is not None and offset.utcoffset() == timedelta(hours=-5)


@pytest.mark.parametrize("value", ["2024-03-10", "2024", "2024-03-10Tnoon", None, 42])
def test_fhir_datetime_without_a_readable_time_is_none(value: object) -> None:
    assert parse_fhir_datetime(value) is None


# --- influenza seasons ---------------------------------------------------------------------


def test_season_starts_on_the_first_of_august() -> None:
    assert influenza_season_start(date(2026, 7, 31)) == date(2025, 8, 1)
    assert influenza_season_start(date(2026, 8, 1)) == date(2026, 8, 1)
    assert influenza_season_start(date(2026, 12, 31)) == date(2026, 8, 1)
    assert influenza_season_start(date(2027, 1, 1)) == date(2026, 8, 1)


def test_season_start_month_is_configurable() -> None:
    assert influenza_season_start(date(2026, 8, 31), start_month=9) == date(2025, 9, 1)
    assert influenza_season_start(date(2026, 9, 1), start_month=9) == date(2026, 9, 1)


# --- the ends of the calendar ---------------------------------------------------------------


@pytest.mark.parametrize(("start", "duration", "expected"), [
    (date(9999, 12, 31), Duration(30, "d"), date(9999, 12, 31)),
    (date(9999, 12, 31), Duration(1, "mo"), date(9999, 12, 31)),
    (date(2026, 12, 1), Duration(10**18, "d"), date(9999, 12, 31)),
    (date(2026, 12, 1), Duration(10**18, "y"), date(9999, 12, 31)),
    (date(1, 1, 1), Duration(-1, "d"), date(1, 1, 1)),
    (date(2026, 12, 1), Duration(-10**9, "w"), date(1, 1, 1)),
    (date(2026, 12, 1), Duration(-3000, "y"), date(1, 1, 1)),
])
def test_a_date_past_the_calendar_is_its_end_not_an_overflow(start: date, duration: Duration,
                                                             expected: date) -> None:
    assert add(start, duration) == expected


@pytest.mark.parametrize(("text", "limit"), [
    ("99999999999999999999y", "200y"), ("201y", "200y"), ("2401mo", "2400mo"),
    ("10601w", "10600w"), ("73201d", "73200d"),
])
def test_parse_refuses_a_duration_longer_than_any_rule_needs(text: str, limit: str) -> None:
    with pytest.raises(DurationError, match=f"longer than any rule needs; at most {limit}"):
        Duration.parse(text)


def test_parse_accepts_the_longest_durations() -> None:
    assert [Duration.parse(t) for t in ("200y", "2400mo", "10600w", "73200d")] == [
        Duration(200, "y"), Duration(2400, "mo"), Duration(10600, "w"), Duration(73200, "d")]
