"""Planning in worker processes against a real FHIR server: the run's process reads each
record and checks it is the patient's; the worker that plans the patient builds it.

The sample day through the test server (production limits, over HTTP), planned in a pool
of two and in the run's process: the same outputs, byte for byte, and only the second
built records in the run's process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import shipped_rules
from fhirserver import FhirTestServer, fhir_test_server

from previsit import record as record_module
from previsit.config import AuthConfig, Config, SourceConfig
from previsit.record import PatientRecord
from previsit.run import RunOptions, RunResult, run_to_folder
from previsit.sources import VisitWindow
from previsit.sources.http import HttpSource

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_bundles"
WINDOW = VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 2), timezone="America/Chicago")


@pytest.fixture(scope="module")
def server() -> Iterator[FhirTestServer]:
    with fhir_test_server() as started:
        started.admin.load_folder(SAMPLE)
        yield started


def plan_day(server: FhirTestServer, out: Path, processes: int,
             monkeypatch: pytest.MonkeyPatch) -> tuple[RunResult, int]:
    """The day planned (a dry run); how many records the run's process built."""
    built: list[str] = []
    real = record_module.build_record

    def counted(resources: Any) -> PatientRecord:
        record = real(resources)
        built.append(record.patient.id)
        return record

    monkeypatch.setattr(record_module, "build_record", counted)

    async def go() -> RunResult:
        source = HttpSource.from_config(SourceConfig(kind="fhir", base_url=server.base_url),
                                        AuthConfig(), {})
        try:
            result, _, _ = await run_to_folder(
                source, shipped_rules(), RunOptions(window=WINDOW, processes=processes), out,
                minutes_saved=Config().sheets.minutes_saved)
        finally:
            await source.aclose()
        return result

    return asyncio.run(go()), len(built)


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run-report.json"}


def test_records_read_from_a_server_are_built_where_they_are_planned(
        server: FhirTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pooled, built_here = plan_day(server, tmp_path / "pooled", 2, monkeypatch)
    alone, built_alone = plan_day(server, tmp_path / "alone", 0, monkeypatch)
    assert (built_here, built_alone) == (0, 31)  # the sample day's 31 patients
    assert [(r.report.visits.planned, r.report.visits.failed) for r in (pooled, alone)] \
        == [(33, 0), (33, 0)]
    assert outputs(tmp_path / "pooled") == outputs(tmp_path / "alone")
