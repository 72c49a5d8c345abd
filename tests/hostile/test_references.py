"""Issue 8, item 1: an appointment's patient reference decides whose chart is planned.

Before the fix the last path segment of the reference was kept, so `Patient/123/_history/2`
plans patient 2, `Patient/../../metadata` plans a patient called "metadata" and
`https://other-ehr/fhir/Patient/123` plans *this* server's patient 123. Wanted: a reference is
accepted only as `Patient/<id>` (optionally prefixed by the server's own base), with
`/_history/<version>` stripped; anything else is not planned for anyone, and said so.

Each chart holds the patient a wrong reading would land on (a trap), so planning the wrong
person shows up as orders naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_server import Chart, HostileFhirServer

from hostile.harness import (
    CliRun,
    Day,
    chart,
    clinic_day,
    run_args,
    run_cli,
    wrong_patient_orders,
)

# label -> (reference written on the appointment, the patient it must be planned for or None)
REFERENCES: dict[str, tuple[str, str | None]] = {
    "versioned": ("Patient/123/_history/2", "123"),
    "traversing": ("Patient/../../metadata", None),
    "foreign": ("https://other-ehr/fhir/Patient/123", None),
    "relative-dot": ("./Patient/123", None),
}


def day_with(reference: str, expected: str | None) -> Day:
    """The clinic day plus appointment appt-x written with `reference`, and the traps:
    patients 123, 2 and metadata all exist."""
    day = clinic_day()
    day.add(*chart("123", age=58, sex="male", name="Dan Dunn"))
    day.add(*chart("2", age=71, sex="female", name="Eve Trap"))
    day.add(*chart("metadata", age=64, sex="male", name="Fay Trap"))
    day.book("appt-x", expected or "nobody", "11:00", reference=reference)
    day.truth["appt-x"] = expected  # None: for no one
    return day


def assert_reference_handled(run: CliRun, day: Day, expected: str | None) -> None:
    assert not run.crashed, run.explain()
    # the other visits are planned, for their own patients
    for aid in ("appt-1", "appt-2", "appt-3"):
        assert run.planned.get(aid) == day.truth[aid], run.explain()
    assert wrong_patient_orders(run.transactions(), day.truth) == []
    if expected is not None:
        assert run.planned.get("appt-x") == expected, run.explain()
        assert run.exit_code == 0, run.explain()
    else:
        assert "appt-x" not in run.planned, run.explain()
        # not silently dropped: a failed visit (exit 3) or an input problem naming it (exit 0)
        listed = "appt-x" in run.failures or \
            "appt-x" in json.dumps(run.report["source_problems"])
        assert listed, run.explain()
        assert run.exit_code == (3 if "appt-x" in run.failures else 0), run.explain()


@pytest.mark.parametrize("label", sorted(REFERENCES))
def test_server_appointment_reference_names_exactly_one_local_patient(
        label: str, hostile_server: HostileFhirServer, tmp_path: Path) -> None:
    reference, expected = REFERENCES[label]
    day = day_with(reference, expected)
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert_reference_handled(run, day, expected)
    # the traps were never read: nobody's chart was fetched for a reference it does not have
    for trap in ("2", "metadata") + (("123",) if expected is None else ()):
        assert hostile_server.asked_about(trap) == [], f"Patient/{trap} was read"


@pytest.mark.parametrize("label", sorted(REFERENCES))
def test_bundle_appointment_reference_names_exactly_one_patient(label: str,
                                                                tmp_path: Path) -> None:
    reference, expected = REFERENCES[label]
    day = day_with(reference, expected)

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert_reference_handled(run, day, expected)


def test_server_reference_prefixed_with_its_own_base_is_the_local_patient(
        hostile_server: HostileFhirServer, tmp_path: Path) -> None:
    day = day_with("placeholder", "123")
    appointment = next(r for r in day.resources if r.get("id") == "appt-x")
    appointment["participant"][0]["actor"]["reference"] = \
        f"{hostile_server.base_url}/Patient/123"
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert_reference_handled(run, day, "123")
    assert hostile_server.asked_about("2") == []
