"""Reading a folder's files: a large Bundle is read an entry at a time, with the same items."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from previsit.sources import folder
from previsit.sources.folder import read_file


def _items(path: Path) -> list[tuple[str, dict[str, Any] | None, dict[str, str], str | None]]:
    return [(Path(i.where).name, i.resource, dict(i.aliases), i.problem)
            for i in read_file(path)]


def _large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder, "LARGE_FILE", 0)  # every file is a large one


def test_a_large_bundles_entries_are_read_one_at_a_time_with_their_fullurls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "day.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:a1", "resource": {
            "resourceType": "Appointment", "id": "a1",
            "participant": [{"actor": {"reference": "urn:uuid:p1"}}]}},
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1",
                                                "name": [{"family": "Gil \ud800"}]}},
        {"request": {"method": "GET"}}]}, ensure_ascii=True), encoding="utf-8")
    _large(monkeypatch)
    aliases = {"urn:uuid:a1": "Appointment/a1", "urn:uuid:p1": "Patient/p1"}
    assert _items(path) == [
        ("day.json entry[0]", {"resourceType": "Appointment", "id": "a1", "participant": [
            {"actor": {"reference": "urn:uuid:p1"}}]}, aliases, None),
        ("day.json entry[1]", {"resourceType": "Patient", "id": "p1",
                               "name": [{"family": "Gil \ufffd"}]}, aliases, None),
        ("day.json entry[2]", None, {}, "entry has no resource; skipped")]


@pytest.mark.parametrize("text", [
    '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Basic", "id": "b"}}'
    ', {"resource": {"resourceType": "Basic", "id": "c", "n": 1e400}}]}',
    '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Basic"}}, 7]}',
    '{"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}, {"n": NaN}]}',
    '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Basic"}}',
    '{"resourceType": "Bundle", "entry": {"resource": {"resourceType": "Basic"}}}',
    '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Basic", "id": "1"}}'
    '], "entry": [{"resource": {"resourceType": "Basic", "id": "2"}}]}',
    '{"resourceType": "Basic", "id": "one", "entry": [{}]}',
    '{"resourceType": 7, "entry": []}', '{"entry": [{}]}',
    '{"resourceType": "Bundle", "entry": [' + '{"a":' * 1100 + '1' + '}' * 1100 + ']}'])
def test_a_large_file_gives_the_items_a_whole_parse_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "f.json"
    path.write_text(text, encoding="utf-8")
    whole = _items(path)
    _large(monkeypatch)
    assert _items(path) == whole


def test_reading_a_large_bundle_holds_one_entry_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"resource": {"resourceType": "Appointment", "status": "booked", "participant": [
        {"actor": {"reference": f"Practitioner/dr-{n}", "display": "Dr A"},
         "status": "accepted"} for n in range(8)]}}
    path = tmp_path / "day.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "entry": [
        {**entry, "resource": {**entry["resource"], "id": f"a{n}"}} for n in range(8000)]}),
        encoding="utf-8")
    size = path.stat().st_size
    assert size > folder.LARGE_FILE
    tracemalloc.start()
    try:
        count = sum(1 for item in read_file(path) if item.resource is not None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 8000
    # Its bytes and its text (read_text holds both for a moment), the entries' places
    # and one entry. Parsed whole, the same file holds nineteen times its size.
    assert peak < 3 * size, (peak, size)
    monkeypatch.setattr(folder, "LARGE_FILE", size + 1)
    tracemalloc.start()
    try:
        assert sum(1 for item in read_file(path) if item.resource is not None) == 8000
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole > 10 * size, (whole, size)
