"""SMART scopes: exactly what previsit asks for, and whether a granted scope covers it.

A run reads the day's appointments and each patient's record, and writes proposals (and,
with --write-sheets, each visit's sheet); `previsit upload` creates resources of the types
it loads. Each need is a `Permission`: a resource type and the SMART v2 letters it needs
(c create, r read, u update, d delete, s search — hl7.org/fhir/smart-app-launch/
scopes-and-launch-context.html).

They are asked for as ONE scope per type, with every letter that type needs: Medplum takes
the first scope it meets for a type, so `system/ServiceRequest.rs` beside
`system/ServiceRequest.cu` leaves ServiceRequest read-only there. SMART v2 syntax by default
(`system/ServiceRequest.crus`); v1 (`system/ServiceRequest.read
system/ServiceRequest.write`) for servers that know only v1 — on Medplum a v1 `.write`
grants nothing at all, which is why v1 is not the default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from previsit.record import RECORD_SEARCHES

ScopeVersion = Literal["v2", "v1"]
LETTERS = "cruds"  # SMART v2 letters, in the order a scope must list them
READ = "rs"
WRITE = "cu"  # conditional creates (proposals) and conditional updates (sheets)

# patient/Observation.rs, user/*.cruds, system/ServiceRequest.write?category=... (v1 and v2)
_SCOPE = re.compile(r"^(patient|user|system)/(\w+|\*)\.(read|write|\*|c?r?u?d?s?)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Permission:
    """What previsit needs on one resource type, and what for (said in `config check`)."""

    resource_type: str
    letters: str  # SMART v2 letters in "cruds" order, e.g. "rs", "cu", "crus"
    why: str

    def scope(self, version: ScopeVersion = "v2") -> str:
        """The scope (v2) or scopes (v1, space-separated) that grant this permission."""
        if version == "v2":
            return f"system/{self.resource_type}.{self.letters}"
        terms = []
        if set(self.letters) & set(READ):
            terms.append(f"system/{self.resource_type}.read")
        if set(self.letters) & set("cud"):
            terms.append(f"system/{self.resource_type}.write")
        return " ".join(terms)


def _ordered(letters: Iterable[str]) -> str:
    given = set(letters)
    return "".join(letter for letter in LETTERS if letter in given)


def merged(permissions: Iterable[Permission]) -> tuple[Permission, ...]:
    """One permission per type (letters and reasons combined), in first-seen order."""
    by_type: dict[str, Permission] = {}
    for p in permissions:
        seen = by_type.get(p.resource_type)
        if seen is None:
            by_type[p.resource_type] = p
        else:
            why = seen.why if p.why in seen.why else f"{seen.why}; {p.why}"
            by_type[p.resource_type] = Permission(p.resource_type,
                                                  _ordered(seen.letters + p.letters), why)
    return tuple(by_type.values())


def run_permissions(*, sheets: bool) -> tuple[Permission, ...]:
    """What one `previsit run` needs: reads of the day and the records, and writes of the
    proposals (and of the sheets when they are stored)."""
    needs = [Permission("Appointment", READ, "reading the day's appointments"),
             Permission("Patient", READ, "reading each patient")]
    for rtype, extra in RECORD_SEARCHES:
        needs.append(Permission(rtype, READ, "reading each patient's record"))
        if any(value == "MedicationRequest:medication" for _, value in extra):
            needs.append(Permission("Medication", READ, "naming medications by reference"))
    needs += [Permission("ServiceRequest", WRITE, "writing lab, screening and immunization "
                                                  "proposals"),
              Permission("MedicationRequest", WRITE, "writing renewal proposals")]
    if sheets:
        needs.append(Permission("DocumentReference", WRITE, "storing planning sheets"))
    return merged(needs)


def upload_permissions(resource_types: Iterable[str]) -> tuple[Permission, ...]:
    """What `previsit upload` needs: to create each type it loads (a conditional create)."""
    return merged(Permission(t, "c", "uploading") for t in sorted(set(resource_types)))


def scope_text(permissions: Sequence[Permission], version: ScopeVersion = "v2") -> str:
    """The scope string to ask the token endpoint for."""
    return " ".join(p.scope(version) for p in permissions)


def granted_letters(scope: str, resource_type: str) -> str:
    """The v2 letters a granted scope gives on a type, as the SMART spec defines them (v1
    read = rs, write = cud, * = cruds; a `*` type covers every type). The context
    (patient/user/system) and `?criteria` narrowing are not judged here."""
    letters: set[str] = set()
    for term in scope.split():
        match = _SCOPE.match(term)
        if match is None or match.group(2) not in (resource_type, "*"):
            continue
        letters |= set(_V1.get(match.group(3), match.group(3)))
    return _ordered(letters)


def missing_permissions(permissions: Iterable[Permission], granted: str
                        ) -> list[Permission]:
    """Each needed permission the granted scope lacks, with only the letters it lacks."""
    out = []
    for p in permissions:
        have = granted_letters(granted, p.resource_type)
        lacking = _ordered(letter for letter in p.letters if letter not in have)
        if lacking:
            out.append(Permission(p.resource_type, lacking, p.why))
    return out


def v1_writes(granted: str) -> list[str]:
    """The v1 `.write` scopes in a grant (Medplum maps them to no access at all)."""
    return [term for term in granted.split() if term.endswith(".write")]
