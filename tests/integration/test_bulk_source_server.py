"""The Bulk Data source against the test server's $export: the sample day planned through a
Group export of the clinic's panel is the day planned by search, file for file; the next
night exports only what changed since the first export's transactionTime, and still plans
exactly what search plans.

The server is the strict (Medplum-like) one, seeded as the admin; it requires a bearer
token (so the manifest says requiresAccessToken and every file is fetched with it),
answers two status polls with 202 before the manifest, and writes at most 1,000 resources
a file (the sample's Observations span three files).
"""

from __future__ import annotations

import json
import os
import secrets
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
SAMPLE = ROOT / "sample_bundles"
DAY = "2026-12-01"
GROUP = "riverside-panel"
TOKEN_ENV = "FHIR_TEST_TOKEN"
TYPES = ["Patient", "Condition", "MedicationRequest", "Medication", "Observation",
         "Procedure", "Immunization", "ServiceRequest", "Encounter", "MedicationDispense",
         "MedicationStatement"]


def previsit(*args: str | Path, token: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVISIT_")}
    env[TOKEN_ENV] = token
    return subprocess.run([sys.executable, "-c", "from previsit.cli.app import main; main()",
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@dataclass
class Night:
    server: FhirTestServer
    tmp: Path

    def config(self, kind: str) -> Path:
        path = self.tmp / f"{kind}.toml"
        path.write_text("\n".join([
            "[source]", f'kind = "{kind}"', f'base_url = "{self.server.base_url}"',
            'timezone = "America/Chicago"', "",
            "[auth]", 'method = "bearer"', f'token_env = "{TOKEN_ENV}"', "",
            "[bulk]", f'group_id = "{GROUP}"', f'state_folder = "{self.tmp / "bulk-state"}"',
            ""]), encoding="utf-8")
        return path

    def run(self, kind: str, out: str) -> Path:
        assert self.server.token is not None
        proc = previsit("run", "--config", self.config(kind), "--date", DAY, "--out",
                        self.tmp / out, "--quiet", token=self.server.token)
        assert proc.returncode == 0, shown(proc)
        return self.tmp / out

    def client(self, *, admin: bool = False) -> httpx.Client:
        """A client of the server; as the admin, it may change the data as the EHR would."""
        token = self.server.admin_token if admin else self.server.token
        return httpx.Client(base_url=self.server.base_url + "/", timeout=30, headers={
            "Authorization": f"Bearer {token}"})

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.server.admin.stats()["bulk"]["jobs"]
        return jobs


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    token = secrets.token_urlsafe(16)
    with fhir_test_server(token=token, export_polls=2, export_retry_after_s=0,
                          export_file_lines=1000) as server:
        tonight = Night(server, tmp_path_factory.mktemp("bulk"))
        server.admin.load_folder(SAMPLE)  # the sample's ids, on a strict server
        with tonight.client() as client:
            patients = client.get("Patient", params={"_count": "500"}).json()["entry"]
        members = sorted(e["resource"]["id"] for e in patients)
        server.admin.load({"resourceType": "Bundle", "type": "transaction", "entry": [{
            "request": {"method": "PUT", "url": f"Group/{GROUP}"},
            "resource": {"resourceType": "Group", "id": GROUP, "type": "person", "actual": True,
                         "name": "Riverside Family Medicine panel",
                         "member": [{"entity": {"reference": f"Patient/{m}"}}
                                    for m in members]}}]})
        yield tonight


@pytest.fixture(scope="module")
def first(night: Night) -> tuple[Path, Path]:
    """The first night: (planned by search, planned from a full export)."""
    return night.run("fhir", "search-1"), night.run("bulk", "bulk-1")


def test_the_export_plans_the_sample_day_exactly_as_search_does(first: tuple[Path, Path]
                                                                ) -> None:
    search, bulk = first
    by_search, by_export = outputs(search), outputs(bulk)
    assert sorted(by_export) == sorted(by_search)
    assert len([n for n in by_search if n.startswith("sheets/")]) == 33
    for name, data in by_search.items():
        assert by_export[name] == data, name
    plan = json.loads((bulk / "plan.json").read_text())
    assert len(plan["visits"]) == 33 and not any(v.get("failed") for v in plan["visits"])
    assert len(plan["labs_ahead"]) == 3  # the pre-visit labs of the days further out


def test_the_first_night_is_one_full_export_of_the_panel(night: Night,
                                                         first: tuple[Path, Path]) -> None:
    [job] = night.jobs()
    assert (job["level"], job["group"], job["types"], job["since"]) == (
        "group", GROUP, TYPES, None)
    assert job["status"] == "deleted"  # fetched, then released
    assert job["polls"] == 3  # two 202s, then the manifest
    assert job["output"]["Patient"] == 31  # every member of the panel
    assert job["output"]["Medication"] == 1  # referenced by a MedicationRequest
    assert job["output"]["Observation"] > 2000  # three files
    state = json.loads((night.tmp / "bulk-state" / "state.json").read_text())
    assert state["since"] == state["full_at"]
    search, bulk = first
    requests = [json.loads((f / "run-report.json").read_text())["http_requests"]
                for f in (search, bulk)]
    assert requests[1] < requests[0]  # one export instead of a batch per patient


def test_the_next_night_exports_only_what_changed_and_plans_as_search_does(
        night: Night, first: tuple[Path, Path]) -> None:
    since = json.loads((night.tmp / "bulk-state" / "state.json").read_text())["since"]
    with night.client(admin=True) as client:
        change_two_charts(client)
    search, bulk = night.run("fhir", "search-2"), night.run("bulk", "bulk-2")

    job = night.jobs()[-1]
    assert job["since"] == since
    assert job["output"] == {"Observation": 2}  # only what changed
    assert outputs(bulk) == outputs(search)
    findings = {(v["visit"]["appointment_id"], f["rule_id"]): f["status"]
                for v in json.loads((bulk / "plan.json").read_text())["visits"]
                for f in v["findings"]}
    assert findings[("appt-1201-0800-kowalski", "warfarin-inr-monitoring")] == "satisfied"
    assert findings[("appt-1201-0920-greenberg", "levothyroxine-monitoring")] == "satisfied"
    state = json.loads((night.tmp / "bulk-state" / "state.json").read_text())
    assert state["full_at"] == since and state["since"] > since


def test_an_export_that_fails_leaves_every_record_to_search(
        night: Night, first: tuple[Path, Path]) -> None:
    state = (night.tmp / "bulk-state" / "state.json").read_bytes()
    night.server.admin.add_fault(method="GET", path=r"^/bulk/jobs/[0-9a-f-]+$", status=404,
                                 times=None)
    try:
        search, bulk = night.run("fhir", "search-3"), night.run("bulk", "bulk-3")
    finally:
        night.server.admin.clear_faults()
    by_search, by_export = outputs(search), outputs(bulk)
    report = json.loads(by_export.pop("run-report.json"))
    problem, *rest = report.pop("source_problems")
    assert rest == json.loads(by_search["run-report.json"])["source_problems"]  # the deceased
    assert problem["where"] == f"bulk export of Group/{GROUP}"
    assert problem["message"].startswith(
        "the server's bulk export failed — polling the bulk export: HTTP 404")
    assert problem["message"].endswith("; every record was read by search instead")
    assert report == {k: v for k, v in json.loads(by_search.pop("run-report.json")).items()
                      if k != "source_problems"}
    assert by_export == by_search  # the same plan, sheets and transactions
    assert night.jobs()[-1]["status"] == "cancelled"  # the failed job was deleted
    assert (night.tmp / "bulk-state" / "state.json").read_bytes() == state
