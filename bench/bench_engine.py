"""Engine benchmark: PatientRecord build time and evaluation throughput (all shipped rules).

    .venv/bin/python bench/bench_engine.py [--synthea ../shared/synthea] [--repeat 5]

Uses the Synthea patients in ../shared/synthea when present (real-sized records: hundreds
to thousands of resources each, visit date 2021-01-15, where their histories end), else
records generated here of the same size. Prints:
- resources per record (min / median / max),
- time to build a PatientRecord from raw JSON (ms per record, µs per resource),
- for comparison, full fhir.resources R4B model validation of the same resources
  (µs per resource) — the reason reads are parsed by hand (DESIGN.md),
- evaluation throughput: records per second with every shipped rule.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from previsit.evaluate import evaluate
from previsit.record import build_record
from previsit.ruleset import load_ruleset

ROOT = Path(__file__).resolve().parent.parent
RECORD_TYPES = {"Patient", "Condition", "MedicationRequest", "Medication", "Observation",
                "Procedure", "Immunization", "ServiceRequest"}


def synthea_records(folder: Path) -> list[list[dict[str, Any]]]:
    records = []
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text())
        resources = [e["resource"] for e in bundle.get("entry", [])
                     if e.get("resource", {}).get("resourceType") in RECORD_TYPES]
        # Synthea links by urn:uuid; the record builder does not need the links resolved.
        records.append(resources)
    return records


def generated_records(count: int, seed: int = 7, visits: tuple[int, int] = (20, 60)
                      ) -> list[list[dict[str, Any]]]:
    """Records shaped like Synthea's: ~10 years of vitals and labs, meds, immunizations."""
    rng = random.Random(seed)
    labs = [("4548-4", "%", 5.5, 9.5), ("2823-3", "mmol/L", 3.4, 5.4), ("2160-0", "mg/dL",
            0.6, 1.6), ("18262-6", "mg/dL", 60, 190), ("3016-3", "mIU/L", 0.5, 6),
            ("39156-5", "kg/m2", 19, 40), ("8480-6", "mm[Hg]", 100, 170)]
    out = []
    for n in range(count):
        pid = f"bench-{n}"
        res: list[dict[str, Any]] = [{"resourceType": "Patient", "id": pid,
                                      "gender": rng.choice(["male", "female"]),
                                      "birthDate":
                                          f"{rng.randint(1940, 2000)}-0{rng.randint(1, 9)}-15"}]
        start = date(2011, 1, 1)
        for visit in range(rng.randint(*visits)):
            day = (start + timedelta(days=visit * rng.randint(15, 30))).isoformat()
            for code, unit, lo, hi in labs:
                res.append({"resourceType": "Observation", "id": f"{pid}-o{visit}-{code}",
                            "status": "final", "subject": {"reference": f"Patient/{pid}"},
                            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                            "effectiveDateTime": day,
                            "valueQuantity": {"value": round(rng.uniform(lo, hi), 1),
                                              "unit": unit}})
            res.append({"resourceType": "MedicationRequest", "id": f"{pid}-m{visit}",
                        "status": "completed" if visit < visits[0] else "active",
                        "intent": "order",
                        "subject": {"reference": f"Patient/{pid}"}, "authoredOn": day,
                        "medicationCodeableConcept": {"coding": [{
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "314076", "display": "lisinopril 10 MG Oral Tablet"}]},
                        "dispenseRequest": {"numberOfRepeatsAllowed": 3,
                                            "expectedSupplyDuration": {"value": 30,
                                                                       "code": "d"}}})
            res.append({"resourceType": "Immunization", "id": f"{pid}-i{visit}",
                        "status": "completed", "patient": {"reference": f"Patient/{pid}"},
                        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx",
                                                    "code": "140"}]},
                        "occurrenceDateTime": day})
        res.append({"resourceType": "Condition", "id": f"{pid}-c1",
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                    "subject": {"reference": f"Patient/{pid}"}, "onsetDateTime": "2012-01-01",
                    "code": {"coding": [{"system": "http://snomed.info/sct",
                                         "code": "44054006"}]}})
        out.append(res)
    return out


def model_validation_us_per_resource(records: list[list[dict[str, Any]]], limit: int) -> float:
    from fhir.resources.R4B import get_fhir_model_class

    sample = [r for rec in records for r in rec][:limit]
    started = time.perf_counter()
    for resource in sample:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return (time.perf_counter() - started) / len(sample) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthea", type=Path, default=ROOT.parent / "shared" / "synthea")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--generated", type=int, default=40,
                        help="records to generate when Synthea is not available")
    parser.add_argument("--large", action="store_true",
                        help="use generated records of ~1,000-2,000 resources each")
    args = parser.parse_args()
    if args.large:
        records, origin, visit = generated_records(args.generated, visits=(120, 200)), \
            "generated (large)", date(2021, 1, 15)
    elif args.synthea.is_dir():
        records, origin, visit = synthea_records(args.synthea), f"Synthea ({args.synthea})", \
            date(2021, 1, 15)
    else:
        records, origin, visit = generated_records(args.generated), "generated", \
            date(2021, 1, 15)
    ruleset = load_ruleset()
    sizes = sorted(len(r) for r in records)
    total_resources = sum(sizes)
    print(f"records: {len(records)} from {origin}; resources per record: min {sizes[0]}, "
          f"median {int(statistics.median(sizes))}, max {sizes[-1]} "
          f"(total {total_resources}); rules: {len(ruleset.active)}")

    build_times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        built = [build_record(r) for r in records]
        build_times.append(time.perf_counter() - started)
    best = min(build_times)
    print(f"build PatientRecord: {best / len(records) * 1e3:.2f} ms per record, "
          f"{best / total_resources * 1e6:.1f} µs per resource (best of {args.repeat})")
    validated = model_validation_us_per_resource(records, limit=3000)
    print(f"fhir.resources R4B model_validate, for comparison: {validated:.0f} µs per resource")

    eval_times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        for record in built:
            evaluate(record, ruleset, visit)
        eval_times.append(time.perf_counter() - started)
    best = min(eval_times)
    print(f"evaluate (all {len(ruleset.active)} rules): {len(built) / best:.0f} records/s, "
          f"{best / len(built) * 1e3:.2f} ms per record (best of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
