"""A health system's clinic day from the 40 Synthea patients, at any size, for benchmarks.

    .venv/bin/python bench/synthea_day.py OUT --patients 1000 [--appointments N]
        [--date 2021-01-15] [--timezone America/New_York] [--synthea ../shared/synthea]

Writes a folder that `previsit run --source OUT` reads:
- `patients/<patient id>.json`: one transaction Bundle per patient, a replica of one of
  the Synthea patients (patient n is a copy of template n mod 40) with fresh ids;
- `appointments.json`: one Bundle of booked Appointments spread over the day (08:00 to
  17:00 in the clinic's zone, 15-minute slots, 36 per practitioner), each with a Patient,
  a Practitioner and a Location participant, as sample_bundles/appointments.json;
- `clinic.json`: the Organization, its Practitioners and Locations.

Fresh ids, cheaply. Every id in Synthea output is a UUID, and every reference and fullUrl
is a `urn:uuid:` of one. Replica n replaces the first 8 hex digits of every UUID in its
template with n (as 8 hex digits): fullUrls, ids, references and identifier values all
change together, so references still resolve inside a replica, and no two replicas share
an id (distinct n give distinct prefixes; within one template the remaining 28 digits are
distinct, which `load_templates` checks). Dates and everything clinical are the
template's, byte for byte. Because a replica is `prefix.join(pieces)` of the template's
bytes cut at each UUID, the benchmark FHIR server (fhir_bench_server.py) serves replicas
the same way without holding them.

Deterministic: the same arguments give byte-identical files. Written one file at a time
(and the appointment Bundle one entry at a time), so 10,000 patients (~1.9 GB) are
generated in constant memory.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time as clock
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent

# Synthea writes lower-case RFC 4122 UUIDs.
UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PREFIX_LEN = 8  # hex digits of each UUID that a replica rewrites
MAX_PATIENTS = 16 ** PREFIX_LEN

# Ids of what the generator itself makes (clinic, appointments): UUIDs, as a production
# server (Medplum) requires, derived from this fictional base so they are stable.
BENCH_BASE = "https://bench.previsit.example.org"
VISIT_TYPES = f"{BENCH_BASE}/CodeSystem/visit-type"
APPT_REASON = "http://terminology.hl7.org/CodeSystem/v2-0276"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
NPI = "http://hl7.org/fhir/sid/us-npi"

DEFAULT_DAY = date(2021, 1, 15)  # the Synthea histories end around early 2021 (README)
DEFAULT_TZ = "America/New_York"  # the Synthea patients live in Massachusetts
MANIFEST = "synthea-day.manifest"  # not *.json: previsit's bundle source must not read it


def find_synthea() -> Path | None:
    """../shared/synthea beside the checkout or any folder above it (worktrees, CI)."""
    for parent in ROOT.parents:
        candidate = parent / "shared" / "synthea"
        if candidate.is_dir():
            return candidate
    return None


def split_at_ids(blob: bytes) -> tuple[bytes, ...]:
    """`blob` cut at every UUID, each UUID's first 8 hex digits dropped.

    `prefix.join(pieces)` is the blob with every UUID's prefix replaced: a replica.
    """
    pieces: list[bytes] = []
    last = 0
    for match in UUID_RE.finditer(blob):
        pieces.append(blob[last:match.start()])
        last = match.start() + PREFIX_LEN
    pieces.append(blob[last:])
    return tuple(pieces)


def replica_prefix(n: int) -> bytes:
    if not 0 <= n < MAX_PATIENTS:
        raise ValueError(f"replica number {n} out of range")
    return b"%08x" % n


def replica_id(n: int, template_uuid: str) -> str:
    """The id that UUID `template_uuid` of a template has in replica n."""
    return replica_prefix(n).decode() + template_uuid[PREFIX_LEN:]


@dataclass(frozen=True)
class Template:
    """One Synthea patient file, kept as its bytes (never as parsed JSON)."""

    index: int
    path: Path
    patient_uuid: str
    patient_name: str
    pieces: tuple[bytes, ...]  # the file's bytes cut at each UUID (split_at_ids)

    def replica(self, n: int) -> bytes:
        return replica_prefix(n).join(self.pieces)


def _patient_of(bundle: dict[str, Any], path: Path) -> dict[str, Any]:
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            return dict(resource)
    raise ValueError(f"{path}: no Patient resource")


def _display_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or ():
        given = " ".join(name.get("given") or ())
        return f"{given} {name.get('family', '')}".strip()
    return "Unnamed patient"


def load_templates(folder: Path) -> list[Template]:
    """The Synthea patient files of `folder`, in name order, checked for replication."""
    templates: list[Template] = []
    owner: dict[bytes, bytes] = {}  # UUID suffix -> the UUID that has it
    for index, path in enumerate(sorted(folder.glob("*.json"))):
        raw = path.read_bytes()
        patient = _patient_of(json.loads(raw), path)
        for found in set(UUID_RE.findall(raw)):
            other = owner.setdefault(found[PREFIX_LEN:], found)
            if other != found:  # two UUIDs would become one id in some replica
                raise ValueError(f"{path}: UUIDs {found.decode()} and {other.decode()} "
                                 "differ only in their first 8 digits; cannot replicate")
        templates.append(Template(index, path, str(patient["id"]), _display_name(patient),
                                  split_at_ids(raw)))
    if not templates:
        raise ValueError(f"{folder}: no Synthea *.json patient files")
    return templates


@dataclass(frozen=True)
class DaySpec:
    """The shape of the generated clinic day."""

    patients: int
    appointments: int  # appointment i is for patient i mod patients
    day: date = DEFAULT_DAY
    timezone: str = DEFAULT_TZ
    slot_minutes: int = 15
    first_hour: int = 8
    slots_per_practitioner: int = 36  # 08:00-17:00 at 15 minutes
    practitioners_per_location: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.patients <= MAX_PATIENTS:
            raise ValueError("patients must be between 1 and 16**8")
        if self.appointments < 0:
            raise ValueError("appointments must not be negative")

    @property
    def practitioners(self) -> int:
        return max(1, -(-self.appointments // self.slots_per_practitioner))

    @property
    def locations(self) -> int:
        return max(1, -(-self.practitioners // self.practitioners_per_location))

    def describe(self) -> dict[str, Any]:
        return {"patients": self.patients, "appointments": self.appointments,
                "day": self.day.isoformat(), "timezone": self.timezone,
                "slot_minutes": self.slot_minutes, "first_hour": self.first_hour,
                "slots_per_practitioner": self.slots_per_practitioner,
                "practitioners_per_location": self.practitioners_per_location}


def stable_id(kind: str, number: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{BENCH_BASE}/{kind}/{number}"))


def patient_id(templates: Sequence[Template], n: int) -> str:
    return replica_id(n, templates[n % len(templates)].patient_uuid)


def organization_id() -> str:
    return stable_id("Organization", 0)


def practitioner_id(number: int) -> str:
    return stable_id("Practitioner", number)


def location_id(number: int) -> str:
    return stable_id("Location", number)


def _npi(number: int) -> str:
    """A 10-digit NPI that passes the Luhn check with the 80840 prefix, as real ones do."""
    body = f"1{number:08d}"
    digits = [int(d) for d in "80840" + body]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:  # the check digit will sit right of these
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return body + str((10 - total % 10) % 10)


def clinic_resources(spec: DaySpec) -> list[dict[str, Any]]:
    org = {"resourceType": "Organization", "id": organization_id(), "active": True,
           "name": "Bench Health System",
           "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                 "organization-type", "code": "prov",
                                 "display": "Healthcare Provider"}]}]}
    resources: list[dict[str, Any]] = [org]
    for p in range(spec.practitioners):
        resources.append({
            "resourceType": "Practitioner", "id": practitioner_id(p), "active": True,
            "identifier": [{"system": NPI, "value": _npi(p)}],
            "name": [{"use": "official", "family": f"Bench{p:05d}", "given": ["Dana"],
                      "suffix": ["MD"], "text": f"Dana Bench{p:05d}, MD"}]})
    for loc in range(spec.locations):
        resources.append({
            "resourceType": "Location", "id": location_id(loc), "status": "active",
            "name": f"Bench Health – Clinic {loc:04d}", "mode": "instance",
            "managingOrganization": {"reference": f"Organization/{organization_id()}"}})
    return resources


def appointment_resources(spec: DaySpec, templates: Sequence[Template]
                          ) -> Iterator[dict[str, Any]]:
    """The day's Appointments, in start order within each practitioner's schedule."""
    tz = ZoneInfo(spec.timezone)
    opening = datetime.combine(spec.day, time(spec.first_hour), tzinfo=tz)
    for i in range(spec.appointments):
        n = i % spec.patients
        template = templates[n % len(templates)]
        prac, slot = divmod(i, spec.slots_per_practitioner)
        loc = prac // spec.practitioners_per_location
        start = opening + timedelta(minutes=slot * spec.slot_minutes)  # wall-clock time
        end = start + timedelta(minutes=spec.slot_minutes)
        yield {
            "resourceType": "Appointment", "id": stable_id("Appointment", i),
            "status": "booked",
            "serviceCategory": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/service-category",
                "code": "17", "display": "General Practice"}]}],
            "serviceType": [{"coding": [{"system": VISIT_TYPES, "code": "follow-up",
                                         "display": "Follow-up visit"}]}],
            "appointmentType": {"coding": [{"system": APPT_REASON, "code": "FOLLOWUP",
                                            "display": "A follow up visit from a previous "
                                                       "appointment"}]},
            "description": "Follow-up visit",
            "start": start.isoformat(), "end": end.isoformat(),
            "minutesDuration": spec.slot_minutes,
            "participant": [
                {"actor": {"reference": f"Patient/{replica_id(n, template.patient_uuid)}",
                           "display": template.patient_name},
                 "required": "required", "status": "accepted"},
                {"type": [{"coding": [{"system": PARTICIPATION, "code": "PPRF",
                                       "display": "primary performer"}]}],
                 "actor": {"reference": f"Practitioner/{practitioner_id(prac)}",
                           "display": f"Dana Bench{prac:05d}, MD"},
                 "required": "required", "status": "accepted"},
                {"actor": {"reference": f"Location/{location_id(loc)}",
                           "display": f"Bench Health – Clinic {loc:04d}"},
                 "required": "required", "status": "accepted"}],
        }


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource,
            "request": {"method": "PUT", "url": url}}


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _write_bundle(path: Path, bundle_id: str, resources: Iterator[dict[str, Any]]) -> int:
    """A transaction Bundle written one entry per line, never whole in memory."""
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write('{"entry":[\n')
        for index, resource in enumerate(resources):
            out.write((",\n" if index else "") + _dumps(_entry(resource)))
        out.write(f'\n],"id":"{bundle_id}","resourceType":"Bundle","type":"transaction"}}\n')
    return path.stat().st_size


@dataclass(frozen=True)
class Generated:
    folder: Path
    files: int
    bytes: int
    seconds: float
    reused: bool


def write_day(spec: DaySpec, templates: Sequence[Template], out: Path) -> Generated:
    """Write the clinic day to `out` (emptied of earlier patient files first)."""
    started = clock.perf_counter()
    patients_dir = out / "patients"
    patients_dir.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written folder has no manifest
    for stale in patients_dir.glob("*.json"):
        stale.unlink()
    size = _write_bundle(out / "clinic.json", "bench-clinic", iter(clinic_resources(spec)))
    size += _write_bundle(out / "appointments.json", "bench-appointments",
                          appointment_resources(spec, templates))
    for n in range(spec.patients):
        path = patients_dir / f"{patient_id(templates, n)}.json"
        data = templates[n % len(templates)].replica(n)
        path.write_bytes(data)
        size += len(data)
    files = spec.patients + 2
    manifest = {**spec.describe(), "templates": [t.path.name for t in templates],
                "files": files, "bytes": size}
    (out / MANIFEST).write_text(_dumps(manifest) + "\n", encoding="utf-8")
    return Generated(out, files, size, clock.perf_counter() - started, reused=False)


def cached_day(spec: DaySpec, templates: Sequence[Template], out: Path) -> Generated:
    """`write_day`, unless `out` already holds exactly this day (its manifest says so)."""
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            manifest = {}
        expected = {**spec.describe(), "templates": [t.path.name for t in templates]}
        if all(manifest.get(k) == v for k, v in expected.items()):
            return Generated(out, int(manifest["files"]), int(manifest["bytes"]), 0.0,
                             reused=True)
    return write_day(spec, templates, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--appointments", type=int, default=None,
                        help="appointments on the day (default: one per patient)")
    parser.add_argument("--date", type=date.fromisoformat, default=DEFAULT_DAY)
    parser.add_argument("--timezone", default=DEFAULT_TZ)
    parser.add_argument("--synthea", type=Path, default=find_synthea(),
                        help="folder of Synthea patient Bundles (default: ../shared/synthea)")
    args = parser.parse_args(argv)
    if args.synthea is None or not args.synthea.is_dir():
        parser.error("no Synthea folder: pass --synthea")
    spec = DaySpec(patients=args.patients,
                   appointments=args.patients if args.appointments is None
                   else args.appointments,
                   day=args.date, timezone=args.timezone)
    templates = load_templates(args.synthea)
    made = write_day(spec, templates, args.out)
    print(f"wrote {made.files} files, {made.bytes / 1e6:.1f} MB "
          f"({made.bytes / spec.patients / 1e3:.0f} KB a patient) to {made.folder} in "
          f"{made.seconds:.1f} s: {spec.patients} patients (replicas of {len(templates)}), "
          f"{spec.appointments} appointments on {spec.day} ({spec.timezone}), "
          f"{spec.practitioners} practitioners, {spec.locations} locations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
