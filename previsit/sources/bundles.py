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

The scan of a large folder is spread over worker processes (`processes`, as the run's
planning pool: RunOptions.processes). Each file is read where it is scanned and told as a
`FileScan` (`scan_file`: what each position holds, decided without the other files); this
process merges the scans in file order (`_merge`), which is where duplicates are found,
so the result is the one scanning alone gives, problems in the same order.

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
import logging
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any, NamedTuple

from previsit import answers
from previsit.appointments import in_window, sort_visits, visit_from_appointment
from previsit.errors import AppointmentError, PatientReadError, RecordError, SourceError
from previsit.jsonio import collector_paused
from previsit.memory import give_back
from previsit.plan import Visit
from previsit.record import RECORD_SEARCHES, PatientRecord, build_record
from previsit.references import patient_id
from previsit.sources import SourceProblem, VisitWindow, WriteResult
from previsit.sources.folder import folder_files, read_file
from previsit.workers import POOL_MIN_VISITS, pool_context, pool_size

log = logging.getLogger(__name__)

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
        if isinstance(ref, str) and ref in aliases:
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

    def __init__(self, files: Sequence[Path], expected: int = 0) -> None:
        """`expected`: about how many resources the files hold. The table starts large
        enough for them: growing it at the end holds the old table and the new at once
        (48 MB for the 2 million resources of 10,000 Synthea patients, where 32 suffice)."""
        self._files = files
        self._file_bits = max(1, len(files).bit_length())
        bits = max(12, int(expected / self._LOAD).bit_length())
        self._table = array("Q", [0]) * (1 << bits)
        # A tag's probe starts at its top bits: 64 - file bits wide, `bits` of them at first.
        self._shift = 64 - self._file_bits - bits
        self._count = 0
        self._items: dict[int, dict[str, tuple[int, str]]] = {}  # file -> key -> first
        self.digest: Callable[[str], int] = hash

    def first(self, key: str, *, at: int) -> str | None:
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


# --- the scan of one file: in the run's process or in a worker process -------------------

# What a position of a file holds, as the scan tells it (the first member of an item).
_UNREADABLE = 0  # (kind, None, problem, False): no resource there
_BAD_ID = 1  # (kind, None, problem, is an Appointment): an id that is not a string
_APPOINTMENT = 2  # (kind, key)
_MEDICATION = 3  # (kind, key, the Medication)
_OTHER = 4  # (kind, key, owner, problem, wanted, identifiers, resource or None)


class FileScan(NamedTuple):
    """One file as the scan needs it, made by `scan_file` without knowing the other files
    (so in any process): an item a position, in the file's order (the kinds above; `key`
    is Type/id, None without an id), each checked for duplicates by the source, in file
    order, when merged. Resources travel only where the source keeps them: Medications,
    and the patients' resources of a file shared by several patients."""

    path: Path
    items: list[tuple[Any, ...]]
    wheres: tuple[str, ...] | None  # each item's `where`; None: all "<path> entry[<i>]"

    def where(self, position: int) -> str:
        if self.wheres is not None:
            return self.wheres[position]
        return f"{self.path} entry[{position}]"


def scan_file(path: Path) -> FileScan:
    """What `path` holds, item by item (see FileScan)."""
    items: list[tuple[Any, ...]] = []
    wheres: list[str] = []
    owners: set[str] = set()
    regular = f"{path} entry["
    for position, item in enumerate(read_file(path)):
        wheres.append(item.where)
        if regular and item.where != f"{regular}{position}]":
            regular = ""
        resource = item.resource
        if resource is None:
            items.append((_UNREADABLE, None, item.problem or "unreadable", False))
            continue
        rtype = resource["resourceType"]
        rid = resource.get("id")
        if rid is not None and not isinstance(rid, str):
            items.append((_BAD_ID, None, f"{rtype}.id is not a string; skipped",
                          rtype == "Appointment"))
            continue
        key = None if rid is None else f"{rtype}/{rid}"
        if rtype == "Appointment":
            items.append((_APPOINTMENT, key))
            continue
        if rtype == "Medication":
            items.append((_MEDICATION, key, resource))
            continue
        placed = _place(resource, item.aliases)
        owner, wanted, identifiers = placed.owner, None, None
        if owner is not None:
            owners.add(owner)
            if rtype != "Patient":
                if rtype == "MedicationRequest":
                    wanted = _medication_refs((placed.resource,)) or None
                identifiers = _identifiers(resource)
        items.append((_OTHER, key, owner, placed.problem, wanted, identifiers,
                      placed.resource))
    if len(owners) <= 1:  # one patient's file (or none's): read again, not kept
        items = [(*item[:6], None) if item[0] == _OTHER else item for item in items]
    return FileScan(path, items, None if regular else tuple(wheres))


def _identifiers(resource: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The resource's identifiers (system, value), with its Type/id: what a conditional
    create of the same identifier finds."""
    idents = resource.get("identifier")
    if not isinstance(idents, list):
        return None
    pairs = tuple((str(i.get("system", "")), i["value"]) for i in idents
                  if isinstance(i, dict) and isinstance(i.get("value"), str))
    return (f"{resource['resourceType']}/{resource.get('id')}", pairs) if pairs else None


def scan_files(paths: Sequence[Path]) -> list[FileScan]:
    """`scan_file` of each."""
    with collector_paused():
        return [scan_file(path) for path in paths]


def scans_answer(paths: Sequence[Path], into: str) -> str:
    """`scan_files`, as a worker's task: its answer handed over in a file
    (previsit.answers; a chunk's scans are hundreds of kilobytes). What parsing the files
    took is given back to the system after each task (glibc keeps it otherwise: tens of MB
    a worker, alive beside the run's own peak while it reads the day's appointments)."""
    path = answers.put(scan_files(paths), into)
    give_back()
    return path


# A worker's task: files adding up to about this many bytes (a few Synthea patients), so
# that the run's process, which merges the scans in file order, never waits long. A folder
# of fewer tasks than _POOL_MIN_CHUNKS is read in the run's process (under a second's work:
# starting the workers would cost more).
_CHUNK_BYTES = 2 << 20
_POOL_MIN_CHUNKS = 8


# FHIR JSON holds about a resource a kilobyte (Synthea: 960 bytes): what the duplicate
# index is sized by.
_BYTES_PER_RESOURCE = 1024


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # scan_file says what is wrong with it


def _chunks(paths: Sequence[Path], sizes: Sequence[int]) -> list[list[Path]]:
    chunks: list[list[Path]] = [[]]
    size = 0
    for path, file_size in zip(paths, sizes, strict=True):
        if size >= _CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(path)
        size += file_size
    return [chunk for chunk in chunks if chunk]


def _scan_files(paths: Sequence[Path], sizes: Sequence[int], processes: int | None
                ) -> Iterator[FileScan]:
    """Every file's scan, in order. A large folder is read by worker processes (as many as
    previsit.workers.pool_size gives for `processes`) while this process merges the scans:
    the first files here while the workers start (a fork server still importing previsit
    would hold this process up), then each task in turn from the pool, or here when no
    worker has taken it yet. A pool that cannot start, or a worker that dies (killed, out
    of memory), costs no file: what the pool did not return is read here."""
    chunks = _chunks(paths, sizes)
    workers = pool_size(processes, POOL_MIN_VISITS) if len(chunks) >= _POOL_MIN_CHUNKS else 0
    if not workers:
        yield from (scan_file(path) for path in paths)
        return
    later = iter(chunks)
    pending: deque[tuple[list[Path], Future[str] | None]] = deque()
    handed = answers.folder()
    pool: ProcessPoolExecutor | None = None
    starter: Thread | None = None
    alive = True  # until the pool breaks (read only once `starter` has ended)

    def not_started() -> None:
        nonlocal alive
        log.warning("worker processes could not be started; the bundle folder is read in "
                    "this process", exc_info=True)
        alive = False

    def start() -> None:  # returns when the workers run
        try:
            assert pool is not None
            pool.submit(int).result()
        except Exception:
            not_started()

    def broken() -> None:
        nonlocal alive
        if alive:
            log.warning("a worker process reading the bundle folder died; the files it "
                        "held are read in this process")
        alive = False

    def submit() -> None:
        chunk = next(later, None)
        if chunk is None:
            return
        future = None
        if alive and pool is not None:
            try:
                future = pool.submit(scans_answer, chunk, handed)
            except BrokenProcessPool:
                broken()
        pending.append((chunk, future))

    try:
        try:
            pool = ProcessPoolExecutor(workers, mp_context=pool_context())
            starter = Thread(target=start, name="previsit-scan-start", daemon=True)
            starter.start()
        except Exception:  # no semaphores, no processes: read here
            not_started()
        while starter is not None and starter.is_alive():
            first = next(later, None)
            if first is None:
                return  # every file was read here while the workers started
            yield from scan_files(first)
        for _ in range(2 * workers + 2):
            submit()
        while pending:
            chunk, future = pending.popleft()
            submit()
            scans = None
            if future is not None and not future.cancel():
                try:
                    scans = answers.take(future.result())
                except BrokenProcessPool:
                    broken()
                except Exception:  # the worker's answer not handed over (no room): here
                    log.debug("a worker's scan of %d file(s) is read again here", len(chunk),
                              exc_info=True)
            yield from scans if scans is not None else scan_files(chunk)
    finally:
        if pool is not None:
            # Not waited for while still starting (every file was read here meanwhile).
            pool.shutdown(wait=starter is None or not starter.is_alive(), cancel_futures=True)
        answers.remove(handed)


class BundleSource:
    """Answers the Source protocol from files (scanned once, on first use)."""

    def __init__(self, folder: Path, processes: int | None = 0) -> None:
        self.folder = folder
        # Worker processes that read the folder's files for the scan, as for planning
        # (RunOptions.processes: 0 none, None one per core for a large folder).
        self.processes = processes
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
            sizes = [_size(path) for path in self._files]
            seen = _Seen(self._files, expected=sum(sizes) // _BYTES_PER_RESOURCE)
            with collector_paused():
                for number, scan in enumerate(_scan_files(self._files, sizes,
                                                          self.processes)):
                    self._merge(number, scan, seen)
            self._loaded = True

    def _merge(self, number: int, scan: FileScan, seen: _Seen) -> None:
        """Index one file's scan, in file order: a resource met before is set aside (the
        first one is used); what the file's other resources bring is kept."""
        # patient id -> its resources here (sent by the scan only for a shared file)
        owned: dict[str, list[dict[str, Any]]] = {}
        for position, item in enumerate(scan.items):
            kind, key = item[0], item[1]
            if kind in (_UNREADABLE, _BAD_ID):
                self._problem(scan.where(position), item[2])
                if item[3]:  # an Appointment whose id is not a string: read, and refused
                    self._appointments.append(number << 32 | position)
                continue
            at = number << 32 | position
            if key is not None:
                before = seen.first(key, at=at)
                if before is not None:
                    self._problem(scan.where(position), f"{key} also appears in {before}; "
                                  "the first one is used")
                    self._set_aside.setdefault(number, set()).add(position)
                    continue
            if kind == _APPOINTMENT:
                self._appointments.append(at)
            elif kind == _MEDICATION:
                if key is not None:
                    self._medications[key] = item[2]
            else:
                _, _, owner, problem, wanted, identifiers, resource = item
                if problem is not None:
                    self._problem(scan.where(position), problem)
                if owner is None:
                    continue
                mine = owned.setdefault(owner, [])
                if resource is not None:
                    mine.append(resource)
                if wanted:
                    self._wanted.setdefault(owner, set()).update(wanted)
                if identifiers:
                    target, pairs = identifiers
                    for pair in pairs:
                        self._identifiers[pair] = target
        for owner, resources in owned.items():
            self._patient_files.setdefault(owner, []).append(number)
            if len(owned) > 1:  # the scan sent a shared file's resources: held for the run
                self._held[(number, owner)] = tuple(resources)

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

