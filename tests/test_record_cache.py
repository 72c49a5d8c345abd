"""The record cache on its own: merging what changed into what was kept, the count that
catches a deletion, and the kept files (private, bound to one server and one patient,
unusable ones read in full with a warning). Against the test server:
tests/integration/test_record_reads_server.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from previsit.sources.cache import KeptRecord, KeptSearch, RecordCache, revalidated

BASE = "https://ehr.example/fhir/R4"
NOW = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)


def obs(rid: str, value: float = 1.0, status: str = "final") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": rid, "status": status,
            "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": value}}


def med_request(rid: str, medication: str) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "active",
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": f"{BASE}/Medication/{medication}"}}


def medication(rid: str, code: str = "1") -> dict[str, Any]:
    return {"resourceType": "Medication", "id": rid, "code": {"text": code}}


KEPT = KeptSearch((obs("o1"), obs("o2")))


def test_a_changed_resource_replaces_the_kept_one_and_a_new_one_joins() -> None:
    merged = revalidated(KEPT, "Observation", [obs("o2", 7.0), obs("o3")], 3)
    assert merged == KeptSearch((obs("o1"), obs("o2", 7.0), obs("o3")))
    moved = revalidated(KEPT, "Observation", [obs("o1", status="entered-in-error")], 2)
    assert moved == KeptSearch((obs("o1", status="entered-in-error"), obs("o2")))
    assert revalidated(KEPT, "Observation", [], 2) == KEPT


def test_a_count_that_does_not_add_up_means_a_full_read() -> None:
    assert revalidated(KEPT, "Observation", [], 1) is None  # o1 or o2 deleted
    assert revalidated(KEPT, "Observation", [obs("o3")], 2) is None  # one new, one gone
    assert revalidated(KEPT, "Observation", [], 3) is None  # one with an old lastUpdated
    assert revalidated(KEPT, "Observation", [], None) is None  # no total in the answer
    assert revalidated(KEPT, "Observation", [], True) is None
    assert revalidated(KEPT, "Observation", [{"resourceType": "Observation"}], 2) is None


def test_included_medications_are_the_ones_read_again_and_still_cited() -> None:
    kept = KeptSearch((med_request("m1", "a"), med_request("m2", "b")),
                      (medication("a"), medication("b")))
    assert kept.included_ids() == {"Medication": ["a", "b"]}
    # m2 now names another medication (c, included by the changes search); a was changed
    merged = revalidated(kept, "MedicationRequest", [med_request("m2", "c"), medication("c")],
                         2, included=[medication("a", "2"), medication("b")])
    assert merged == KeptSearch((med_request("m1", "a"), med_request("m2", "c")),
                                (medication("a", "2"), medication("c")))


def test_a_search_with_a_resource_without_id_cannot_be_kept() -> None:
    assert KeptSearch.of("Observation", [obs("o1"), {"resourceType": "Observation"}]) is None
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    assert KeptSearch.of("Observation", [obs("o1"), outcome]) == KeptSearch((obs("o1"),))


def kept_record(patient: str = "p1", *, base: str = BASE, age: timedelta = timedelta(0)
                ) -> KeptRecord:
    return KeptRecord(base, patient, full_at=NOW - age, since=NOW - age - timedelta(minutes=10),
                      searches={"Observation": KEPT})


def cache(folder: Path, base: str = BASE, now: datetime = NOW) -> RecordCache:
    return RecordCache(folder, base, max_age=timedelta(days=7), now=lambda: now)


def test_a_kept_record_is_private_and_comes_back_as_kept(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cache(folder).store(kept_record())
    assert cache(folder).load("p1") == kept_record()
    [server] = folder.iterdir()
    [file] = server.iterdir()
    assert (folder.stat().st_mode & 0o777, server.stat().st_mode & 0o777,
            file.stat().st_mode & 0o777) == (0o700, 0o700, 0o600)
    assert b"p1" not in file.name.encode() and BASE not in str(file)


def test_a_kept_record_serves_only_its_server_and_its_patient(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mine = cache(tmp_path)
    mine.store(kept_record())
    assert cache(tmp_path, "https://other.example/fhir").load("p1") is None
    assert mine.load("p2") is None
    mine.path("p2").write_bytes(mine.path("p1").read_bytes())  # p1's record as p2's file
    with caplog.at_level(logging.WARNING):
        assert mine.load("p2") is None
    assert "belongs to another server or patient" in caplog.text


def test_a_record_kept_longer_than_the_maximum_age_is_read_in_full(tmp_path: Path) -> None:
    cache(tmp_path).store(kept_record(age=timedelta(days=6, hours=23)))
    assert cache(tmp_path).load("p1") is not None
    assert cache(tmp_path, now=NOW + timedelta(hours=1)).load("p1") is None


@pytest.mark.parametrize("content", [
    b"", b'{"format": 1, "searc', b"[]", b'{"format": 99}', b"\xff\xfe",
    b'{"format": 1, "base_url": "x", "patient_id": "p1", "full_at": "yesterday", '
    b'"since": "2026-12-01T00:00:00+00:00", "searches": {}}',
    b'{"format": 1, "base_url": "x", "patient_id": "p1", "full_at": "2026-12-01T00:00:00", '
    b'"since": "2026-12-01T00:00:00+00:00", "searches": {}}',
    b'{"format": 1, "base_url": "x", "patient_id": "p1", "full_at": "2026-12-01T00:00:00Z", '
    b'"since": "2026-12-01T00:00:00Z", "searches": {"Observation": {"matches": [1], '
    b'"included": []}}}',
])
def test_an_unusable_file_is_a_warning_and_a_full_read(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    kept = cache(tmp_path)
    kept.path("p1").parent.mkdir(parents=True)
    kept.path("p1").write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert kept.load("p1") is None
    assert "reading the record in full" in caplog.text


def test_a_cache_that_cannot_be_written_is_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        cache(tmp_path / "file" / "cache").store(kept_record())
    assert "could not be written" in caplog.text


def test_the_next_revalidation_asks_from_the_earlier_clock_less_the_overlap(
        tmp_path: Path) -> None:
    kept = cache(tmp_path)
    behind = NOW - timedelta(minutes=3)  # the server's clock is 3 minutes behind ours
    assert kept.next_since(NOW, behind) == behind - timedelta(minutes=10)
    assert kept.next_since(NOW, NOW + timedelta(minutes=3)) == NOW - timedelta(minutes=10)
    assert kept.next_since(NOW, None) == NOW - timedelta(minutes=10)
