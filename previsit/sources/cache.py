"""The local record cache: a patient's record kept between nights and revalidated, not re-read.

Off by default; on with `source.cache_dir`. A record read in full (by batch) is kept as what
each of its searches returned, with the server's time of the read. The next night the same
batch asks, for each search, only what changed since then (`_lastUpdated=gt<time>`) and how
many resources the search matches now (`_summary=count`), and reads the Patient and the
included Medications (`Medication?_id=…`) again in full. The changed resources replace or
join the kept ones (by id); the record is then used only if the kept-plus-changed set has
exactly as many resources as the server counts. So:

- a changed resource, a new one and one moved to entered-in-error (an update) come back in
  the `_lastUpdated` search and replace the kept copy;
- a deleted resource (or one moved to another patient, or one that no longer matches)
  makes the count smaller than the kept-plus-changed set: the record is read in full;
- a resource that appears with an old `meta.lastUpdated` (an import, a restore) makes the
  count larger: read in full too.

Why not `If-None-Match`: it revalidates one resource read (HAPI answers 304 to it on an
instance read; Medplum sends `ETag: W/"<versionId>"`), not a search's result set, which
is where a record's bytes are, and a conditional read of the Patient alone would cost a
request outside the batch to save a few kilobytes. `_lastUpdated` and `_summary=count`
are standard search parameters both HAPI and Medplum support, inside a batch too.

What this cannot see, bounded by `source.cache_max_age_days` (a full read at least that
often, default 7): a resource changed in place without a new `meta.lastUpdated` (a
database edit behind the API), and, in one night, a resource that vanished together with
one that appeared with an old `meta.lastUpdated` (the counts agree). The time asked for is
the earlier of our clock when the read started and the server's `Date`, less
`source.cache_overlap_seconds` (default 600) for clock skew and for writes committed after
the read with an earlier timestamp.

Each entry is bound to the server's base URL and the patient id: both are stored in it
and checked on load, and the file name is a hash of both, so an entry is never used for
another server or another patient. The files hold patient data: 0600 in 0700 folders
(previsit.files). A file that cannot be read or parsed, or holds something else, means a
full read and a warning, never a failed patient.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from previsit.files import private_folder, write_bytes
from previsit.jsonio import JsonError, loads

log = logging.getLogger(__name__)

FORMAT = 1  # bumped when the layout changes: an entry of another format is not used
Resource = Mapping[str, Any]


@dataclass(frozen=True)
class KeptSearch:
    """What one record search returned: its matches (by id) and what it _include'd."""

    matches: tuple[Resource, ...]
    included: tuple[Resource, ...] = ()

    @classmethod
    def of(cls, resource_type: str, resources: Sequence[Resource]) -> KeptSearch | None:
        """From a search's resources; None when one cannot be kept (no id to merge by)."""
        matches: dict[str, Resource] = {}
        included: dict[tuple[str, str], Resource] = {}
        for resource in resources:
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if rtype == "OperationOutcome":
                continue  # a warning about the search, not part of the record
            if not isinstance(rid, str) or not isinstance(rtype, str):
                return None
            if rtype == resource_type:
                matches[rid] = resource
            else:
                included[(rtype, rid)] = resource
        return cls(tuple(matches.values()), tuple(included.values()))

    def included_ids(self) -> dict[str, list[str]]:
        """The ids of the included resources by type, to read them again."""
        ids: dict[str, list[str]] = {}
        for resource in self.included:
            ids.setdefault(str(resource["resourceType"]), []).append(str(resource["id"]))
        return {rtype: sorted(found) for rtype, found in sorted(ids.items())}


def revalidated(kept: KeptSearch, resource_type: str, changed: Sequence[Resource],
                count: Any, included: Sequence[Resource] = ()) -> KeptSearch | None:
    """The search's result now, from what was kept and what changed since; None when the
    server's count says the merge is not the whole result (something was deleted, or
    appeared without a newer lastUpdated): then the record must be read in full.

    `included`: the included resources read again (by id) plus those the changed search
    included; only those a match still cites are kept.
    """
    fresh = KeptSearch.of(resource_type, changed)
    if fresh is None or not isinstance(count, int) or isinstance(count, bool):
        return None
    matches = {str(r["id"]): r for r in kept.matches}
    matches.update((str(r["id"]), r) for r in fresh.matches)
    if len(matches) != count:
        return None
    extra = {(str(r.get("resourceType")), str(r.get("id"))): r
             for r in (*included, *fresh.included)
             if isinstance(r.get("id"), str) and r.get("resourceType") != "OperationOutcome"}
    cited = set(_references(matches.values())) if extra else set()  # a walk of every match
    kept_included = tuple(r for key, r in sorted(extra.items()) if "/".join(key) in cited)
    return KeptSearch(tuple(matches.values()), kept_included)


def _references(resources: Iterable[Any]) -> Iterator[str]:
    """"Type/id" of every reference in `resources` (absolute or versioned ones cut down)."""
    stack: list[Any] = list(resources)
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            ref = value.get("reference")
            if isinstance(ref, str):
                parts = ref.split("/_history/")[0].rstrip("/").split("/")
                if len(parts) >= 2:
                    yield "/".join(parts[-2:])
            stack.extend(v for v in value.values() if isinstance(v, Mapping | list))
        elif isinstance(value, list):
            stack.extend(value)


@dataclass(frozen=True)
class KeptRecord:
    """One patient's record as kept between nights."""

    base_url: str
    patient_id: str
    full_at: datetime  # our clock: when it was last read in full
    since: datetime  # the server's clock: ask for what changed after this
    searches: Mapping[str, KeptSearch]  # resource type -> what its search returned

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "base_url": self.base_url, "patient_id": self.patient_id,
                "full_at": self.full_at.isoformat(), "since": self.since.isoformat(),
                "searches": {rtype: {"matches": list(s.matches), "included": list(s.included)}
                             for rtype, s in sorted(self.searches.items())}}

    @classmethod
    def from_json(cls, data: Any) -> KeptRecord:
        """ValueError (KeyError, TypeError) when `data` is not a kept record."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a record cache entry of this previsit version")
        searches = {}
        for rtype, search in data["searches"].items():
            matches, included = search["matches"], search["included"]
            if not isinstance(matches, list) or not isinstance(included, list) or \
                    not all(isinstance(r, dict) for r in (*matches, *included)):
                raise ValueError(f"the {rtype} search is not a list of resources")
            searches[str(rtype)] = KeptSearch(tuple(matches), tuple(included))
        return cls(str(data["base_url"]), str(data["patient_id"]),
                   _instant(data["full_at"]), _instant(data["since"]), searches)


def _instant(text: Any) -> datetime:
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return when


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RecordCache:
    """Kept records of one server in a folder: `load` what is still usable, `store` anew."""

    def __init__(self, folder: Path, base_url: str, *, max_age: timedelta,
                 overlap: timedelta = timedelta(minutes=10),
                 now: Callable[[], datetime] = _utcnow) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = folder
        self.folder = folder / _digest(self.base_url)[:16]
        self.max_age = max_age
        self.overlap = overlap
        self.now = now

    def path(self, patient_id: str) -> Path:
        key = _digest(f"{self.base_url}\n{patient_id}")[:32]
        return self.folder / f"{key}.json"

    def load(self, patient_id: str) -> KeptRecord | None:
        """The kept record, or None: none kept, too old (a full read is due), or unusable
        (said in a warning: the record is then read in full)."""
        path = self.path(patient_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("the record cache file %s cannot be read (%s); reading the record "
                        "in full", path, exc.strerror or type(exc).__name__)
            return None
        try:
            kept = KeptRecord.from_json(loads(data))
        except (JsonError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("the record cache file %s is not usable (%s); reading the record in "
                        "full", path, _reason(exc))
            return None
        if (kept.base_url, kept.patient_id) != (self.base_url, patient_id):
            log.warning("the record cache file %s belongs to another server or patient; "
                        "reading the record in full", path)
            return None
        if self.now() - kept.full_at >= self.max_age:
            return None
        return kept

    def store(self, kept: KeptRecord) -> None:
        """Keep `kept` (0600, in 0700 folders); a failure is a warning, never the patient's."""
        path = self.path(kept.patient_id)
        try:
            data = _encode(kept.to_json())
            private_folder(self.root)
            private_folder(self.folder)
            write_bytes(path, data)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("the record cache file %s could not be written (%s); the record will "
                        "be read in full next time", path, _reason(exc))

    def next_since(self, started: datetime, server_date: datetime | None) -> datetime:
        """What the next revalidation asks after: the earlier of our clock when the read
        started and the server's Date, less the overlap."""
        when = started if server_date is None else min(started, server_date)
        return when - self.overlap


def _encode(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:  # an integer beyond 64 bits (kept as read, for record.py to set aside)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
