"""Write-back with its own bound, against the test server with latency: the sample day's
transactions are sent several at a time (at most `write_concurrency`), and the outputs are
byte for byte those of a run that writes one transaction at a time.

The server is emptied and reloaded (the sample day, with its ids) before each run, so both
runs see the same data and write the same proposals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import shipped_rules
from fhirserver import FhirTestServer, fhir_test_server

from previsit.config import AuthConfig, Config, SourceConfig
from previsit.run import RunOptions, RunResult, run_to_folder
from previsit.sources import VisitWindow, WriteResult
from previsit.sources.http import HttpSource

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_bundles"
WINDOW = VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 2), timezone="America/Chicago")


@pytest.fixture(scope="module")
def slow_server() -> Iterator[FhirTestServer]:
    with fhir_test_server(latency_ms=150) as server:
        yield server


class Watched:
    """Counts the transactions a run has in flight at once through a real HttpSource."""

    def __init__(self, source: HttpSource) -> None:
        self.in_flight = self.most = self.sent = 0
        self._write = source.write_transaction
        source.write_transaction = self.write  # type: ignore[method-assign]

    async def write(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        self.in_flight += 1
        self.sent += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await self._write(bundle, key=key)
        finally:
            self.in_flight -= 1


def write_day(server: FhirTestServer, out: Path, write_concurrency: int
              ) -> tuple[RunResult, Watched, float]:
    server.admin.reset(data=True)
    server.admin.load_folder(SAMPLE)

    async def go() -> tuple[RunResult, Watched, float]:
        source = HttpSource.from_config(SourceConfig(kind="fhir", base_url=server.base_url),
                                        AuthConfig(), {})
        watched = Watched(source)
        options = RunOptions(window=WINDOW, write_back=True,
                             write_concurrency=write_concurrency)
        started = time.perf_counter()
        try:
            result, _, _ = await run_to_folder(
                source, shipped_rules(), options, out,
                minutes_saved=Config().sheets.minutes_saved)
        finally:
            await source.aclose()
        return result, watched, time.perf_counter() - started

    return asyncio.run(go())


def files(out: Path) -> dict[str, bytes]:
    """Every output but the run report (its timings and request count vary)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run-report.json"}


def test_write_back_runs_concurrently_within_its_bound_and_writes_what_a_serial_run_writes(
        slow_server: FhirTestServer, tmp_path: Path) -> None:
    serial, one_at_a_time, serial_seconds = write_day(slow_server, tmp_path / "serial", 1)
    together, three_at_a_time, seconds = write_day(slow_server, tmp_path / "together", 3)

    assert one_at_a_time.most == 1
    assert three_at_a_time.most in (2, 3)
    assert three_at_a_time.sent == one_at_a_time.sent == serial.bundle_count == 32
    assert seconds < serial_seconds
    for result in (serial, together):
        assert result.exit_code == 0
        assert result.report.visits.planned == 33
        assert result.report.proposals.created == 149
    assert files(tmp_path / "together") == files(tmp_path / "serial")
    assert together.report.to_json() | {"timings": {}, "http_requests": 0} == \
        serial.report.to_json() | {"timings": {}, "http_requests": 0}
