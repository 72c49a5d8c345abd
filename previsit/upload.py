"""Load a folder of Bundles / NDJSON into a FHIR server (`previsit upload`), as a normal
client of a production server.

For demos and integration tests: the sample clinic day into a server. Production servers
assign ids themselves (Medplum: UUIDs only; HAPI: numbers) and refuse to create a resource
by `PUT Type/<id>` for a normal client, so every resource is created with POST under a
`urn:uuid:` fullUrl derived from its id in the folder, and references between the loaded
resources point at those fullUrls: the server gives each its own id and rewrites them.

Each resource carries a business identifier saying which resource of the folder it is
(system `urn:previsit:upload`, value: its id there) and is created conditionally on it
(`ifNoneExist`), so a second upload creates nothing and an interrupted one completes when
run again. (A patient is still found by their own identifiers — the MRN — as before.)

Resources are ordered so that what a resource refers to comes first (organizations and
practitioners, then patients, then what refers to them; a panel's members before the
panel); the HTTP source then writes them in transactions of the size the server accepts,
pointing later transactions at what the server made of the earlier ones.
"""

from __future__ import annotations

import heapq
import re
import typing
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from previsit.errors import UploadError
from previsit.sources.folder import read_folder
from previsit.sources.transactions import references, rewrite_references

# The identifier system naming where an uploaded resource came from: value = its folder id.
UPLOAD_SYSTEM = "urn:previsit:upload"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, UPLOAD_SYSTEM)
# FHIR R4 id: it becomes a search value in ifNoneExist, so nothing else is accepted.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Among resources with no reference between them, these go first (what others point at).
_ORDER = {"Organization": 0, "Practitioner": 1, "Location": 2, "PractitionerRole": 3,
          "Patient": 4, "Medication": 5}


def read_resources(folder: Path) -> list[dict[str, Any]]:
    """Every resource in the folder's *.json and *.ndjson files, references made Type/id."""
    resources: list[dict[str, Any]] = []
    for item in read_folder(folder):
        if item.resource is None:
            if item.foreign:
                continue  # not FHIR (a package.json, say): nothing to upload
            raise UploadError(f"{item.where}: {item.problem}")
        resources.append(rewrite_references(item.resource, item.aliases) if item.aliases
                         else item.resource)
    missing = [r.get("resourceType", "?") for r in resources if not r.get("id")]
    if missing:
        kinds = ", ".join(sorted(set(missing)))
        raise UploadError(f"{len(missing)} resources have no id ({kinds}); upload identifies "
                          "each resource by its id in the folder, so ids must be given")
    return resources


def full_url(resource_type: str, rid: str) -> str:
    """The stable urn:uuid under which one folder resource is uploaded."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{resource_type}/{rid}')}"


def _identifier_shape(resource_type: str) -> str | None:
    """"list" (0..*), "single" (0..1) or None: how the type holds its business identifier."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise UploadError(f"{resource_type} is not a FHIR R4 resource type") from None
    field = model.model_fields.get("identifier")
    if field is None:
        return None
    shapes = [typing.get_origin(a) for a in typing.get_args(field.annotation)]
    return "list" if list in shapes or typing.get_origin(field.annotation) is list else "single"


def _identified(resource: dict[str, Any], rid: str, shape: str) -> dict[str, Any]:
    ours = {"system": UPLOAD_SYSTEM, "value": rid}
    if shape == "list":
        given = [i for i in resource.get("identifier") or () if i != ours]
        return {**resource, "identifier": [*given, ours]}
    if resource.get("identifier"):
        raise UploadError(f"{resource['resourceType']}/{rid} already has its one identifier; "
                          "upload needs it for its own")
    return {**resource, "identifier": ours}


def _ordered(resources: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Topological order: a resource after every folder resource it refers to; otherwise by
    _ORDER, type and id, so the same folder always uploads in the same order. Resources in
    a reference cycle come in that order too (the writer refuses a cycle it cannot fit in
    one transaction)."""
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    needs: dict[str, set[str]] = {key: {ref for ref in references(r) if ref in by_key} - {key}
                                  for key, r in by_key.items()}
    users: dict[str, list[str]] = {key: [] for key in by_key}
    for key, wanted in needs.items():
        for other in wanted:
            users[other].append(key)

    def rank(key: str) -> tuple[int, str, str]:
        rtype, rid = key.split("/", 1)
        return _ORDER.get(rtype, 9), rtype, rid

    waiting = {key: len(wanted) for key, wanted in needs.items()}
    ready = [rank(key) for key, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, rtype, rid = heapq.heappop(ready)
        key = f"{rtype}/{rid}"
        order.append(key)
        for user in users[key]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, rank(user))
    placed = set(order)
    order += sorted((key for key in by_key if key not in placed), key=rank)
    return [by_key[key] for key in order]


def upload_transaction(resources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One transaction Bundle loading every resource: POST under a urn:uuid fullUrl,
    conditional on its upload identifier, references between them by fullUrl, ordered so
    that references point back. The HTTP source splits it to the server's size."""
    seen: dict[str, int] = {}
    for resource in resources:
        key = f"{resource['resourceType']}/{resource['id']}"
        if not _FHIR_ID.fullmatch(str(resource["id"])):
            raise UploadError(f"{key}: the id is not a valid FHIR id ([A-Za-z0-9-.], at most "
                              "64), and upload uses it as the resource's identifier")
        seen[key] = seen.get(key, 0) + 1
    twice = sorted(key for key, count in seen.items() if count > 1)
    if twice:
        raise UploadError(f"{len(twice)} resources appear more than once in the folder "
                          f"({', '.join(twice[:5])}{', …' if len(twice) > 5 else ''}); "
                          "each must be there once")
    shapes = {rtype: _identifier_shape(rtype) for rtype in {r["resourceType"]
                                                            for r in resources}}
    unidentifiable = sorted(t for t, shape in shapes.items() if shape is None)
    if unidentifiable:
        raise UploadError(f"{', '.join(unidentifiable)} cannot carry an identifier, so "
                          "uploading it twice could not be told from once; leave it out")
    targets = {f"{r['resourceType']}/{r['id']}": full_url(r["resourceType"], r["id"])
               for r in resources}
    entries = []
    for resource in _ordered(resources):
        rtype, rid = resource["resourceType"], str(resource["id"])
        body = {k: v for k, v in rewrite_references(resource, targets).items() if k != "id"}
        meta = _without_server_meta(body.get("meta"))
        if meta is None:
            body.pop("meta", None)
        else:
            body["meta"] = meta
        shape = shapes[rtype]
        assert shape is not None
        entries.append({"fullUrl": targets[f"{rtype}/{rid}"],
                        "resource": _identified(body, rid, shape),
                        "request": {"method": "POST", "url": rtype,
                                    "ifNoneExist": f"identifier={UPLOAD_SYSTEM}|{rid}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _without_server_meta(meta: Any) -> dict[str, Any] | None:
    """meta without what the server sets itself (versionId, lastUpdated); None if empty."""
    if not isinstance(meta, Mapping):
        return None
    kept = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    return kept or None


def resource_types(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The resource types an upload creates (the scopes it needs)."""
    return sorted({str(r["resourceType"]) for r in resources})
