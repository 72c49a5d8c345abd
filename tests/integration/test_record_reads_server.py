"""How often a night reads each record, against the test server (as Medplum, then as HAPI)
seeded with the sample day: once per patient per run whatever the number of visits and
horizons; and with `source.cache_dir`, the next night revalidates each kept record with
`_lastUpdated` searches and counts instead of reading it again — fewer bytes, the same
plan, and every kind of change (a changed, a new, an entered-in-error and a deleted
resource) in the plan of the night after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirserver import FhirTestServer, fhir_test_server
from nights import change_two_charts, outputs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-12-01"


@dataclass
class Clinic:
    server: FhirTestServer
    tmp: Path

    def run(self, out: str, *, cache: bool = False, fault: dict[str, Any] | None = None
            ) -> tuple[Path, dict[str, Any]]:
        """One night as cron runs it: (the output folder, the server's counts for it);
        `fault`: scripted for this night only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREVISIT_")}
        if cache:
            env["PREVISIT_SOURCE_CACHE_DIR"] = str(self.tmp / "cache")
            # The server and the test share a clock: no overlap, or every night would ask
            # again for everything loaded in the last ten minutes (the whole sample day).
            env["PREVISIT_SOURCE_CACHE_OVERLAP_SECONDS"] = "0"
        self.server.admin.reset()  # the counters (and faults), not the data
        if fault is not None:
            self.server.admin.add_fault(**fault)
        proc = subprocess.run(
            [sys.executable, "-c", "from previsit.cli.app import main; main()", "run",
             "--fhir-url", self.server.base_url, "--date", DAY, "--timezone",
             "America/Chicago", "--quiet", "--out", str(self.tmp / out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
        return self.tmp / out, self.server.admin.stats()

    def fhir(self) -> httpx.Client:
        """The EHR's own changes go through the FHIR API, as the admin."""
        return httpx.Client(base_url=self.server.base_url + "/", timeout=30, headers={
            "Authorization": f"Bearer {self.server.admin_token}"})


@pytest.fixture(scope="module", params=["medplum", "hapi"])
def clinic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Clinic]:
    """The sample day on a server behaving as Medplum does (the default), then as HAPI does
    (its paging links, its error wording)."""
    with fhir_test_server(profile=request.param) as server:
        server.admin.load_folder(ROOT / "sample_bundles")
        yield Clinic(server, tmp_path_factory.mktemp("reads"))


def plan_of(folder: Path) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((folder / "plan.json").read_text())
    return plan


def test_each_record_is_read_once_per_run_for_every_visit_and_both_horizons(
        clinic: Clinic) -> None:
    folder, stats = clinic.run("once")
    plan = plan_of(folder)
    huddle = [v["visit"]["patient_id"] for v in plan["visits"]]
    ahead = [v["visit"]["patient_id"] for v in plan["labs_ahead"]]
    # What makes this a test: patients with two huddle visits, and the three patients of the
    # labs-ahead horizon all have a huddle visit too.
    assert (len(huddle), len(set(huddle)), len(ahead)) == (33, 31, 3)
    assert set(ahead) <= set(huddle)
    assert not any(v["failed"] for v in plan["visits"] + plan["labs_ahead"])
    # metadata, one appointment search (one page), then one batch per patient: 31.
    assert stats["bundles"] == {"batch": 31}
    assert stats["requests"]["by_method"] == {"GET": 2, "POST": 31}
    assert stats["interactions"]["read"] == {"Patient": 31}


def findings(folder: Path, patient: str) -> dict[str, str]:
    return {f["rule_id"]: f["status"] for v in plan_of(folder)["visits"]
            if v["visit"]["patient_id"] == patient for f in v["findings"]}


@pytest.fixture(scope="module")
def nights(clinic: Clinic) -> tuple[tuple[Path, dict[str, Any]], tuple[Path, dict[str, Any]]]:
    """Two nights with the cache and nothing changed between them."""
    return clinic.run("cached-1", cache=True), clinic.run("cached-2", cache=True)


def test_the_next_night_revalidates_kept_records_and_plans_identically(
        clinic: Clinic, nights: tuple[tuple[Path, dict[str, Any]], ...]) -> None:
    (first, full), (second, revalidated) = nights
    assert outputs(second) == outputs(first)
    assert len(plan_of(second)["visits"]) == 33
    # As many requests (one batch a patient), a fraction of the bytes: the Observations,
    # Encounters, … are not sent again, only counted.
    assert full["bundles"] == revalidated["bundles"] == {"batch": 31}
    assert revalidated["requests"]["by_method"] == full["requests"]["by_method"]
    sent = [night["requests"]["bytes_by_method"]["POST"] for night in (full, revalidated)]
    assert sent[1] * 8 < sent[0]  # 3.5 MB and 0.34 MB when written
    # The kept records: one file a patient, private.
    folders = [p for p in (clinic.tmp / "cache").iterdir()]
    assert len(folders) == 1 and folders[0].stat().st_mode & 0o777 == 0o700
    assert (clinic.tmp / "cache").stat().st_mode & 0o777 == 0o700
    files = sorted(folders[0].iterdir())
    assert len(files) == 31
    assert {f.stat().st_mode & 0o777 for f in files} == {0o600}


def test_each_kind_of_change_shows_up_the_next_night(
        clinic: Clinic, nights: tuple[tuple[Path, dict[str, Any]], ...]) -> None:
    (_, _), (before, _) = nights
    with clinic.fhir() as client:
        change_two_charts(client)
        # entered in error: Frank DeLuca's hepatitis C antibody test
        hcv = client.get("Observation/frank-deluca-obs-086").json()
        assert client.put("Observation/frank-deluca-obs-086", json={
            **hcv, "status": "entered-in-error"}).status_code == 200
        # deleted: Maria Lopez's hepatitis C antibody test
        assert client.delete("Observation/maria-lopez-obs-144").status_code == 200
    cached, stats = clinic.run("cached-3", cache=True)
    full, _ = clinic.run("full-3")
    assert outputs(cached) == outputs(full)
    assert findings(before, "pat-walter-kowalski")["warfarin-inr-monitoring"] != "satisfied"
    assert findings(cached, "pat-walter-kowalski")["warfarin-inr-monitoring"] == "satisfied"
    assert findings(before, "pat-susan-greenberg")["levothyroxine-monitoring"] != "satisfied"
    assert findings(cached, "pat-susan-greenberg")["levothyroxine-monitoring"] == "satisfied"
    for patient in ("pat-frank-deluca", "pat-maria-lopez"):
        assert findings(before, patient)["hepatitis-c-screening"] == "satisfied"
        assert findings(cached, patient)["hepatitis-c-screening"] != "satisfied"
    # The deletion is seen in the count: that one record was read again in full.
    assert stats["bundles"] == {"batch": 32}


def test_a_server_refusing_the_revalidation_searches_gets_full_reads(
        clinic: Clinic, nights: tuple[tuple[Path, dict[str, Any]], ...]) -> None:
    """A server without _lastUpdated (the benchmark server answers 400, as Medplum does for
    a parameter it does not know): the records are read in full, nobody fails."""
    full, _ = clinic.run("full-4")
    cached, stats = clinic.run("cached-4", cache=True, fault={
        "in_batch": True, "path": "_lastUpdated=", "status": 400, "times": None})
    clinic.server.admin.reset()
    assert outputs(cached) == outputs(full)
    # 31 full reads, after the revalidations that were in flight when the first was refused
    # (at most source.concurrency: 8).
    assert 31 + 1 <= stats["bundles"]["batch"] <= 31 + 8


def test_an_unreadable_kept_record_is_read_in_full(
        clinic: Clinic, nights: tuple[tuple[Path, dict[str, Any]], ...]) -> None:
    full, _ = clinic.run("full-5")
    [folder] = (clinic.tmp / "cache").iterdir()
    files = sorted(folder.iterdir())
    files[0].write_bytes(b'{"format": 1, "searches": ')  # torn
    files[1].write_bytes(files[2].read_bytes())  # another patient's record
    cached, stats = clinic.run("cached-5", cache=True)
    assert outputs(cached) == outputs(full)
    # One batch a patient: 29 revalidated (two Observation searches: changes, count), the
    # two whose files could not be used read in full (one).
    assert stats["bundles"]["batch"] == 31
    assert stats["interactions"]["search-type"]["Observation"] == 29 * 2 + 2
    assert files[0].read_bytes().startswith(b'{"format":1,')  # kept anew
