"""A Source over a folder of FHIR R4 JSON Bundles and NDJSON files (no server needed).

Reads every *.json (a Bundle of any type, or a single resource) and *.ndjson (one
resource per line) below the folder. Input it cannot use (bad JSON, an entry that is not a
resource, a duplicate id) is recorded as a SourceProblem naming the file and position, and
skipped: one bad file never stops a run.

The folder is read twice, so that memory does not grow with its size. The first use scans
it once and keeps only an index: which files hold each patient's resources, the items set
aside as duplicates (by position in their file; found with 8 bytes a resource, `_Seen`),
where the Appointments are (`appointments()` reads those again), the Medications (small),
and the identifiers conditional creates are checked against; every problem is found then.
`patient_record(pid)` reads that patient's files again, keeps what the scan kept for them,
builds the record and drops the files' contents; a patient split over several files is
read from each. A file holding resources of several patients (a registry's NDJSON, a
bulk export by type) would be read again for each of them, so the scan keeps those
resources instead: such a folder costs the memory it always did, one file a patient
(Synthea, synthea_day.py, sample_bundles/patients) is streamed.

For a process pool: `record_loader(pid)` gives a `RecordLoader`, a small picklable value
(the patient id, file paths, positions set aside, Medication files) whose `load()` builds
the same record as `patient_record(pid)`, without the source object, in any process:

    loader = source.record_loader(pid)        # in the parent, after appointments()
    record = pool.submit(load_record, loader)  # load_record(loader) == loader.load()

Both raise PatientReadError when the patient has no Patient resource in the folder or the
record cannot be built. After the scan the source is read-only, so `patient_record` may run
concurrently (the scan itself is guarded by a lock).
"""

from __future__ import annotations

import functools
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from previsit.appointments import in_window, sort_visits, visit_from_appointment
from previsit.errors import AppointmentError, PatientReadError, RecordError, SourceError
from previsit.jsonio import collector_paused
from previsit.plan import Visit
from previsit.record import RECORD_SEARCHES, PatientRecord, build_record
from previsit.references import patient_id
from previsit.sources import SourceProblem, VisitWindow, WriteResult
from previsit.sources.folder import folder_files, read_file

# Where each resource type points at its patient (FHIR R4 Patient compartment, the parts
# previsit reads).
_PATIENT_FIELDS = ("subject", "patient", "beneficiary")
_PATIENT_TYPES = frozenset({*(rtype for rtype, _ in RECORD_SEARCHES), "DiagnosticReport",
                            "AllergyIntolerance"})


# A file's resources name their patient hundreds of times in the same words.
_local_patient = functools.lru_cache(maxsize=4096)(patient_id)


def _patient_of(resource: Mapping[str, Any], aliases: Mapping[str, str]) -> str | None:
    """The patient a resource belongs to: `Patient/<id>` (or a fullUrl standing for one),
    read as appointments are (references.patient_id)."""
    for name in _PATIENT_FIELDS:
        ref = resource.get(name)
        reference = ref.get("reference") if isinstance(ref, dict) else None
        pid = _local_patient(aliases.get(reference, reference)) \
            if isinstance(reference, str) else None
        if pid is not None:
            return pid
    return None


class _Placed(NamedTuple):
    """Where one resource of the folder goes: the patient it is part of (`owner`), or why
    it is set aside (`problem`). Decided the same way by the scan and by a re-read (made
    for every resource twice a run: a tuple, not a dataclass)."""

    resource: dict[str, Any]
    owner: str | None = None
    problem: str | None = None


def _place(resource: dict[str, Any], aliases: Mapping[str, str]) -> _Placed:
    """The owner of a Patient or of a resource of a patient's record (references through
    the Bundle's fullUrls made Type/id for medicationReference); no owner for others."""
    rtype = resource["resourceType"]
    rid = resource.get("id")
    if rtype == "Patient":
        if not isinstance(rid, str):
            return _Placed(resource, problem="Patient without an id; skipped")
        return _Placed(resource, owner=rid)
    if rtype not in _PATIENT_TYPES:
        return _Placed(resource)
    patient = _patient_of(resource, aliases)
    if patient is None:
        return _Placed(resource, problem=f"{rtype}/{rid} has no Patient subject; skipped")
    if aliases and isinstance(resource.get("medicationReference"), dict):
        ref = resource["medicationReference"].get("reference")
        if ref in aliases:
            resource = {**resource, "medicationReference": {
                **resource["medicationReference"], "reference": aliases[ref]}}
    return _Placed(resource, owner=patient)


def _key(resource: Mapping[str, Any]) -> str | None:
    rid = resource.get("id")
    return f"{resource['resourceType']}/{rid}" if isinstance(rid, str) else None


def _medication_refs(resources: Iterable[Mapping[str, Any]]) -> set[str]:
    """The Medications a patient's MedicationRequests point at."""
    return {r["medicationReference"]["reference"] for r in resources
            if r.get("resourceType") == "MedicationRequest"
            and isinstance(r.get("medicationReference"), dict)
            and isinstance(r["medicationReference"].get("reference"), str)}


@dataclass(frozen=True)
class FilePart:
    """One file's share of a patient's record: read again (but for the duplicates the scan
    set aside, by position), or, for a file shared with other patients, the resources the
    scan kept (`held`)."""

    path: Path
    set_aside: frozenset[int] = frozenset()
    held: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class RecordLoader:
    """What reading one patient's record from the folder needs; picklable, no source."""

    patient_id: str
    parts: tuple[FilePart, ...]  # in read order
    # Medication/<id> -> the Medication (the first in the folder) the patient's orders name
    medications: tuple[tuple[str, dict[str, Any]], ...] = ()

    def load(self) -> PatientRecord:
        """The patient's record; PatientReadError when it cannot be read or built."""
        if not self.parts:
            raise PatientReadError(self.patient_id, "no Patient resource in the bundle folder")
        resources: list[dict[str, Any]] = []
        with collector_paused():
            for part in self.parts:
                if part.held is not None:
                    resources.extend(part.held)
                else:
                    resources.extend(self._read(part))
            medications = dict(self.medications)
            extra = [medications[ref] for ref in sorted(_medication_refs(resources))
                     if ref in medications]
            try:
                return build_record([*resources, *extra])
            except RecordError as exc:
                raise PatientReadError(self.patient_id, str(exc)) from exc

    def _read(self, part: FilePart) -> Iterator[dict[str, Any]]:
        for position, item in enumerate(read_file(part.path)):
            resource = item.resource
            if resource is None and item.where == str(part.path):
                # The whole file no longer reads as it did when the folder was scanned.
                raise PatientReadError(self.patient_id, f"{item.where}: {item.problem}")
            if resource is None or position in part.set_aside or \
                    not isinstance(resource.get("id", ""), str):  # set aside by the scan
                continue
            placed = _place(resource, item.aliases)
            if placed.owner == self.patient_id:
                yield placed.resource


def load_record(loader: RecordLoader) -> PatientRecord:
    """`loader.load()`, as a module-level function (for ProcessPoolExecutor.submit)."""
    return loader.load()


class _Seen:
    """The resources (Type/id) the scan has met, and where, in about 8 bytes of memory each.

    A dict of a million keys (or of their hashes) costs a hundred bytes per key: for a
    health system's folder the index, not the records, was the scan's peak. Here each key
    is one 64-bit slot of an open-addressing table in an `array`: the high bits of the
    key's hash (its tag) and the number of the file where it was met. A tag met again is
    checked against that file, read again (the last few files read so are kept: duplicates
    come in runs): two keys of one tag are told apart exactly, and a key met in several
    earlier files is reported at the first of them.
    """

    _LOAD = 2 / 3  # the table doubles when fuller than this

    def __init__(self, files: Sequence[Path]) -> None:
        self._files = files
        self._file_bits = max(1, len(files).bit_length())
        self._table = array("Q", [0]) * (1 << 12)
        # A tag's probe starts at its top bits: 64 - file bits wide, 12 of them at first.
        self._shift = 64 - self._file_bits - 12
        self._count = 0
        self._items: dict[int, dict[str, tuple[int, str]]] = {}  # file -> key -> first
        self.digest: Callable[[str], int] = hash

    def first(self, key: str, *, at: int, where: str) -> str | None:
        """Where `key` was met before, or None (and it is remembered as met at `at`:
        file number << 32 | position, met in file order)."""
        tag = ((self.digest(key) & 0xFFFF_FFFF_FFFF_FFFF) >> self._file_bits) or 1
        table, mask, bits = self._table, len(self._table) - 1, self._file_bits
        slot = tag >> self._shift
        before: tuple[int, int, str] | None = None  # (file, position, where) of the first
        while value := table[slot]:
            if value >> bits == tag:
                number = value & ((1 << bits) - 1)
                met = self._read(number).get(key)
                if met is not None and (number, met[0]) < (at >> 32, at & 0xFFFFFFFF) \
                        and (before is None or (number, met[0]) < before[:2]):
                    before = (number, *met)
            slot = (slot + 1) & mask
        if before is not None:
            return before[2]
        table[slot] = tag << bits | at >> 32
        self._count += 1
        if self._count > len(table) * self._LOAD:
            self._grow()
        return None

    def _grow(self) -> None:
        """Double the table. A tag's probe starts at its top bits, so no hash is needed."""
        old = self._table
        self._table = table = array("Q", [0]) * (2 * len(old))
        self._shift -= 1
        mask, bits, shift = len(table) - 1, self._file_bits, self._shift
        for value in old:
            if value:
                slot = value >> bits >> shift
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = value

    def _read(self, number: int) -> dict[str, tuple[int, str]]:
        """The keys of one file, each with its first position and place in the file."""
        if number not in self._items:
            if len(self._items) >= 8:
                del self._items[next(iter(self._items))]
            keys: dict[str, tuple[int, str]] = {}
            for position, item in enumerate(read_file(self._files[number])):
                key = _key(item.resource) if item.resource is not None else None
                if key is not None and key not in keys:
                    keys[key] = (position, item.where)
            self._items[number] = keys
        return self._items[number]


class BundleSource:
    """Answers the Source protocol from files (scanned once, on first use)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._problems: list[SourceProblem] = []
        self._loaded = False
        self._lock = threading.Lock()
        # Where the Appointments are (file number << 32 | position): read again when asked
        # for, as a day's Appointment JSON held through the run grew with the day.
        self._appointments = array("Q")
        self._files: list[Path] = []
        self._patient_files: dict[str, list[int]] = {}  # patient id -> file numbers
        # (file number, patient id) -> the patient's resources in a file shared with others
        self._held: dict[tuple[int, str], tuple[dict[str, Any], ...]] = {}
        self._wanted: dict[str, set[str]] = {}  # patient id -> Medication references
        self._medications: dict[str, dict[str, Any]] = {}
        self._set_aside: dict[int, set[int]] = {}  # file number -> positions of duplicates
        self._identifiers: dict[tuple[str, str], str] = {}

    # --- loading ---------------------------------------------------------------

    def _problem(self, where: str, message: str, patient_id: str | None = None) -> None:
        self._problems.append(SourceProblem(where, message, patient_id))

    def load(self) -> None:
        """Scan the folder (once). Raises SourceError only when there is no folder at all."""
        with self._lock:
            if self._loaded:
                return
            if not self.folder.is_dir():
                raise SourceError(f"{self.folder}: bundle folder does not exist")
            self._files = folder_files(self.folder)
            seen = _Seen(self._files)
            with collector_paused():
                for number, path in enumerate(self._files):
                    self._scan(number, path, seen)
            self._loaded = True

    def _scan(self, number: int, path: Path, seen: _Seen) -> None:
        owned: dict[str, list[dict[str, Any]]] = {}  # patient id -> resources, this file
        for position, item in enumerate(read_file(path)):
            if item.resource is None:
                self._problem(item.where, item.problem or "unreadable")
                continue
            placed = self._add(item.resource, item.where, item.aliases, seen,
                               number << 32 | position)
            if placed is None:
                self._set_aside.setdefault(number, set()).add(position)
            elif item.resource["resourceType"] == "Appointment":
                self._appointments.append(number << 32 | position)
            elif placed.owner is not None:
                owned.setdefault(placed.owner, []).append(placed.resource)
        for owner, resources in owned.items():
            self._patient_files.setdefault(owner, []).append(number)
            if len(owned) > 1:
                self._held[(number, owner)] = tuple(resources)

    def _add(self, resource: dict[str, Any], where: str, aliases: Mapping[str, str],
             seen: _Seen, at: int) -> _Placed | None:
        """Index one resource, met at `at` (file number << 32 | position); None when it is
        a duplicate (set aside)."""
        rtype = resource["resourceType"]
        rid = resource.get("id")
        if rid is not None and not isinstance(rid, str):
            self._problem(where, f"{rtype}.id is not a string; skipped")
            return _Placed(resource)
        if isinstance(rid, str):
            key = f"{rtype}/{rid}"
            before = seen.first(key, at=at, where=where)
            if before is not None:
                self._problem(where, f"{key} also appears in {before}; the first one "
                              "is used")
                return None
        if rtype == "Appointment":
            return _Placed(resource)
        if rtype == "Medication":
            if isinstance(rid, str):
                self._medications[f"Medication/{rid}"] = resource
            return _Placed(resource)
        placed = _place(resource, aliases)
        if placed.problem is not None:
            self._problem(where, placed.problem)
        if placed.owner is None or rtype == "Patient":
            return placed
        if rtype == "MedicationRequest" and (wanted := _medication_refs((placed.resource,))):
            self._wanted.setdefault(placed.owner, set()).update(wanted)
        for ident in resource.get("identifier") or ():
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                self._identifiers[(str(ident.get("system", "")), ident["value"])] = \
                    f"{rtype}/{rid}"
        return placed

    def record_loader(self, patient_id: str) -> RecordLoader:
        """What reading `patient_id`'s record needs (the folder is scanned first)."""
        self.load()
        parts = tuple(
            FilePart(self._files[n], held=self._held[(n, patient_id)])
            if (n, patient_id) in self._held else
            FilePart(self._files[n], frozenset(self._set_aside.get(n, ())))
            for n in self._patient_files.get(patient_id, ()))
        medications = tuple((ref, self._medications[ref])
                            for ref in sorted(self._wanted.get(patient_id, ()))
                            if ref in self._medications)
        return RecordLoader(patient_id, parts, medications)

    # --- the Source protocol ------------------------------------------------------

    async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
        self.load()
        visits = []
        for where, resource in self._read_appointments():
            try:
                visit = visit_from_appointment(resource, window.timezone)
            except AppointmentError as exc:
                if resource.get("status") in window.statuses:
                    self._problem(where, str(exc))
                continue
            if in_window(resource, visit, window):
                visits.append(visit)
        return sort_visits(visits)

    def _read_appointments(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The Appointments the scan found (duplicates aside), read again from their files."""
        positions: dict[int, set[int]] = {}
        for at in self._appointments:
            positions.setdefault(at >> 32, set()).add(at & 0xFFFFFFFF)
        for number, wanted in positions.items():
            with collector_paused():
                for position, item in enumerate(read_file(self._files[number])):
                    if position not in wanted:
                        continue
                    if item.resource is None or item.resource["resourceType"] != "Appointment":
                        self._problem(item.where, "the file changed while the run read the "
                                      "folder: an Appointment is no longer there; skipped")
                        continue
                    yield item.where, item.resource

    async def patient_record(self, patient_id: str) -> PatientRecord:
        return self.record_loader(patient_id).load()

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        """Evaluate the transaction's conditional creates against the loaded data.

        Files are read-only input, so nothing is stored: the run writes the Bundle itself
        to the output folder (that file is the local write-back). An entry whose
        ifNoneExist identifier is already in the folder counts as existing, as on a server.
        """
        self.load()
        created, existing = [], []
        for entry in bundle.get("entry", []):
            condition = (entry.get("request") or {}).get("ifNoneExist", "")
            system, _, value = condition.removeprefix("identifier=").partition("|")
            if (system, value) in self._identifiers:
                existing.append(self._identifiers[(system, value)])
            else:
                created.append(f"{entry['resource']['resourceType']} for {key}")
        return WriteResult(created=tuple(created), existing=tuple(existing))

    def problems(self) -> Sequence[SourceProblem]:
        return list(self._problems)

    async def aclose(self) -> None:
        return None

    @property
    def request_count(self) -> int:
        return 0

