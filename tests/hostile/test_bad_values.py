"""Issue 8, item 4: one bad value fails at most one patient; the run always finishes.

Before the fix each of these stopped the whole run with exit 1, a traceback and no report: JSON
nested 100,000 deep (in a bundle file, the appointment search or one patient's read:
RecursionError), expectedSupplyDuration 1e308, an Observation value of 10**400,
numberOfRepeatsAllowed 10**18, an Appointment starting 0001-01-01T00:00+14:00, a 300-character
appointment id, and a lone surrogate in a name (UnicodeEncodeError, and a 0-byte plan.json).
Wanted: the run finishes with a report; the other visits are planned; the bad record's own
visit is planned anyway (the value set aside as a data issue) or fails with a reason (exit 3).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from builders import medication, observation, patient
from hostile_server import Chart, Fault, HostileFhirServer, RawJSON, deep_json, dumps

from hostile.harness import (
    CliRun,
    Day,
    appointment,
    chart,
    clinic_day,
    run_args,
    run_cli,
    wrong_patient_orders,
)

GOOD = {"appt-1": "pat-1", "appt-2": "pat-2", "appt-3": "pat-3"}


def _supply_1e308() -> dict[str, Any]:
    order = medication("314076", "lisinopril 10 mg tablet", pid="pat-bad")
    order["dispenseRequest"]["expectedSupplyDuration"] = {
        "value": 1e308, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"}
    return order


def _observation_10_400() -> dict[str, Any]:
    result = observation("4548-4", 30, 7.0, "%", pid="pat-bad")
    result["valueQuantity"]["value"] = 10**400
    return result


def _repeats_10_18() -> dict[str, Any]:
    # another drug than the chart's lisinopril, so that this is the order to renew
    order = medication("860975", "metformin 500 mg tablet", days_ago=100, pid="pat-bad")
    order["dispenseRequest"]["numberOfRepeatsAllowed"] = 10**18
    return order


def _observation_9999() -> dict[str, Any]:
    result = observation("4548-4", 30, 7.0, "%", pid="pat-bad")
    result["effectiveDateTime"] = "9999-12-31"  # date arithmetic past the calendar's end
    return result


def _lone_surrogate_patient() -> dict[str, Any]:
    return patient(pid="pat-bad", age=55, name="Gil \ud800")


# label -> the bad resource in pat-bad's chart (replacing or joining the good ones)
BAD_VALUES: dict[str, Callable[[], dict[str, Any]]] = {
    "expectedSupplyDuration 1e308 months": _supply_1e308,
    "Observation value 10**400": _observation_10_400,
    "numberOfRepeatsAllowed 10**18": _repeats_10_18,
    "Observation dated 9999-12-31": _observation_9999,
    "lone surrogate in the name": _lone_surrogate_patient,
}


def bad_day(bad: dict[str, Any] | None) -> Day:
    """The clinic day plus pat-bad (a good chart, `bad` added or replacing its Patient) with
    one booked appointment, appt-bad, at 11:00."""
    day = clinic_day()
    records = chart("pat-bad", age=55, sex="male", name="Gil Good")
    if bad is not None:
        if bad["resourceType"] == "Patient":
            records[0] = bad
        else:
            records.append(bad)
    day.add(*records)
    day.book("appt-bad", "pat-bad", "11:00")
    return day


def assert_one_patient_at_most(run: CliRun, day: Day, bad: str = "appt-bad") -> None:
    assert not run.crashed, run.explain()
    assert run.exit_code in (0, 3), run.explain()
    assert {a: run.planned.get(a) for a in GOOD} == GOOD, run.explain()
    assert set(run.failures) <= {bad}, run.explain()
    if bad in run.failures:
        assert run.failures[bad].strip(), "a failed visit needs a reason"
    assert run.exit_code == (3 if run.failures else 0)
    assert run.report["exit_code"] == run.exit_code
    assert wrong_patient_orders(run.transactions(), day.truth) == []


@pytest.mark.parametrize("label", sorted(BAD_VALUES))
def test_bundle_bad_value_fails_at_most_its_patient(label: str, tmp_path: Path) -> None:
    day = bad_day(BAD_VALUES[label]())

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert_one_patient_at_most(run, day)


@pytest.mark.parametrize("label", sorted(BAD_VALUES))
def test_server_bad_value_fails_at_most_its_patient(label: str, tmp_path: Path,
                                                    hostile_server: HostileFhirServer) -> None:
    day = bad_day(BAD_VALUES[label]())
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert_one_patient_at_most(run, day)


def test_bundle_file_nested_100k_deep_is_an_input_problem(tmp_path: Path) -> None:
    day = bad_day(None)
    folder = day.write(tmp_path / "day")
    # pat-bad's whole chart, in its own file, wrapped in 100,000 arrays
    chart_only = [r for r in day.resources if r.get("id") != "appt-bad" and
                  "pat-bad" in json.dumps(r)]
    (folder / "patients").mkdir()
    (folder / "patients" / "pat-bad.json").write_text(deep_json(100_000, inner=dumps(
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"resource": r} for r in chart_only]})))
    (folder / "day.json").write_text(dumps({"resourceType": "Bundle", "type": "collection",
                                            "entry": [{"resource": r} for r in day.resources
                                                      if r not in chart_only]}))

    run = run_cli(run_args(source=folder), out=tmp_path / "out")

    assert_one_patient_at_most(run, day)
    assert "appt-bad" in run.failures, run.explain()
    problems = json.dumps(run.report["source_problems"])
    assert "pat-bad.json" in problems


@pytest.mark.parametrize("source", ["bundles", "server"])
def test_appointment_starting_in_year_1_is_not_planned(source: str, tmp_path: Path,
                                                       hostile_server: HostileFhirServer
                                                       ) -> None:
    day = bad_day(None)
    start = next(r for r in day.resources if r.get("id") == "appt-bad")
    start["start"] = "0001-01-01T00:00+14:00"
    day.truth["appt-bad"] = None
    hostile_server.chart = Chart(*day.resources)
    hostile_server.behaviours.ignore_date_filter = True  # the server sends it anyway

    run = run_cli(run_args(source=day.write(tmp_path / "day")) if source == "bundles"
                  else run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert_one_patient_at_most(run, day)
    assert "appt-bad" not in run.planned


def test_300_character_appointment_id_fails_at_most_that_visit(tmp_path: Path) -> None:
    day = bad_day(None)
    long_id = "a" * 300
    day.resources = [r for r in day.resources if r.get("id") != "appt-bad"]
    day.resources.append(appointment(long_id, "2026-12-01T11:00:00-06:00", "Patient/pat-bad"))
    day.truth = {**GOOD, long_id: "pat-bad"}

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert_one_patient_at_most(run, day, bad=long_id)
    # the other visits' outputs were all written
    assert {f"appt-{n}.json" for n in (1, 2, 3)} <= set(run.transactions())
    sheets = {p.name for p in (tmp_path / "out" / "sheets").glob("*.html")}
    assert {f"visit-appt-{n}.html" for n in (1, 2, 3)} <= sheets


def test_lone_surrogate_still_leaves_a_readable_plan(tmp_path: Path) -> None:
    day = bad_day(_lone_surrogate_patient())

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    raw = (tmp_path / "out" / "plan.json").read_bytes()
    assert len(raw) > 0
    raw.decode("utf-8")  # strict: every byte is UTF-8
    assert json.loads(raw)["resourceType"] == "previsit-plan"
    assert not run.crashed, run.explain()


def test_server_appointment_search_nested_100k_deep_is_a_clean_exit_4(
        hostile_server: HostileFhirServer, tmp_path: Path) -> None:
    hostile_server.chart = Chart(*clinic_day().resources)
    hostile_server.fault(Fault.deep_json(100_000), method="GET", path="Appointment")

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert not run.crashed, run.explain()
    assert run.exit_code == 4, run.explain()
    assert run.error.startswith("previsit: ") and "Traceback" not in run.printed


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_server_patient_read_nested_100k_deep_fails_that_patient_only(
        batch: bool, hostile_server: HostileFhirServer, tmp_path: Path) -> None:
    day = clinic_day()
    hostile_server.chart = Chart(*day.resources)
    hostile_server.fault(Fault.deep_json(100_000), patient="pat-2")

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out",
                  env={"PREVISIT_SOURCE_USE_BATCH": "true" if batch else "false"})

    assert not run.crashed, run.explain()
    assert run.exit_code == 3, run.explain()
    assert set(run.failures) == {"appt-2"}
    assert run.planned == {"appt-1": "pat-1", "appt-3": "pat-3"}


def test_raw_json_pieces_reach_previsit_as_written() -> None:
    """The fixture itself: RawJSON and the lone-surrogate escape survive serialization."""
    text = dumps({"a": RawJSON("[[0]]"), "b": "\ud800", "c": 10**400})
    assert text.startswith('{"a":[[0]],"b":"\\ud800","c":1000')
    assert json.loads(text)["b"] == "\ud800"
