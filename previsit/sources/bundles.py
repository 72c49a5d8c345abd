"""A Source over a folder of FHIR R4 JSON Bundles and NDJSON files (no server needed).

Reads every *.json (a Bundle of any type, or a single resource) and *.ndjson (one
resource per line) below the folder, once, and indexes resources by patient. Input it
cannot use (bad JSON, an entry that is not a resource, a duplicate id) is recorded as a
SourceProblem naming the file and position, and skipped: one bad file never stops a run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from previsit.appointments import in_window, sort_visits, visit_from_appointment
from previsit.errors import AppointmentError, PatientReadError, RecordError, SourceError
from previsit.plan import Visit
from previsit.record import RECORD_SEARCHES, PatientRecord, build_record
from previsit.sources import SourceProblem, VisitWindow, WriteResult
from previsit.sources.folder import read_folder

# Where each resource type points at its patient (FHIR R4 Patient compartment, the parts
# previsit reads).
_PATIENT_FIELDS = ("subject", "patient", "beneficiary")
_PATIENT_TYPES = frozenset({*(rtype for rtype, _ in RECORD_SEARCHES), "DiagnosticReport",
                            "AllergyIntolerance"})


def _patient_of(resource: Mapping[str, Any], aliases: Mapping[str, str]) -> str | None:
    for name in _PATIENT_FIELDS:
        ref = resource.get(name)
        reference = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(reference, str):
            reference = aliases.get(reference, reference)
            if reference.startswith("Patient/"):
                return reference.split("/", 1)[1]
    return None


class BundleSource:
    """Answers the Source protocol from files (loaded once, on first use)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._problems: list[SourceProblem] = []
        self._loaded = False
        self._appointments: list[tuple[str, dict[str, Any]]] = []
        self._by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._medications: dict[str, dict[str, Any]] = {}
        self._identifiers: dict[tuple[str, str], str] = {}
        self._seen: dict[str, str] = {}

    # --- loading ---------------------------------------------------------------

    def _problem(self, where: str, message: str, patient_id: str | None = None) -> None:
        self._problems.append(SourceProblem(where, message, patient_id))

    def load(self) -> None:
        """Read the folder (once). Raises SourceError only when there is no folder at all."""
        if self._loaded:
            return
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: bundle folder does not exist")
        for item in read_folder(self.folder):
            if item.resource is None:
                self._problem(item.where, item.problem or "unreadable")
            else:
                self._add(item.resource, item.where, item.aliases)
        self._loaded = True

    def _add(self, resource: dict[str, Any], where: str, aliases: Mapping[str, str]) -> None:
        rtype = resource["resourceType"]
        rid = resource.get("id")
        if rid is not None and not isinstance(rid, str):
            self._problem(where, f"{rtype}.id is not a string; skipped")
            return
        if isinstance(rid, str):
            key = f"{rtype}/{rid}"
            if key in self._seen:
                self._problem(where, f"{key} also appears in {self._seen[key]}; the first one "
                              "is used")
                return
            self._seen[key] = where
        if rtype == "Appointment":
            self._appointments.append((where, resource))
        elif rtype == "Patient":
            if not isinstance(rid, str):
                self._problem(where, "Patient without an id; skipped")
                return
            self._by_patient[rid].append(resource)
        elif rtype == "Medication":
            if isinstance(rid, str):
                self._medications[f"Medication/{rid}"] = resource
        elif rtype in _PATIENT_TYPES:
            patient = _patient_of(resource, aliases)
            if patient is None:
                self._problem(where, f"{rtype}/{rid} has no Patient subject; skipped")
                return
            if aliases and isinstance(resource.get("medicationReference"), dict):
                ref = resource["medicationReference"].get("reference")
                if ref in aliases:
                    resource = {**resource, "medicationReference": {
                        **resource["medicationReference"], "reference": aliases[ref]}}
            self._by_patient[patient].append(resource)
            for ident in resource.get("identifier") or ():
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    self._identifiers[(str(ident.get("system", "")), ident["value"])] = \
                        f"{rtype}/{rid}"

    # --- the Source protocol ------------------------------------------------------

    async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
        self.load()
        visits = []
        for where, resource in self._appointments:
            try:
                visit = visit_from_appointment(resource, window.timezone)
            except AppointmentError as exc:
                if resource.get("status") in window.statuses:
                    self._problem(where, str(exc))
                continue
            if in_window(resource, visit, window):
                visits.append(visit)
        return sort_visits(visits)

    async def patient_record(self, patient_id: str) -> PatientRecord:
        self.load()
        resources = self._by_patient.get(patient_id)
        if not resources:
            raise PatientReadError(patient_id, "no Patient resource in the bundle folder")
        wanted = {r["medicationReference"]["reference"] for r in resources
                  if r.get("resourceType") == "MedicationRequest"
                  and isinstance(r.get("medicationReference"), dict)
                  and isinstance(r["medicationReference"].get("reference"), str)}
        extra = [self._medications[ref] for ref in sorted(wanted) if ref in self._medications]
        try:
            return build_record([*resources, *extra])
        except RecordError as exc:
            raise PatientReadError(patient_id, str(exc)) from exc

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

