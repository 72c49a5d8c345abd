"""CDS Hooks latency: an `appointment-book` call answered from prefetch, end to end.

    .venv/bin/python bench/bench_cds.py [--synthea ../shared/synthea] [--calls 300]

CDS clients give a service a few hundred milliseconds; previsit's target is under 200 ms at
the 95th percentile for a realistic record of 1,000+ resources. The record is Synthea's
largest patient in ../shared/synthea (real coding: RxNorm clinical drugs, LOINC panels,
SNOMED, CVX), topped up to 1,200 resources with the Observations of the next-largest
Synthea patients re-attributed to it (the same realistic codes and values, more history);
without ../shared/synthea, a generated record of the same size (bench_engine.py).

Each call goes through the whole ASGI app in-process, as an EHR's request does: the signed
JWT verified (ES384, fresh jti), the JSON body parsed, the record built from the prefetch,
every shipped rule evaluated, the proposals built and validated, the cards rendered and
remembered for feedback in the SQLite state database. Prints p50 / p95 / max and the
record's size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from previsit.config import load_config
from previsit.web.app import create_app
from previsit.web.cds import SERVICES

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_engine import RECORD_TYPES, generated_records  # noqa: E402

APP_URL = "http://127.0.0.1:8400"
SERVICE = "previsit-appointment-book"
EHR_ISS = "https://ehr.bench.example"
EHR_JWKS = "https://ehr.bench.example/jwks.json"
TARGET_RESOURCES = 1200
VISIT = "2021-01-20T10:00:00-06:00"  # Synthea histories end around early 2021
NOW = datetime(2021, 1, 15, 17, 0, tzinfo=ZoneInfo("America/Chicago")).timestamp()


def synthea_record(folder: Path) -> list[dict[str, Any]]:
    """The largest Synthea patient, topped up with other patients' Observations."""
    patients = []
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        resources = [e["resource"] for e in bundle.get("entry", [])
                     if e.get("resource", {}).get("resourceType") in RECORD_TYPES]
        patients.append(resources)
    patients.sort(key=len, reverse=True)
    record = [dict(r) for r in patients[0]]
    patient_id = next(r["id"] for r in record if r["resourceType"] == "Patient")
    for other in patients[1:]:
        for resource in other:
            if len(record) >= TARGET_RESOURCES:
                return record
            if resource["resourceType"] == "Observation":
                record.append({**resource, "id": f"{resource['id']}-x",
                               "subject": {"reference": f"Patient/{patient_id}"}})
    return record


def as_prefetch(record: list[dict[str, Any]]) -> dict[str, Any]:
    """The record as an EHR prefetches it for previsit's templates (Synthea's urn:uuid
    references made Patient/<id>, as a FHIR server's search results have them)."""
    patient = next(r for r in record if r["resourceType"] == "Patient")
    text = json.dumps(record)
    text = text.replace(f"urn:uuid:{patient['id']}", f"Patient/{patient['id']}")
    resources = json.loads(text)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        kind = resource["resourceType"]
        key = "medicationRequest" if kind == "Medication" else kind[0].lower() + kind[1:]
        if resource.get("subject", {}).get("reference", "").startswith("urn:uuid:"):
            resource["subject"] = {"reference": f"Patient/{patient['id']}"}
        if resource.get("patient", {}).get("reference", "").startswith("urn:uuid:"):
            resource["patient"] = {"reference": f"Patient/{patient['id']}"}
        by_key.setdefault(key, []).append(resource)
    prefetch: dict[str, Any] = {"patient": next(r for r in resources
                                                if r["resourceType"] == "Patient")}
    for key in SERVICES[SERVICE].prefetch:
        if key != "patient":
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset",
                             "entry": [{"resource": r} for r in by_key.get(key, [])]}
    return prefetch


def request_body(prefetch: dict[str, Any]) -> bytes:
    patient_id = prefetch["patient"]["id"]
    appointment = {"resourceType": "Appointment", "id": "bench-appt", "status": "proposed",
                   "start": VISIT, "participant": [
                       {"actor": {"reference": f"Patient/{patient_id}"}},
                       {"actor": {"reference": "Practitioner/bench"}}]}
    return json.dumps({
        "hookInstance": str(uuid.uuid4()), "hook": "appointment-book",
        "fhirServer": "https://ehr.bench.example/fhir",
        "context": {"userId": "Practitioner/bench", "patientId": patient_id,
                    "appointments": {"resourceType": "Bundle", "type": "collection",
                                     "entry": [{"resource": appointment}]}},
        "prefetch": prefetch}).encode("utf-8")


async def measure(body: bytes, calls: int, folder: Path) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds per call (CPU time: what the call costs whatever
    else the machine is doing)."""
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "bench", "alg": "ES384"}
    config_file = folder / "previsit.toml"
    config_file.write_text(
        '[source]\ntimezone = "America/Chicago"\n\n[web]\nstate_db = "state.sqlite3"\n'
        f'keyring_file = "web.keys"\n\n[[web.cds_issuers]]\niss = "{EHR_ISS}"\n'
        f'jwks_url = "{EHR_JWKS}"\n', encoding="utf-8")
    jwks = httpx.MockTransport(lambda request: httpx.Response(200, json={"keys": [jwk]}))
    app = create_app(load_config(config_file, env={}), env={}, plan_clock=lambda: NOW,
                     http=httpx.AsyncClient(transport=jwks))
    gc.freeze()  # as the app's lifespan does at start-up (httpx's ASGI transport has none)
    url = f"{APP_URL}/cds-services/{SERVICE}"
    timings = []
    cpu = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=APP_URL) as client:
        for _ in range(calls + 5):  # the first calls warm caches (JWKS, rules)
            now = int(time.time())
            token = jwt.encode({"iss": EHR_ISS, "aud": url, "iat": now, "exp": now + 300,
                                "jti": str(uuid.uuid4())}, key, algorithm="ES384",
                               headers={"kid": "bench"})
            started, started_cpu = time.perf_counter(), time.process_time()
            response = await client.post(url, content=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
            if response.status_code != 200 or not response.json()["cards"]:
                raise SystemExit(f"unexpected answer {response.status_code}: "
                                 f"{response.text[:300]}")
    return timings[5:], cpu[5:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthea", type=Path, default=ROOT.parent / "shared" / "synthea")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    if args.synthea.is_dir():
        record, origin = synthea_record(args.synthea), f"Synthea ({args.synthea})"
    else:
        record, origin = generated_records(1, visits=(150, 150))[0], "generated"
    prefetch = as_prefetch(record)
    body = request_body(prefetch)
    with tempfile.TemporaryDirectory() as folder:
        timings, cpu = asyncio.run(measure(body, args.calls, Path(folder)))
    load = os.getloadavg()[0]
    print(f"record: {len(record)} resources from {origin}; request body "
          f"{len(body) / 1e6:.1f} MB")
    for what, values in (("wall-clock", timings), ("CPU", cpu)):
        values.sort()
        p95 = values[max(0, int(len(values) * 0.95) - 1)]
        print(f"appointment-book from prefetch, {len(values)} calls, {what}: "
              f"p50 {statistics.median(values):.1f} ms, p95 {p95:.1f} ms, "
              f"max {values[-1]:.1f} ms (target p95 < 200 ms)")
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
