"""HTTP source benchmark: round trips per planned appointment, appointments per second.

    .venv/bin/python bench/bench_http.py [--bundles sample_bundles] [--latency-ms 50]
                                         [--concurrency 8] [--synthetic 40]

Starts the in-memory test FHIR server (tests/fhir_server) with added latency on every
response, loads the sample clinic day (sample_bundles/: transaction Bundles, collection
Bundles and NDJSON) — or, when that folder has no data, `--synthetic` generated patients
with appointments on the same day — then reads the appointment window and every
patient's record as `previsit run` does (HttpSource, each patient once), at concurrency 1
and at the configured default, with batch reads and without. Prints one row per setting:
HTTP requests, requests per planned appointment, wall time, appointments per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fhirserver import running_fhir_server  # type: ignore[import-not-found]  # noqa: E402

from previsit.config import SourceConfig  # noqa: E402
from previsit.errors import PatientReadError  # noqa: E402
from previsit.sources import VisitWindow  # noqa: E402
from previsit.sources.http import HttpSource, RetryPolicy  # noqa: E402

DAY = date(2026, 12, 1)  # the sample clinic day (sample_bundles/generate.py)
TZ = "America/Chicago"
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


# --- loading -------------------------------------------------------------------------------


def transactions_from_folder(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, transaction Bundle) for every usable file; reference data first."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                print(f"  skipped {path.relative_to(folder)}: not JSON")
                continue
            if isinstance(data, dict) and data.get("resourceType") == "Bundle":
                out.append((str(path.relative_to(folder)), as_transaction(data)))
            elif isinstance(data, dict) and isinstance(data.get("resourceType"), str):
                out.append((str(path.relative_to(folder)), transaction_of([data])))
        elif path.suffix == ".ndjson":
            resources = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    resources.append(json.loads(line))
                except ValueError:
                    continue
            out.append((str(path.relative_to(folder)), transaction_of(resources)))
    # Practitioners, locations and patients before what refers to them.
    order = {"clinic": 0, "patients": 1}
    out.sort(key=lambda item: (order.get(Path(item[0]).parts[0].split(".")[0], 2), item[0]))
    return out


def as_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    if bundle.get("type") in ("transaction", "batch"):
        return bundle
    return transaction_of([e["resource"] for e in bundle.get("entry") or ()
                           if isinstance(e, dict) and isinstance(e.get("resource"), dict)])


def transaction_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for resource in resources:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        request = {"method": "PUT", "url": f"{rtype}/{rid}"} if rid else \
            {"method": "POST", "url": str(rtype)}
        entries.append({"resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def synthetic_transactions(patients: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """Patients with histories of realistic size, each with a visit on DAY."""
    rng = random.Random(seed)
    tz = ZoneInfo(TZ)
    clinic = transaction_of([
        {"resourceType": "Practitioner", "id": "bench-dr", "name": [{"family": "Bench"}]},
        {"resourceType": "Location", "id": "bench-room", "name": "Room 1"}])
    out = [("synthetic clinic", clinic)]
    for n in range(patients):
        pid = f"bench-p{n}"
        subject = {"reference": f"Patient/{pid}"}
        resources: list[dict[str, Any]] = [{
            "resourceType": "Patient", "id": pid, "gender": rng.choice(["female", "male"]),
            "birthDate": f"{rng.randrange(1940, 2000)}-0{rng.randrange(1, 10)}-15"}]
        for i in range(rng.choice([20, 60, 150])):  # some histories span several pages
            resources.append({
                "resourceType": "Observation", "id": f"{pid}-obs{i}", "status": "final",
                "subject": subject, "effectiveDateTime": (DAY - timedelta(days=30 * i))
                .isoformat(), "code": {"coding": [{"system": "http://loinc.org",
                                                   "code": rng.choice(["4548-4", "2093-3",
                                                                       "2160-0", "8480-6"])}]},
                "valueQuantity": {"value": round(rng.uniform(4, 200), 1)}})
        for i in range(5):
            resources.append({"resourceType": "Condition", "id": f"{pid}-c{i}",
                              "subject": subject, "code": {"text": f"condition {i}"}})
            resources.append({"resourceType": "MedicationRequest", "id": f"{pid}-m{i}",
                              "status": "active", "intent": "order", "subject": subject,
                              "medicationCodeableConcept": {"text": f"drug {i}"}})
            resources.append({"resourceType": "Immunization", "id": f"{pid}-i{i}",
                              "status": "completed", "patient": subject,
                              "vaccineCode": {"text": "flu"},
                              "occurrenceDateTime": f"{2020 + i}-10-01"})
        start = datetime.combine(DAY, datetime.min.time(), tz) + timedelta(
            hours=8, minutes=15 * n)
        resources.append({
            "resourceType": "Appointment", "id": f"bench-a{n}", "status": "booked",
            "start": start.isoformat(), "end": (start + timedelta(minutes=15)).isoformat(),
            "participant": [{"actor": subject, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/bench-dr"},
                             "status": "accepted"}]})
        out.append((pid, transaction_of(resources)))
    return out


async def load(base_url: str, transactions: list[tuple[str, dict[str, Any]]]) -> int:
    loaded = 0
    async with httpx.AsyncClient(timeout=120) as client:
        for name, bundle in transactions:
            response = await client.post(base_url, json=bundle, headers=HEADERS)
            if response.status_code != 200:
                print(f"  {name}: not loaded (HTTP {response.status_code}): "
                      f"{response.text[:300]}")
                continue
            loaded += len(bundle.get("entry") or ())
    return loaded


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    appointments: int
    patients: int
    failed: int
    requests: int
    seconds: float

    def __str__(self) -> str:
        per = self.requests / self.appointments if self.appointments else float("nan")
        rate = self.appointments / self.seconds if self.seconds else float("nan")
        return (f"{self.label:<28} {self.appointments:>5} {self.patients:>8} {self.failed:>6} "
                f"{self.requests:>8} {per:>9.2f} {self.seconds:>8.2f} {rate:>9.1f}")


HEADER = (f"{'setting':<28} {'appts':>5} {'patients':>8} {'failed':>6} {'requests':>8} "
          f"{'req/appt':>9} {'seconds':>8} {'appts/s':>9}")


async def measure(base_url: str, *, concurrency: int, use_batch: bool, label: str) -> Row:
    window = VisitWindow(DAY, DAY + timedelta(days=1), timezone=TZ)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
            max_connections=concurrency * 2)) as client:
        source = HttpSource(client, base_url, concurrency=concurrency, use_batch=use_batch,
                            retry=RetryPolicy(max_attempts=2))
        started = time.perf_counter()
        visits = await source.appointments(window)
        patient_ids = list(dict.fromkeys(v.patient_id for v in visits))
        gate = asyncio.Semaphore(concurrency)  # as previsit.run reads records

        async def one(pid: str) -> bool:
            async with gate:
                try:
                    await source.patient_record(pid)
                except PatientReadError:
                    return False
                return True

        results = await asyncio.gather(*(one(pid) for pid in patient_ids))
        seconds = time.perf_counter() - started
        return Row(label, len(visits), len(patient_ids), results.count(False),
                   source.request_count, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=ROOT / "sample_bundles")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=SourceConfig().concurrency)
    parser.add_argument("--synthetic", type=int, default=40,
                        help="patients to generate when --bundles has no data")
    args = parser.parse_args(argv)

    transactions = transactions_from_folder(args.bundles) if args.bundles.is_dir() else []
    source_words = f"{args.bundles}"
    if not transactions:
        transactions = synthetic_transactions(args.synthetic)
        source_words = f"{args.synthetic} synthetic patients"
    # lenient: the benchmark loads the sample day by PUT with its readable ids
    with running_fhir_server(latency_ms=args.latency_ms, profile="lenient") as base_url:
        loaded = asyncio.run(load(base_url, transactions))
        print(f"test FHIR server, {args.latency_ms} ms added per response; loaded {loaded} "
              f"resources from {source_words}\n")
        print(HEADER)
        for concurrency, use_batch in ((1, True), (args.concurrency, True),
                                       (1, False), (args.concurrency, False)):
            label = f"concurrency {concurrency}, {'batch' if use_batch else 'no batch'}"
            print(asyncio.run(measure(base_url, concurrency=concurrency, use_batch=use_batch,
                                      label=label)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
