"""What the integration tests of whole nights share: the outputs two runs are compared by,
and the chart changes made on the server between two nights."""

from __future__ import annotations

import json
from pathlib import Path

import httpx


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output file as two runs of the same day are compared: the report without the
    figures that legitimately differ (timings; HTTP requests: an export is not a search, a
    revalidation not a read)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "run-report.json":
            report = json.loads(data)
            report.pop("timings")
            report.pop("http_requests")
            data = json.dumps(report, sort_keys=True).encode()
        files[path.relative_to(folder).as_posix()] = data
    return files


def change_two_charts(client: httpx.Client) -> None:
    """Between two nights: Walter Kowalski's last INR redated into the monitoring interval
    (an update of a resource the server holds), and a new TSH result for Susan Greenberg."""
    inrs = client.get("Observation", params={
        "patient": "pat-walter-kowalski", "code": "http://loinc.org|6301-6",
        "_sort": "-date", "_count": "1"}).json()["entry"]
    inr = {**inrs[0]["resource"], "effectiveDateTime": "2026-11-28T09:00:00-06:00"}
    assert client.put(f"Observation/{inr['id']}", json=inr).status_code == 200
    assert client.put("Observation/greenberg-tsh-new", json={
        "resourceType": "Observation", "id": "greenberg-tsh-new", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "3016-3"}]},
        "subject": {"reference": "Patient/pat-susan-greenberg"},
        "effectiveDateTime": "2026-11-20T09:00:00-06:00",
        "valueQuantity": {"value": 2.1, "unit": "mIU/L"}}).status_code == 201
