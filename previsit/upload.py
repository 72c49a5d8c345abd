"""Load a folder of Bundles / NDJSON into a FHIR server (`previsit upload`).

For demos and integration tests: the sample clinic day into a test server. Resources
are written with PUT Type/id in transaction Bundles, so ids stay stable and loading twice
leaves one copy. References by fullUrl (urn:uuid:…) are rewritten to Type/id first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from previsit.errors import UploadError
from previsit.sources.folder import read_folder

# Written first so that references from later resources resolve on strict servers.
_ORDER = {"Organization": 0, "Practitioner": 1, "Location": 2, "PractitionerRole": 3,
          "Patient": 4, "Medication": 5}


def _rewrite(value: Any, aliases: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (aliases.get(v, v) if k == "reference" and isinstance(v, str)
                    else _rewrite(v, aliases)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, aliases) for v in value]
    return value


def read_resources(folder: Path) -> list[dict[str, Any]]:
    """Every resource in the folder's *.json and *.ndjson files, references made Type/id."""
    resources: list[dict[str, Any]] = []
    for item in read_folder(folder):
        if item.resource is None:
            if item.foreign:
                continue  # not FHIR (a package.json, say): nothing to upload
            raise UploadError(f"{item.where}: {item.problem}")
        resources.append(_rewrite(item.resource, item.aliases) if item.aliases
                         else item.resource)
    missing = [r.get("resourceType", "?") for r in resources if not r.get("id")]
    if missing:
        kinds = ", ".join(sorted(set(missing)))
        raise UploadError(f"{len(missing)} resources have no id ({kinds}); upload writes "
                          "with PUT Type/id so ids must be given")
    return resources


def transactions(resources: list[dict[str, Any]], size: int = 200) -> Iterator[dict[str, Any]]:
    ordered = sorted(resources, key=lambda r: (_ORDER.get(r["resourceType"], 9),
                                               r["resourceType"], r["id"]))
    for start in range(0, len(ordered), size):
        chunk = ordered[start:start + size]
        yield {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in chunk]}
