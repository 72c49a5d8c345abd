"""Load a folder of Bundles / NDJSON into a FHIR server (`previsit upload`).

For demos and integration tests: the sample clinic day into a test server. Resources
are written with PUT Type/id in transaction Bundles, so ids stay stable and loading twice
leaves one copy. References by fullUrl (urn:uuid:…) are rewritten to Type/id first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from previsit.errors import UploadError

# Written first so that references from later resources resolve on strict servers.
_ORDER = {"Organization": 0, "Practitioner": 1, "Location": 2, "PractitionerRole": 3,
          "Patient": 4, "Medication": 5}




def _rewrite(value: Any, aliases: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (aliases.get(v, v) if k == "reference" and isinstance(v, str)
                    else _rewrite(v, aliases)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, aliases) for v in value]
    return value


def read_resources(folder: Path) -> list[dict[str, Any]]:
    """Every resource in the folder's *.json and *.ndjson files, references made Type/id."""
    resources: list[dict[str, Any]] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() == ".ndjson":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        resources.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UploadError(f"{path} line {number}: {exc.msg}") from None
        elif path.suffix.lower() == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UploadError(f"{path}: {exc.msg} at line {exc.lineno}") from None
            if not isinstance(data, dict) or "resourceType" not in data:
                continue
            if data["resourceType"] != "Bundle":
                resources.append(data)
                continue
            entries = [e for e in data.get("entry") or () if isinstance(e, dict)
                       and isinstance(e.get("resource"), dict)]
            aliases = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
                       for e in entries if isinstance(e.get("fullUrl"), str)
                       and e["resource"].get("id")}
            resources.extend(_rewrite(e["resource"], aliases) for e in entries)
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
