"""The Bulk Data source's local side: exported NDJSON kept on disk, indexed by patient.

A Group export holds every resource of every patient of the panel, in one file (or a few)
per resource type: the records are interleaved. Planning needs them one patient at a time,
and 10,000 patients must not need all their resources in memory at once. So the NDJSON
files are loaded, one line at a time, into a SQLite database (`BulkStore`): each resource
is kept as the bytes it was exported as, under its type and id and the patient it belongs
to, with an index on the patient. A record is then one indexed query; memory is bounded
by one line while loading and by one patient's record while planning.

The store is kept between runs, beside a small `state.json` (`ExportState`) holding the
export's `transactionTime`, so that the next night exports only what changed
(`_since`) and applies it: changed resources replace their old versions, deleted ones
are removed. The folder is created 0700: it holds patient data.

Input that cannot be used is reported as a `SourceProblem` (file and line, never the
content); when the patient it belongs to can still be told (its reference survives in a
malformed line), that patient is marked "read by search instead" rather than planned
from an incomplete record.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from previsit.intervals import parse_fhir_datetime
from previsit.jsonio import JsonError, dumps, loads, object_or_none
from previsit.operation_outcome import outcome_issues
from previsit.record import RECORD_SEARCHES
from previsit.sources import SourceProblem

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STORE_FILE = "store.sqlite"
STATE_VERSION = 1
MAX_LINE_BYTES = 64 * 1024 * 1024  # one resource; a longer line is skipped, not read whole
_BATCH = 1000  # rows per INSERT: bounded memory while loading
_ID = r"[A-Za-z0-9\-.]{1,64}"  # FHIR R4 id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resource (
    type TEXT NOT NULL, id TEXT NOT NULL, patient TEXT, body BLOB NOT NULL,
    PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS resource_patient ON resource (patient);
CREATE TABLE IF NOT EXISTS member (patient TEXT PRIMARY KEY);
"""


def export_types() -> tuple[str, ...]:
    """The `_type` of the export: Patient, every type a record is searched for
    (`record.RECORD_SEARCHES`) and every type those searches `_include`.

    An `_include` names its target type last (`MedicationRequest:medication:Medication`)
    or, as record.py writes it, through the search parameter alone
    (`MedicationRequest:medication`), which for a reference parameter is the target type
    in lower camel case.
    """
    types = ["Patient"]
    for resource_type, params in RECORD_SEARCHES:
        types.append(resource_type)
        for name, value in params:
            if name == "_include":
                parts = value.split(":")
                target = parts[2] if len(parts) > 2 else parts[1]
                types.append(target[:1].upper() + target[1:])
    return tuple(dict.fromkeys(types))


def reference_id(reference: Any, resource_type: str) -> str | None:
    """The id in a reference to `resource_type`: relative (`Patient/1`), absolute
    (`https://ehr/fhir/Patient/1`, as an export may write them) or versioned."""
    if not isinstance(reference, str):
        return None
    found = re.search(rf"(?:^|/){resource_type}/({_ID})(?:/_history/[^/]*)?$", reference)
    return found.group(1) if found else None


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource of the export belongs to (the Patient itself included)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for name in ("subject", "patient"):  # Immunization.patient, the others' subject
        value = resource.get(name)
        found = reference_id(value.get("reference") if isinstance(value, Mapping) else None,
                             "Patient")
        if found:
            return found
    return None


def salvage_patient(line: bytes, resource_type: str) -> str | None:
    """The patient a malformed line most likely belongs to, read from its raw text: the
    first patient reference, or a Patient's own id. A wrong guess only makes one more
    patient's record read by search, never a patient planned from a broken record."""
    if resource_type == "Patient":
        found = re.search(rb'"id"\s*:\s*"(' + _ID.encode() + rb')"', line)
    else:
        found = re.search(rb'"reference"\s*:\s*"(?:[^"]*/)?Patient/(' + _ID.encode() + rb')"',
                          line)
    return found.group(1).decode() if found else None


def lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for every non-blank line; None for a line longer than
    MAX_LINE_BYTES, which is skipped without being held in memory."""
    with path.open("rb") as handle:
        number = 0
        while line := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield number, None
            elif line.strip():
                yield number, line.strip()


# --- the state of the last export ----------------------------------------------------------


@dataclass(frozen=True)
class ExportState:
    """What the kept store holds: which server, panel and types, exported as of when."""

    server: str
    group: str
    types: tuple[str, ...]
    since: str  # transactionTime of the last clean export: the next one's _since
    full_at: str  # transactionTime of the last full export

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "server": self.server, "group": self.group,
                "types": list(self.types), "since": self.since, "full_at": self.full_at}


def load_state(path: Path) -> ExportState | None:
    """The kept state, or None when there is none (or it cannot be used: a full export)."""
    try:
        data: Any = loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, JsonError) as exc:
        log.warning("%s cannot be read (%s); exporting everything", path, exc)
        return None
    try:
        state = ExportState(server=str(data["server"]), group=str(data["group"]),
                            types=tuple(str(t) for t in data["types"]),
                            since=str(data["since"]), full_at=str(data["full_at"]))
    except (KeyError, TypeError) as exc:
        log.warning("%s is not a previsit export state (%s); exporting everything", path, exc)
        return None
    if data.get("version") != STATE_VERSION or parse_fhir_datetime(state.since) is None \
            or parse_fhir_datetime(state.full_at) is None:
        log.warning("%s is of another version or has no usable times; exporting everything",
                    path)
        return None
    return state


def save_state(path: Path, state: ExportState) -> None:
    """Write the state atomically (a crash leaves the old one or the new one, whole)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(dumps(state.to_json()), encoding="utf-8")
    os.chmod(partial, 0o600)
    os.replace(partial, path)


# --- the store -------------------------------------------------------------------------------


class BulkStore:
    """Exported resources by type, id and patient, in one SQLite file."""

    def __init__(self, path: Path, *, check_same_thread: bool = True) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None,
                                   check_same_thread=check_same_thread)
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)

    def close(self) -> None:
        self._db.close()

    def is_member(self, patient_id: str) -> bool:
        """Whether the store holds the patient's whole record (from a full export)."""
        row = self._db.execute("SELECT 1 FROM member WHERE patient = ?", (patient_id,))
        return row.fetchone() is not None

    def record(self, patient_id: str, order: Sequence[str]) -> list[dict[str, Any]]:
        """The patient's resources, with the Medications their MedicationRequests name;
        ordered by `order` (resource types), then by when they were stored. References to
        Medications are made relative (`Medication/1`), as record.py looks them up."""
        rank = {t: i for i, t in enumerate(order)}
        rows = self._db.execute("SELECT type, body FROM resource WHERE patient = ? "
                                "ORDER BY rowid", (patient_id,)).fetchall()
        rows.sort(key=lambda row: rank.get(row[0], len(rank)))
        resources: list[dict[str, Any]] = []
        medications: dict[str, None] = {}
        for _, body in rows:
            resource: dict[str, Any] = loads(body)  # stored only when it parsed as an object
            reference = resource.get("medicationReference")
            if not isinstance(reference, dict):
                resources.append(resource)
                continue
            wanted = reference_id(reference.get("reference"), "Medication")
            if wanted is not None:
                medications[wanted] = None
                resource["medicationReference"] = {**reference,
                                                   "reference": f"Medication/{wanted}"}
            resources.append(resource)
        for rid in medications:
            row = self._db.execute("SELECT body FROM resource WHERE type = 'Medication' AND "
                                   "id = ?", (rid,)).fetchone()
            if row is not None:
                resources.append(loads(row[0]))
        return resources

    # --- loading (one transaction; see load_export) --------------------------------------

    def put(self, rows: list[tuple[str, str, str | None, bytes]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO resource (type, id, patient, body) "
                             "VALUES (?, ?, ?, ?)", rows)

    def delete(self, resource_type: str, resource_id: str) -> None:
        self._db.execute("DELETE FROM resource WHERE type = ? AND id = ?",
                         (resource_type, resource_id))

    def members_from_patients(self) -> int:
        """After a full export: every exported Patient's record is whole."""
        self._db.execute("DELETE FROM member")
        self._db.execute("INSERT INTO member SELECT id FROM resource WHERE type = 'Patient'")
        return int(self._db.execute("SELECT count(*) FROM member").fetchone()[0])

    def keep_members(self, current: set[str]) -> int:
        """After an incremental export: a patient who left the panel is no longer sent
        updates, so their kept record goes stale; they stop being served from the store.
        Returns how many left."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS current (patient TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM current")
        self._db.executemany("INSERT OR IGNORE INTO current VALUES (?)",
                             ((p,) for p in current))
        gone = self._db.execute("DELETE FROM member WHERE patient NOT IN "
                                "(SELECT patient FROM current)").rowcount
        return int(gone)

    def begin(self) -> None:
        self._db.execute("BEGIN")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


@dataclass(frozen=True)
class ExportedFile:
    """A downloaded file of the export: what the manifest listed it as, where it is now."""

    kind: str  # output | deleted | error
    type: str  # the manifest's type (resource type, "Bundle", "OperationOutcome")
    path: Path
    label: str  # "the export's Observation file 2": where problems are said to be


@dataclass
class LoadResult:
    resources: int = 0
    deleted: int = 0
    problems: list[SourceProblem] = field(default_factory=list)
    suspects: set[str] = field(default_factory=set)  # patients to read by search instead
    clean: bool = True  # nothing unattributable went wrong: safe to export _since next time
    members: int = 0
    left: int = 0

    def problem(self, where: str, message: str, patient_id: str | None = None) -> None:
        """Something of the export that was not applied. The patient it belongs to (when
        known) is read by search this time; and as the next `_since` export would not
        send the unchanged resource again, the next export is a full one."""
        self.problems.append(SourceProblem(where, message, patient_id))
        if patient_id is not None:
            self.suspects.add(patient_id)
        self.clean = False


def load_export(store: BulkStore, files: Sequence[ExportedFile], types: Sequence[str], *,
                full: bool, current_members: set[str] | None) -> LoadResult:
    """Apply downloaded files to the store in one transaction (all or nothing)."""
    result = LoadResult()
    store.begin()
    try:
        for exported in files:
            if exported.kind == "output":
                _load_output(store, exported, frozenset(types), result)
            elif exported.kind == "deleted":
                _load_deleted(store, exported, result)
            else:
                _load_errors(exported, result)
        if full:
            result.members = store.members_from_patients()
        elif current_members is not None:
            result.left = store.keep_members(current_members)
        store.commit()
    except BaseException:
        store.rollback()
        raise
    return result


def _load_output(store: BulkStore, exported: ExportedFile, types: frozenset[str],
                 result: LoadResult) -> None:
    rows: list[tuple[str, str, str | None, bytes]] = []
    for number, line in lines(exported.path):
        where = f"{exported.label} line {number}"
        resource = object_or_none(line) if line is not None else None
        if resource is None:
            patient = salvage_patient(line or b"", exported.type)
            result.problem(where, "not a FHIR resource as JSON (a malformed line); skipped"
                           + ("; this patient's record is read by search instead"
                              if patient else ""), patient)
            continue
        rtype, rid = resource.get("resourceType"), resource.get("id")
        patient = patient_of(resource)
        if rtype != exported.type or rtype not in types:
            result.problem(where, f"a {rtype} in the export's {exported.type} file; skipped",
                           patient)
        elif not isinstance(rid, str) or not re.fullmatch(_ID, rid):
            result.problem(where, f"{rtype} without a valid id; skipped", patient)
        elif patient is None and rtype != "Medication":
            # belongs to no record (the search API would not return it for anyone either)
            log.debug("%s: %s/%s has no patient reference; skipped", where, rtype, rid)
        else:
            rows.append((rtype, rid, patient, line or b""))
            if len(rows) >= _BATCH:
                store.put(rows)
                result.resources += len(rows)
                rows = []
    store.put(rows)
    result.resources += len(rows)


def _load_deleted(store: BulkStore, exported: ExportedFile, result: LoadResult) -> None:
    """Each line a transaction Bundle whose entries DELETE `Type/id` (Bulk Data `deleted`)."""
    for number, line in lines(exported.path):
        where = f"{exported.label} line {number}"
        bundle = object_or_none(line) if line is not None else None
        entries = bundle.get("entry") if bundle is not None else None
        if not isinstance(entries, list):
            result.problem(where, "not a Bundle of deleted resources; skipped")
            continue
        for entry in entries:
            request = entry.get("request") if isinstance(entry, dict) else None
            url = request.get("url") if isinstance(request, dict) else None
            found = re.search(rf"(?:^|/)([A-Z][A-Za-z]+)/({_ID})(?:/_history/[^/]*)?$",
                              url) if isinstance(url, str) else None
            if found is None or not isinstance(request, dict) or \
                    str(request.get("method", "")).upper() != "DELETE":
                result.problem(where, "an entry that is not a DELETE of Type/id; skipped")
                continue
            store.delete(found.group(1), found.group(2))
            result.deleted += 1


def _load_errors(exported: ExportedFile, result: LoadResult) -> None:
    """OperationOutcomes the server wrote about what it could not export: errors are
    problems (and the patient they name, if any, is read by search); the rest is logged."""
    for number, line in lines(exported.path):
        where = f"{exported.label} line {number}"
        outcome = object_or_none(line) if line is not None else None
        issues = outcome_issues(outcome)
        if not issues:
            result.problem(where, "not an OperationOutcome; skipped")
            continue
        for issue in issues:
            if issue.severity in ("error", "fatal"):
                text = " ".join((issue.text or "", *issue.expression))
                patient = next(iter(re.findall(rf"Patient/({_ID})", text)), None)
                result.problem(where, f"the server could not export something: "
                               f"{issue.describe()}", patient)
            else:
                log.debug("%s: %s", where, issue.describe())
