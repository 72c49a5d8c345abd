"""Issue 8, item 2: a server that answers with someone else's chart must not get it planned.

Asked for Patient/pat-1, a server (a bug, a misrouted proxy cache, an attacker) returns
Patient/pat-2, or pat-2's Conditions and Observations, or mixes them into pat-1's. Today the
plan for pat-1's visit is built from pat-2's chart and orders are written for pat-2 under
pat-1's appointment. Wanted: a returned resource whose id, or whose subject/patient, is not
the patient asked for fails that patient's visits with a clear reason; the others are planned.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hostile_server import Chart, HostileFhirServer

from hostile.harness import (
    appointments_named,
    clinic_day,
    run_args,
    run_cli,
    subjects,
    wrong_patient_orders,
)

if TYPE_CHECKING:
    from hostile.conftest import AssumedInterface

# how the server lies about pat-1 (who is really asked for) with pat-2's data
LIES = {
    "whole chart swapped": dict(swap_patient={"pat-1": "pat-2"},
                                swap_searches={"pat-1": "pat-2"}),
    "searches swapped": dict(swap_searches={"pat-1": "pat-2"}),
    "other records mixed in": dict(leak_searches={"pat-1": "pat-2"}),
}


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
@pytest.mark.parametrize("lie", sorted(LIES))
@pytest.mark.xfail(strict=True, reason="issue 8: item 2 (resources returned for another "
                   "patient are used as the asked-for patient's chart)")
def test_another_patients_chart_fails_that_visit_only(
        lie: str, batch: bool, hostile_server: HostileFhirServer, tmp_path: Path,
        assumed: AssumedInterface) -> None:
    day = clinic_day()
    hostile_server.chart = Chart(*day.resources)
    for name, value in LIES[lie].items():
        setattr(hostile_server.behaviours, name, value)

    run = run_cli(run_args(fhir_url=hostile_server.base_url, extra=["--write-back"]),
                  out=tmp_path / "out",
                  env={"PREVISIT_SOURCE_USE_BATCH": "true" if batch else "false"})

    assert not run.crashed, run.explain()
    assert run.exit_code == 3, run.explain()
    assert set(run.failures) == {"appt-1"}, run.explain()
    reason = run.failures["appt-1"]
    assert re.search(assumed.wrong_patient_words, reason, re.IGNORECASE), reason
    assert run.planned == {"appt-2": "pat-2", "appt-3": "pat-3"}
    # nothing was written for pat-1's visit, and no order anywhere names the wrong patient
    assert wrong_patient_orders(run.transactions(), day.truth) == []
    for bundle in hostile_server.transactions:
        assert "appt-1" not in appointments_named(bundle)
        assert len(subjects(bundle)) == 1
    # a visit's proposals may take several transactions (at most 8 entries each)
    written = sorted({tuple(sorted(subjects(b))) for b in hostile_server.transactions})
    assert written == [("Patient/pat-2",), ("Patient/pat-3",)]


def test_an_honest_server_plans_everyone(hostile_server: HostileFhirServer,
                                         tmp_path: Path) -> None:
    """The control: the same day, no lies, every visit planned and written for its patient."""
    day = clinic_day()
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(run_args(fhir_url=hostile_server.base_url, extra=["--write-back"]),
                  out=tmp_path / "out")

    assert run.exit_code == 0, run.explain()
    assert run.planned == {"appt-1": "pat-1", "appt-2": "pat-2", "appt-3": "pat-3"}
    written = sorted({tuple(sorted(subjects(b))) for b in hostile_server.transactions})
    assert written == [("Patient/pat-1",), ("Patient/pat-2",), ("Patient/pat-3",)]
