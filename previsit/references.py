"""FHIR references: the id a reference points at, read one way everywhere."""

from __future__ import annotations

import re

# FHIR R4 id: [A-Za-z0-9\-\.]{1,64}; an id of dots only would walk up a URL path.
_ID = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")
_PATIENT = re.compile(r"Patient/(?P<id>[^/]+)(?:/_history/[^/]+)?")


def bare_id(reference: str) -> str:
    """The last path segment of a reference or id ("Location/2" and "2" both give "2"),
    for matching configured filters against references."""
    return reference.rsplit("/", 1)[-1]


def is_fhir_id(value: str) -> bool:
    """A FHIR id that can go into a URL path as it is."""
    return _ID.fullmatch(value) is not None


def patient_id(reference: str, base_url: str | None = None) -> str | None:
    """The id of the patient a reference names on *this* server, or None.

    Accepted: `Patient/<id>` and `Patient/<id>/_history/<version>` (the version does not
    change whose chart it is), each optionally prefixed by the server's own base URL.
    Everything else names no local patient: another server's URL, `./Patient/x`,
    `Patient/../../metadata`, a search (`Patient?identifier=…`), a contained `#p1`. Taking
    the last path segment instead would plan `Patient/123/_history/2` as patient 2.
    """
    if base_url is not None:
        base = base_url.rstrip("/") + "/"
        if reference.startswith(base):
            reference = reference[len(base):]
    match = _PATIENT.fullmatch(reference)
    if match is None or not is_fhir_id(match["id"]):
        return None
    return match["id"]
