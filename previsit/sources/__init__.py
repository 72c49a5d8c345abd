"""Where FHIR data comes from and where proposals go: one small protocol, two sources.

The engine sees only `Source`. `BundleSource` reads a folder of Bundles/NDJSON (the
embedded default, no server); `previsit.sources.http.HttpSource` talks to a FHIR R4
server. Both answer the same questions, so every test of the engine holds for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, runtime_checkable

from previsit.plan import Visit
from previsit.record import PatientRecord

BOOKED_STATUSES: tuple[str, ...] = ("booked", "arrived", "pending")


@dataclass(frozen=True)
class VisitWindow:
    """Which appointments to plan: [start, end) days in the clinic's time zone, filtered."""

    start: date
    end: date  # exclusive
    timezone: str = "UTC"
    statuses: tuple[str, ...] = BOOKED_STATUSES
    practitioners: tuple[str, ...] = ()  # "Practitioner/123" or bare ids; any of
    locations: tuple[str, ...] = ()  # "Location/abc" or bare ids; any of
    service_types: tuple[str, ...] = ()  # codes (or system|code); any of


@dataclass(frozen=True)
class SourceProblem:
    """Input the source could not use, said where it is so a person can find it."""

    where: str  # "sample_bundles/patients.json entry[12]" or "GET Patient/123"
    message: str
    patient_id: str | None = None


@dataclass(frozen=True)
class WriteResult:
    """What happened to one transaction: per entry, created or already there.

    A server may take a Bundle only in parts (a transaction-size limit). When a part fails
    after earlier parts were written, the write is partial: `missing` names the entries
    not written (their fullUrls, or "entry N") and `problem` says why. A write that wrote
    nothing at all raises WriteError instead.
    """

    created: tuple[str, ...] = ()  # references of resources created
    existing: tuple[str, ...] = ()  # conditional creates that matched an existing resource
    missing: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return not self.missing


@runtime_checkable
class Source(Protocol):
    async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
        """Appointments in the window with a booked-like status, in start order."""
        ...

    async def patient_record(self, patient_id: str) -> PatientRecord:
        """One patient's record; raises PatientReadError when it cannot be read."""
        ...

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        """Write one transaction Bundle (conditional creates); `key` names it (visit id)."""
        ...

    def problems(self) -> Sequence[SourceProblem]:
        """Input that was skipped so far, for the run report."""
        ...

    async def aclose(self) -> None: ...
