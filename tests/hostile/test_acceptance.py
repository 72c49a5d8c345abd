"""Issue 8's acceptance, as a new user would try it: one run against a server that does
everything at once.

The server returns another patient's chart for pat-1, books appt-x with a versioned
reference (Patient/123/_history/2: patient 123), answers pat-2's read with a 1 GiB body,
drips pat-3's read one byte every half second, and answers pat-5's read with an
OperationOutcome full of terminal escapes. The run must finish within its deadline, list
each affected visit as failed with its reason, plan the others (pat-4, and 123 for appt-x),
write no order naming a patient other than its appointment's, and print nothing that can
redraw a terminal. previsit runs as a child process under a memory limit, as cron runs it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from hostile_server import Chart, Fault, HostileFhirServer

from hostile.harness import (
    HOSTILE_TEXT,
    Day,
    chart,
    run_args,
    run_process,
    subjects,
    unsafe_characters,
    wrong_patient_orders,
)

if TYPE_CHECKING:
    from hostile.conftest import AssumedInterface

DEADLINE = 4.0


def test_a_hostile_server_fails_only_what_it_broke(hostile_server: HostileFhirServer,
                                                   tmp_path: Path,
                                                   assumed: AssumedInterface) -> None:
    day = Day()
    for n, name in enumerate(("Ana Able", "Ben Baker", "Cy Cole", "Di Dove", "Ed Eve"),
                             start=1):
        day.add(*chart(f"pat-{n}", age=50 + n, sex="female", name=name))
    day.add(*chart("123", age=58, sex="male", name="Dan Dunn"))
    day.add(*chart("2", age=71, sex="female", name="Eve Trap"))
    for n, hour in enumerate(("09:00", "09:20", "09:40", "10:00", "10:20"), start=1):
        day.book(f"appt-{n}", f"pat-{n}", hour)
    day.book("appt-x", "123", "11:00", reference="Patient/123/_history/2")
    server = hostile_server
    server.chart = Chart(*day.resources)
    server.connection_deadline = 8.0
    server.behaviours.swap_patient = {"pat-1": "pat-2"}
    server.behaviours.swap_searches = {"pat-1": "pat-2"}
    server.fault(Fault.huge(1 << 30), patient="pat-2")
    server.fault(Fault.drip(0.5), patient="pat-3")
    server.fault(Fault.outcome(500, HOSTILE_TEXT), patient="pat-5")

    run = run_process(run_args(fhir_url=server.base_url, extra=["--write-back"]),
                      out=tmp_path / "out", memory_bytes=384 << 20, timeout=60,
                      env={**assumed.env(max_response_bytes=5_000_000,
                                         deadline_seconds=DEADLINE),
                           "PREVISIT_SOURCE_MAX_ATTEMPTS": "1"})

    assert not run.crashed, run.explain()
    assert run.exit_code == 3, run.explain()
    assert run.elapsed < DEADLINE + 10, run.explain()
    failures = run.failures
    assert set(failures) == {"appt-1", "appt-2", "appt-3", "appt-5"}, run.explain()
    assert re.search(assumed.wrong_patient_words, failures["appt-1"], re.I)
    assert re.search(assumed.too_large_words, failures["appt-2"], re.I)
    assert re.search(assumed.deadline_words, failures["appt-3"], re.I)
    assert "HTTP 500" in failures["appt-5"]
    assert run.planned == {"appt-4": "pat-4", "appt-x": "123"}
    assert wrong_patient_orders(run.transactions(), day.truth) == []
    # (a visit's orders may go in several transactions: each names one patient)
    written = sorted({tuple(sorted(subjects(b))) for b in server.transactions})
    assert written == [("Patient/123",), ("Patient/pat-4",)]
    assert server.asked_about("2") == []  # the versioned reference did not plan patient 2
    assert unsafe_characters(run.printed) == []
    assert not re.search(r"^(FORGED|OVERWRITTEN)", run.printed, re.MULTILINE)
    assert run.report["exit_code"] == 3
