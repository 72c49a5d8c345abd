"""Issue 8, item 7: text from a server or a chart reaches the terminal inert.

Before the fix OperationOutcome text, the CapabilityStatement's software name and medication
text are printed raw: escape sequences recolour the terminal, retitle the window or plant
hyperlinks (OSC 8), a CR rewrites the line, a CR LF forges a line in the cron mail, U+202E
reverses what follows. Wanted: nothing printed by previsit contains C0 controls other than TAB
and LF, DEL, C1 controls, or bidi overrides/isolates; data cannot start a line of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from builders import medication
from hostile_server import Chart, Fault, HostileFhirServer

from hostile.harness import (
    DAY,
    HOSTILE_TEXT,
    CliRun,
    clinic_day,
    run_args,
    run_cli,
    unsafe_characters,
)


def assert_inert(run: CliRun) -> None:
    assert not run.crashed, run.explain()
    assert unsafe_characters(run.printed) == []
    # the payload's forged line did not become a line of its own
    assert not re.search(r"^(FORGED|OVERWRITTEN)", run.printed, re.MULTILINE), run.printed


@pytest.mark.parametrize("quiet", [
    pytest.param(False, id="summary"),
    pytest.param(True, id="quiet-cron"),
])
def test_operation_outcome_text_is_printed_inert(quiet: bool,
                                                 hostile_server: HostileFhirServer,
                                                 tmp_path: Path) -> None:
    hostile_server.chart = Chart(*clinic_day().resources)
    hostile_server.fault(Fault.outcome(500, HOSTILE_TEXT), patient="pat-2")

    run = run_cli(run_args(fhir_url=hostile_server.base_url,
                           extra=["--quiet"] if quiet else []), out=tmp_path / "out")

    assert run.exit_code == 3, run.explain()
    assert_inert(run)


def test_capability_statement_software_name_is_printed_inert(
        hostile_server: HostileFhirServer) -> None:
    hostile_server.behaviours.software_name = HOSTILE_TEXT

    run = run_cli(["config", "check", "--fhir-url", hostile_server.base_url, "--no-probe"])

    assert "reached" in run.stdout, run.explain()  # the line that names the software
    assert_inert(run)


def test_medication_text_is_printed_inert(hostile_server: HostileFhirServer) -> None:
    day = clinic_day()
    day.add(medication("860975", HOSTILE_TEXT, days_ago=100, pid="pat-1"))
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(["explain", "--fhir-url", hostile_server.base_url, "--patient", "pat-1",
                   "--date", DAY])

    assert run.exit_code == 0, run.explain()
    assert "renewal" in run.stdout  # the renewal line, which names the medication
    assert_inert(run)


def test_a_servers_header_in_a_log_line_is_logged_inert(hostile_server: HostileFhirServer,
                                                        tmp_path: Path) -> None:
    """/metadata answered with a Content-Type full of escapes: previsit logs (INFO) that it
    could not read the statement, naming the content type; the log line is inert too."""
    hostile_server.chart = Chart(*clinic_day().resources)
    evil = "text/html\x1b]0;pwned\x07\x1b[2J\u202e"
    hostile_server.fault(Fault.raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: " + evil.encode("utf-8") +
        b"\r\nContent-Length: 5\r\n\r\nhello"), path="metadata")

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert run.exit_code == 0, run.explain()
    assert "could not read the CapabilityStatement" in run.logs
    assert_inert(run)
