"""Reading a folder of FHIR JSON: Bundles, single resources and NDJSON, in a stable order.

Shared by the bundle source (which plans from the folder) and `previsit upload` (which
loads it into a server). Every *.json (a Bundle of any type, or one resource) and *.ndjson
(one resource per line) below the folder is read in sorted path order. What cannot be used
is yielded as a problem with where it is (file, entry or line), never skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from previsit.jsonio import JsonError, loads, split_array

# A Bundle file larger than this (in characters) is read an entry at a time: parsed whole,
# a day's appointments in one 14 MB Bundle held 130 MB of objects at once.
LARGE_FILE = 4 << 20


@dataclass(slots=True)  # not frozen: made for every resource, twice a run, and a frozen
class FolderItem:      # dataclass costs four times as much to make; nobody changes one
    """One resource read from the folder, or one problem (then `resource` is None)."""

    where: str  # "folder/file.json entry[12]", "folder/file.ndjson line 4"
    resource: dict[str, Any] | None = None
    # Within a Bundle, fullUrl (urn:uuid:...) -> "Type/id", so references between its
    # entries (Synthea, EHR exports) can be followed.
    aliases: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None
    foreign: bool = False  # the problem is that it is not FHIR at all (a package.json)


def folder_files(folder: Path) -> list[Path]:
    """The *.json and *.ndjson files below `folder` (node_modules aside), in read order."""
    return [path for path in sorted(folder.rglob("*"))
            if path.is_file() and path.suffix.lower() in (".json", ".ndjson")
            and "node_modules" not in path.parts]


def read_folder(folder: Path) -> Iterator[FolderItem]:
    """Every resource below `folder`, and every problem met on the way."""
    for path in folder_files(folder):
        yield from read_file(path)


def read_file(path: Path) -> Iterator[FolderItem]:
    """Every resource in one file, and every problem met on the way, in the file's order.

    The same file always gives the same items in the same order, so an item's position in
    this sequence names it (the bundle source re-reads a patient's files by position).
    """
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark is not data
    except (OSError, UnicodeDecodeError) as exc:
        yield FolderItem(where, problem=f"cannot read file: {exc}")
        return
    if path.suffix.lower() == ".ndjson":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield _item(line, f"{where} line {number}")
        return
    if len(text) > LARGE_FILE:
        large = _large_bundle(text, where)
        if large is not None:
            yield from large
            return
    try:
        data = loads(text)
    except JsonError as exc:
        yield FolderItem(where, problem=f"{exc}; file skipped")
        return
    yield from _document(data, where)


def _large_bundle(text: str, where: str) -> Iterator[FolderItem] | None:
    """A large Bundle's items, its entries parsed one at a time (the items `_document`
    gives for the whole parsed text); None when it is not a Bundle of object entries that
    all parse (then the whole text is parsed, and what is wrong said as for any file)."""
    split = split_array(text, "entry")
    if split is None or not isinstance(split[0], dict) or \
            split[0].get("resourceType") != "Bundle":
        return None
    spans = split[1]
    try:
        aliases = _aliases(loads(text[start:end]) for start, end in spans)
    except JsonError:
        return None
    return _entries((loads(text[start:end]) for start, end in spans), where, aliases)


def _item(line: str, where: str) -> FolderItem:
    try:
        resource = loads(line)
    except JsonError as exc:
        return FolderItem(where, problem=str(exc))
    return _resource(resource, where, {})


def _resource(resource: Any, where: str, aliases: Mapping[str, str]) -> FolderItem:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return FolderItem(where, problem="not a FHIR resource (no resourceType); skipped")
    return FolderItem(where, resource, aliases)


def _document(data: Any, where: str) -> Iterator[FolderItem]:
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        yield FolderItem(where, problem="not a FHIR resource (no resourceType); file skipped",
                         foreign=True)
        return
    if data["resourceType"] != "Bundle":
        yield FolderItem(where, data)
        return
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        yield FolderItem(where, problem="Bundle.entry is not a list; file skipped")
        return
    yield from _entries(entries, where, _aliases(entries))


def _aliases(entries: Iterable[Any]) -> dict[str, str]:
    """A Bundle's fullUrls, each with the Type/id of its entry's resource."""
    aliases: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            res = entry["resource"]
            if isinstance(entry.get("fullUrl"), str) and res.get("id"):
                aliases[entry["fullUrl"]] = f"{res.get('resourceType')}/{res['id']}"
    return aliases


def _entries(entries: Iterable[Any], where: str, aliases: Mapping[str, str]
             ) -> Iterator[FolderItem]:
    for index, entry in enumerate(entries):
        at = f"{where} entry[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            yield FolderItem(at, problem="entry has no resource; skipped")
            continue
        yield _resource(entry["resource"], at, aliases)
