"""What a nightly run logs at INFO carries no patient names, birth dates or identifiers.

The run's stderr ends up in cron mail, systemd journals and log shippers; only counts and
resource types belong there. Identifiers appear at DEBUG (--verbose) only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_bundles"


def patient_secrets() -> set[str]:
    """Names, birth dates, MRNs and ids of every sample patient."""
    found: set[str] = set()
    for path in (SAMPLE / "patients").glob("*.json"):
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "Patient":
                continue
            found.add(resource["id"])
            if resource.get("birthDate"):
                found.add(resource["birthDate"])
            for name in resource.get("name", []):
                found.update(p for p in [name.get("family"), *name.get("given", [])] if p)
            found.update(i["value"] for i in resource.get("identifier", []) if i.get("value"))
    return {s for s in found if len(s) >= 4}  # "Li" or "Jo" would match ordinary words


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    previsit = Path(sys.executable).parent / "previsit"  # the installed console script
    return subprocess.run([str(previsit), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def broken_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample day plus input that makes the run log problems about patients."""
    folder = tmp_path_factory.mktemp("data") / "bundles"
    shutil.copytree(SAMPLE, folder)
    (folder / "truncated.json").write_text('{"resourceType": "Bundle", "entry": [', "utf-8")
    # a resource of a real patient that does not parse: a problem naming that patient
    (folder / "bad.ndjson").write_text(json.dumps({
        "resourceType": "Observation", "id": "obs-bad", "status": "final",
        "subject": {"reference": "Patient/pat-maria-lopez"},
        "effectiveDateTime": "not-a-date", "code": {"text": "x"}}) + "\n", "utf-8")
    return folder


def test_info_logs_of_a_run_with_problems_name_no_patient(broken_sample: Path,
                                                           tmp_path: Path) -> None:
    result = run_cli("run", "--source", str(broken_sample), "--date", "2026-12-01",
                     "--timezone", "America/Chicago", "--out", str(tmp_path / "out"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "planning 33 appointments" in result.stderr  # the log is there, at INFO
    report = json.loads((tmp_path / "out" / "run-report.json").read_text("utf-8"))
    assert len(report["source_problems"]) >= 1  # the problems were seen and reported
    leaked = sorted(s for s in patient_secrets() if s in result.stderr)
    assert leaked == []


def test_the_patient_secrets_check_can_find_a_leak(broken_sample: Path, tmp_path: Path) -> None:
    # The same run at DEBUG may name ids; if it does, the check above would have caught them
    # at INFO — this keeps the check honest (it is not vacuous).
    secrets = patient_secrets()
    assert "pat-maria-lopez" in secrets
    result = run_cli("explain", "--source", str(broken_sample), "--patient", "pat-maria-lopez",
                     "--date", "2026-12-01", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(s in result.stdout for s in secrets)  # explain prints the patient id
