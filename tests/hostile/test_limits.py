"""Issue 8, item 5: bounded reads — what a server sends cannot exhaust memory or time.

Before the fix there was no response size limit and no overall deadline: a 1 GiB body was read
whole, a gzip bomb expanding to 2.2 GB is inflated whole, an endless body is read until memory
runs out, a server sending one byte every few seconds holds the run forever (the read timeout
never fires), and a search whose next links never end is followed for 1,000 pages, all kept in
memory. Wanted: a cap on each response (after decompression) and on each search, and a deadline
for the run; what exceeds them fails that patient (exit 3), the rest is planned.

The settings are assumed (conftest.AssumedInterface). The memory-bomb tests run previsit as a
child process limited to 384 MiB of address space (a normal run fits in 256 MiB), so
an unbounded read ends in MemoryError instead of taking the test machine with it. To keep
the suite fast the server cuts a huge or endless body after 2 s (the hostile server's
connection deadline); by then a client without a cap has read hundreds of megabytes, which the
server counts, while a capped one hung up after a few.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from hostile_server import Chart, Fault, HostileFhirServer

from hostile.harness import CliRun, clinic_day, run_args, run_cli, run_process

if TYPE_CHECKING:
    from hostile.conftest import AssumedInterface

CAP = 5_000_000  # bytes: max_response_bytes for these tests (a normal record is ~20 kB)
MEMORY = 384 << 20  # address space of the child process (a normal run fits in 256 MiB)
# One attempt per request: a fixed previsit has no reason to retry a response over the cap,
# and unbounded reads would otherwise repeat with backoff.
ONE_ATTEMPT = {"PREVISIT_SOURCE_MAX_ATTEMPTS": "1"}


def assert_only_pat_2_failed(run: CliRun, words: str) -> None:
    assert not run.crashed, run.explain()
    assert run.exit_code == 3, run.explain()
    assert set(run.failures) == {"appt-2"}, run.explain()
    assert re.search(words, run.failures["appt-2"], re.IGNORECASE), run.failures["appt-2"]
    assert run.planned == {"appt-1": "pat-1", "appt-3": "pat-3"}


def served_day(server: HostileFhirServer) -> HostileFhirServer:
    server.chart = Chart(*clinic_day().resources)
    return server


def test_a_1_gib_body_is_not_read_whole(hostile_server: HostileFhirServer, tmp_path: Path,
                                        assumed: AssumedInterface) -> None:
    server = served_day(hostile_server)
    server.connection_deadline = 2.0
    server.fault(Fault.huge(1 << 30), patient="pat-2")

    run = run_process(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                      env={**assumed.env(max_response_bytes=CAP), **ONE_ATTEMPT},
                      memory_bytes=MEMORY)

    assert_only_pat_2_failed(run, assumed.too_large_words)
    assert run.elapsed < 30, run.explain()
    # the client hung up soon after the cap: the server never got far into the gigabyte
    sent = [r.bytes_sent for r in server.asked_about("pat-2")]
    assert sent and max(sent) < 64 << 20, sent


def test_a_gzip_bomb_is_not_inflated_whole(hostile_server: HostileFhirServer, tmp_path: Path,
                                           assumed: AssumedInterface) -> None:
    server = served_day(hostile_server)
    server.fault(Fault.gzip_bomb(2_200_000_000), patient="pat-2")

    run = run_process(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                      env={**assumed.env(max_response_bytes=CAP), **ONE_ATTEMPT},
                      memory_bytes=MEMORY)

    assert_only_pat_2_failed(run, assumed.too_large_words)
    assert run.elapsed < 30, run.explain()


def test_an_endless_body_is_cut_at_the_cap(hostile_server: HostileFhirServer, tmp_path: Path,
                                           assumed: AssumedInterface) -> None:
    server = served_day(hostile_server)
    server.connection_deadline = 2.0
    server.fault(Fault.endless(), patient="pat-2")

    run = run_process(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                      env={**assumed.env(max_response_bytes=CAP), **ONE_ATTEMPT},
                      memory_bytes=MEMORY)

    assert_only_pat_2_failed(run, assumed.too_large_words)
    assert run.elapsed < 30, run.explain()
    sent = [r.bytes_sent for r in server.asked_about("pat-2")]
    assert sent and max(sent) < 64 << 20, sent


def test_a_dripping_server_cannot_hold_the_run_past_its_deadline(
        hostile_server: HostileFhirServer, tmp_path: Path, assumed: AssumedInterface) -> None:
    server = served_day(hostile_server)
    server.connection_deadline = 6.0  # the server gives up after 6 s; previsit must not wait
    server.fault(Fault.drip(0.5), patient="pat-2")  # a byte every 0.5 s: no read timeout

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                  env={**assumed.env(deadline_seconds=1.0), **ONE_ATTEMPT})

    # over by the deadline, with room for a slow machine; well before the server gave up
    assert run.elapsed < 4.5, run.explain()
    assert_only_pat_2_failed(run, assumed.deadline_words)


def test_endless_paging_stops_at_the_search_cap(hostile_server: HostileFhirServer,
                                                tmp_path: Path,
                                                assumed: AssumedInterface) -> None:
    server = served_day(hostile_server)
    server.behaviours.max_count = 10
    server.behaviours.endless_search = {"pat-2": "Observation"}
    server.behaviours.endless_page_bytes = 20_000  # ~20 kB a page: 1 MB is ~50 pages

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                  env=assumed.env(max_search_bytes=1_000_000))

    pages = [r for r in server.requests_to("Observation") if r.param("patient") == ["pat-2"]]
    assert len(pages) <= 60, f"{len(pages)} pages read for one search"
    assert_only_pat_2_failed(run, assumed.too_large_words)


def test_a_body_shorter_than_its_content_length_fails_that_patient_only(
        hostile_server: HostileFhirServer, tmp_path: Path,
        assumed: AssumedInterface) -> None:
    server = served_day(hostile_server)
    server.fault(Fault.lying_length(10_000), patient="pat-2")

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                  env={"PREVISIT_SOURCE_MAX_ATTEMPTS": "2"})

    assert_only_pat_2_failed(run, r"connection|closed|incomplete|failed")
