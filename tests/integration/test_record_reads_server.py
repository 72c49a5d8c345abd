"""How often a night reads each record, against the test server (strict, Medplum-like)
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

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-12-01"


@dataclass
class Clinic:
    server: FhirTestServer
    tmp: Path

    def run(self, out: str, *, cache: bool = False) -> tuple[Path, dict[str, Any]]:
        """One night as cron runs it: (the output folder, the server's counts for it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREVISIT_")}
        if cache:
            env["PREVISIT_SOURCE_CACHE_DIR"] = str(self.tmp / "cache")
        self.server.admin.reset()  # the counters, not the data
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


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    with fhir_test_server() as server:
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
