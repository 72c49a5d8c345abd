"""SMART scopes: what previsit asks for (one scope per type, v2 letters in order, or v1) and
how a granted scope is read (v1 read/write/*, v2 letters, wildcard types, criteria)."""

from __future__ import annotations

import pytest

from previsit.scopes import (
    Permission,
    granted_letters,
    merged,
    missing_permissions,
    run_permissions,
    scope_text,
    upload_permissions,
)


def test_a_run_reads_its_types_and_writes_the_proposals() -> None:
    assert [(p.resource_type, p.letters) for p in run_permissions(sheets=False)] == [
        ("Appointment", "rs"), ("Patient", "rs"), ("Condition", "rs"),
        ("MedicationRequest", "crus"), ("Medication", "rs"), ("Observation", "rs"),
        ("Procedure", "rs"), ("Immunization", "rs"), ("ServiceRequest", "crus"),
        ("Encounter", "rs"), ("MedicationDispense", "rs"), ("MedicationStatement", "rs")]
    assert run_permissions(sheets=True)[-1] == Permission(
        "DocumentReference", "cu", "storing planning sheets")


def test_one_scope_per_type_with_every_letter_in_order() -> None:
    # Medplum takes the first scope it meets for a type: ServiceRequest.rs then .cu would
    # leave it read-only, so the letters are merged into one scope.
    joined = merged([Permission("ServiceRequest", "rs", "reading"),
                     Permission("ServiceRequest", "cu", "writing")])
    assert joined == (Permission("ServiceRequest", "crus", "reading; writing"),)
    assert scope_text(joined) == "system/ServiceRequest.crus"
    assert scope_text(joined, "v1") == "system/ServiceRequest.read system/ServiceRequest.write"


def test_an_upload_creates_the_types_it_loads() -> None:
    assert scope_text(upload_permissions(["Patient", "Observation", "Patient"])) == \
        "system/Observation.c system/Patient.c"


@pytest.mark.parametrize(("granted", "rtype", "letters"), [
    ("system/ServiceRequest.crus", "ServiceRequest", "crus"),
    ("system/*.read", "ServiceRequest", "rs"),  # v1 read = read and search
    ("system/ServiceRequest.write", "ServiceRequest", "cud"),  # v1 write, per the spec
    ("user/*.*", "Patient", "cruds"),
    ("patient/Observation.rs?category=laboratory", "Observation", "rs"),
    ("system/*.rs system/ServiceRequest.cu", "ServiceRequest", "crus"),
    ("system/Observation.rs", "ServiceRequest", ""),
    ("system/ServiceRequest.src openid fhirUser", "ServiceRequest", ""),  # not v2 order
    ("", "Patient", ""),
])
def test_granted_letters(granted: str, rtype: str, letters: str) -> None:
    assert granted_letters(granted, rtype) == letters


def test_missing_permissions_name_only_what_is_missing() -> None:
    needs = [Permission("ServiceRequest", "crus", "proposals"),
             Permission("Patient", "rs", "patients")]
    assert missing_permissions(needs, "system/*.rs system/ServiceRequest.c") == [
        Permission("ServiceRequest", "u", "proposals")]
    assert missing_permissions(needs, "system/*.cruds") == []
