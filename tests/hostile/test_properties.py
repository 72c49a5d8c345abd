"""Property tests: whatever a clinic day holds, a run completes, safely, for the right people.

Each example is a generated clinic day (fhir_strategies.clinic_days: pristine patients, degraded
charts, hostile appointments, broken files) planned by `previsit run` as a user runs it, from
a bundle folder or from the hostile server. Whatever the day holds:

- the run ends with an exit code in {0, 3, 4}, never a traceback;
- run-report.json and plan.json exist and parse, and the report's exit code is the process's;
- no order in any transaction names a patient other than its appointment's, and none exists
  for an appointment that must not be planned (a traversing or foreign patient reference);
- every pristine visit (a valid chart, a valid appointment) is planned: one bad record fails
  one patient, not the day;
- nothing printed carries terminal control characters or bidi overrides.

HYPOTHESIS_PROFILE=long (or tests/hostile/soak.py) runs many more random days and prints
which classes of bad input were tried and survived.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir_strategies import ClinicDay, clinic_days
from hostile_server import Chart, HostileFhirServer
from hypothesis import given

from hostile.figures import FIGURES, property_settings, soak_mode
from hostile.harness import CliRun, run_args, run_cli, unsafe_characters, wrong_patient_orders

PROFILE = property_settings()


def violations(run: CliRun, day: ClinicDay) -> list[str]:
    """Every property the run broke, each as "<kind>: <detail>"."""
    found: list[str] = []
    if run.crashed:
        found.append(f"crashed: {type(run.exception).__name__}: {str(run.exception)[:200]}")
    if run.exit_code not in (0, 3, 4):
        found.append(f"exit code: {run.exit_code}")
    assert run.out is not None
    outputs = {}
    for name in ("run-report.json", "plan.json"):
        path = run.out / name
        try:
            outputs[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            found.append(f"no {name}: {type(exc).__name__}: {str(exc)[:120]}")
    report, plan = outputs.get("run-report.json"), outputs.get("plan.json")
    if isinstance(report, dict) and report.get("exit_code") != run.exit_code:
        found.append(f"report disagrees: exit_code {report.get('exit_code')} in the report, "
                     f"{run.exit_code} returned")
    try:
        wrong = wrong_patient_orders(run.transactions(), day.truth)
    except (OSError, ValueError) as exc:
        wrong = [f"transactions unreadable: {exc}"]
    found.extend(f"wrong patient: {w}" for w in wrong)
    if isinstance(plan, dict):
        planned = {v["visit"]["appointment_id"]: v["visit"]["patient_id"]
                   for v in plan.get("visits", ()) if not v.get("failed")}
        for aid, pid in sorted(day.pristine.items()):
            if planned.get(aid) != pid:
                found.append(f"pristine visit not planned: {aid} (Patient/{pid}); "
                             f"{run.printed[-300:]!r}")
    unsafe = unsafe_characters(run.printed)
    if unsafe:
        found.append(f"terminal: unsafe characters printed: {', '.join(unsafe)}")
    return found


def check(test: str, day: ClinicDay, run: CliRun) -> None:
    found = violations(run, day)
    FIGURES.record(test, day.classes, found, run.exit_code, run.elapsed)
    if found and not soak_mode():
        raise AssertionError(f"{len(found)} properties broken by a day with "
                             f"{sorted(day.classes)}:\n" + "\n".join(found[:5])
                             + f"\n{run.explain()}")


def finish(test: str) -> None:
    """In soak mode the examples went on past violations; fail now if there were any."""
    if soak_mode():
        assert not FIGURES.violations(test), "\n".join(FIGURES.violations(test))


# --- from a bundle folder ----------------------------------------------------------------------


@PROFILE
@given(day=clinic_days(files=True))
def _bundle_day(day: ClinicDay) -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        folder = day.write(Path(tmp) / "day")
        run = run_cli(run_args(source=folder), out=Path(tmp) / "out")
        check("bundle folder", day, run)


def test_property_any_bundle_day_completes_for_the_right_patients() -> None:
    _bundle_day()
    finish("bundle folder")


# --- from the hostile server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server() -> Iterator[HostileFhirServer]:
    """One server for every example (reset to the example's chart each time)."""
    with HostileFhirServer(connection_deadline=30.0) as server:
        yield server


def _server_day(server: HostileFhirServer) -> None:
    @PROFILE
    @given(day=clinic_days(files=False))
    def one(day: ClinicDay) -> None:
        server.reset(Chart(*day.resources))
        with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
            started = time.monotonic()
            run = run_cli(run_args(fhir_url=server.base_url), out=Path(tmp) / "out",
                          env={"PREVISIT_SOURCE_MAX_ATTEMPTS": "1"})
            run.elapsed = time.monotonic() - started
            check("FHIR server", day, run)

    one()


def test_property_any_server_day_completes_for_the_right_patients(
        shared_server: HostileFhirServer) -> None:
    _server_day(shared_server)
    finish("FHIR server")
