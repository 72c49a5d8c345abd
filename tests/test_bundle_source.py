"""The local bundle source: windows, filters, and malformed input reported and skipped."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import pytest
from builders import appointment, bundle, condition, observation, patient, write

from previsit.errors import PatientReadError, SourceError
from previsit.sources import VisitWindow, bundles
from previsit.sources.bundles import BundleSource, _Seen, load_record

DAY = date(2026, 12, 1)
TZ = "America/Chicago"


def window(**kwargs: Any) -> VisitWindow:
    return VisitWindow(start=DAY, end=date(2026, 12, 2), timezone=TZ, **kwargs)


def visits(folder: Path, **kwargs: Any) -> list[str]:
    found = asyncio.run(BundleSource(folder).appointments(window(**kwargs)))
    return [v.appointment_id for v in found]


def test_window_is_the_clinic_day_in_local_time(tmp_path: Path) -> None:
    write(tmp_path, "appts.json", bundle(
        appointment("early", "2026-12-01T00:10:00-06:00"),
        appointment("late", "2026-12-01T23:50:00-06:00"),
        # 2026-12-02T03:00Z is 21:00 on Dec 1 in Chicago: in the window
        appointment("utc", "2026-12-02T03:00:00Z"),
        # 2026-12-01T05:30Z is 23:30 on Nov 30 in Chicago: not in the window
        appointment("yesterday", "2026-12-01T05:30:00Z"),
        appointment("tomorrow", "2026-12-02T08:00:00-06:00")))
    assert visits(tmp_path) == ["early", "utc", "late"]


@pytest.mark.parametrize("status,counted", [
    ("booked", True), ("arrived", True), ("pending", True), ("cancelled", False),
    ("noshow", False), ("entered-in-error", False), ("proposed", False), ("fulfilled", False)])
def test_only_booked_like_statuses_count(tmp_path: Path, status: str, counted: bool) -> None:
    write(tmp_path, "a.json", bundle(appointment("a", "2026-12-01T09:00:00-06:00",
                                                 status=status)))
    assert visits(tmp_path) == (["a"] if counted else [])


def test_appointments_are_read_again_when_asked_for_and_a_changed_file_is_reported(
        tmp_path: Path) -> None:
    first = appointment("a", "2026-12-01T09:00:00-06:00")
    write(tmp_path, "a.json", bundle(first, appointment("b", "2026-12-01T10:00:00-06:00"),
                                     first))  # a duplicate is not a second visit
    source = BundleSource(tmp_path)
    source.load()
    assert [v.appointment_id for v in asyncio.run(source.appointments(window()))] == ["a", "b"]
    # The folder is read again for the day (only where the scan found Appointments):
    # what changed since the scan is reported, not planned as something else.
    write(tmp_path, "a.json", bundle(patient(pid="p9"), appointment(
        "b", "2026-12-01T10:00:00-06:00")))
    assert [v.appointment_id for v in asyncio.run(source.appointments(window()))] == ["b"]
    assert [(Path(p.where).name, p.message) for p in source.problems()] == [
        ("a.json entry[2]", "Appointment/a also appears in "
         f"{tmp_path / 'a.json'} entry[0]; the first one is used"),
        ("a.json entry[0]", "the file changed while the run read the folder: an Appointment "
         "is no longer there; skipped")]


def test_practitioner_location_and_service_filters(tmp_path: Path) -> None:
    write(tmp_path, "a.json", bundle(
        appointment("a", "2026-12-01T09:00:00-06:00", practitioner="dr-a", location="east",
                    service="410620009"),
        appointment("b", "2026-12-01T09:20:00-06:00", practitioner="dr-b", location="main")))
    assert visits(tmp_path, practitioners=("Practitioner/dr-b",)) == ["b"]
    assert visits(tmp_path, locations=("east",)) == ["a"]
    assert visits(tmp_path, service_types=("410620009",)) == ["a"]
    assert visits(tmp_path, practitioners=("dr-a",), locations=("main",)) == []


def test_malformed_files_and_entries_are_reported_and_skipped(tmp_path: Path) -> None:
    write(tmp_path, "good.json", bundle(patient(pid="p1"),
                                        appointment("a", "2026-12-01T09:00:00-06:00")))
    write(tmp_path, "broken.json", '{"resourceType": "Bundle", "entry": [')
    write(tmp_path, "not-fhir.json", {"hello": "world"})
    write(tmp_path, "entries.json", {"resourceType": "Bundle", "type": "collection",
                                     "entry": [{"resource": "text"}, {"fullUrl": "x"},
                                               {"resource": {"id": "no-type"}}]})
    write(tmp_path, "more.ndjson", json.dumps(observation("4548-4", 10, 7.1, "%")) +
          "\n{oops\n\n" + json.dumps({"resourceType": "Observation", "id": "orphan"}) + "\n")
    source = BundleSource(tmp_path)
    assert [v.appointment_id for v in asyncio.run(source.appointments(window()))] == ["a"]
    record = asyncio.run(source.patient_record("p1"))
    assert len(record.observations) == 1  # the good NDJSON line was kept
    problems = {(Path(p.where).name, p.message.split(":")[0]) for p in source.problems()}
    assert ("broken.json", "not valid JSON") in problems
    assert ("not-fhir.json", "not a FHIR resource (no resourceType); file skipped") in problems
    wheres = [Path(p.where).name for p in source.problems()]
    assert "entries.json entry[0]" in wheres
    assert "entries.json entry[1]" in wheres
    assert "entries.json entry[2]" in wheres
    assert "more.ndjson line 2" in wheres
    assert any(w == "more.ndjson line 4" for w in wheres)  # Observation without a subject


def test_transaction_bundles_with_urn_uuid_references(tmp_path: Path) -> None:
    """Synthea and EHR exports link resources by fullUrl, not Type/id."""
    pat = patient(pid="3f1c")
    obs = observation("4548-4", 30, 8.2, "%")
    obs["subject"] = {"reference": "urn:uuid:3f1c"}
    write(tmp_path, "synthea.json", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f1c", "resource": pat,
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:aaaa", "resource": obs,
         "request": {"method": "POST", "url": "Observation"}}]})
    record = asyncio.run(BundleSource(tmp_path).patient_record("3f1c"))
    assert [o.ref for o in record.observations] == [f"Observation/{obs['id']}"]


def test_duplicate_resources_keep_the_first_and_say_so(tmp_path: Path) -> None:
    cond = condition("44054006", pid="p1")
    write(tmp_path, "a.json", bundle(patient(pid="p1"), cond))
    write(tmp_path, "b.json", bundle(cond))
    source = BundleSource(tmp_path)
    record = asyncio.run(source.patient_record("p1"))
    assert len(record.conditions) == 1
    assert any("also appears in" in p.message for p in source.problems())


def test_missing_patient_is_a_patient_error_and_missing_folder_a_source_error(
        tmp_path: Path) -> None:
    write(tmp_path, "a.json", bundle(appointment("a", "2026-12-01T09:00:00-06:00", pid="ghost")))
    with pytest.raises(PatientReadError) as err:
        asyncio.run(BundleSource(tmp_path).patient_record("ghost"))
    assert err.value.patient_id == "ghost"
    with pytest.raises(SourceError, match="does not exist"):
        asyncio.run(BundleSource(tmp_path / "nope").appointments(window()))


def test_medication_reference_resolved_to_medication_resource(tmp_path: Path) -> None:
    med = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076",
        "display": "lisinopril 10 MG Oral Tablet"}]}}
    request = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active",
               "intent": "order", "subject": {"reference": "Patient/p1"},
               "medicationReference": {"reference": "Medication/m1"}, "authoredOn": "2026-01-01"}
    write(tmp_path, "meds.json", bundle(patient(pid="p1"), med, request))
    record = asyncio.run(BundleSource(tmp_path).patient_record("p1"))
    assert record.medications[0].medication.codings[0].code == "314076"


def test_conditional_create_evaluated_against_loaded_identifiers(tmp_path: Path) -> None:
    existing = {"resourceType": "ServiceRequest", "id": "sr1", "status": "active",
                "intent": "order", "subject": {"reference": "Patient/p1"},
                "identifier": [{"system": "urn:previsit:proposal", "value": "pv-1"}]}
    write(tmp_path, "a.json", bundle(patient(pid="p1"), existing))
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "ServiceRequest"},
         "request": {"method": "POST", "url": "ServiceRequest",
                     "ifNoneExist": "identifier=urn:previsit:proposal|pv-1"}},
        {"resource": {"resourceType": "ServiceRequest"},
         "request": {"method": "POST", "url": "ServiceRequest",
                     "ifNoneExist": "identifier=urn:previsit:proposal|pv-2"}}]}
    result = asyncio.run(BundleSource(tmp_path).write_transaction(tx, key="a"))
    assert result.existing == ("ServiceRequest/sr1",)
    assert len(result.created) == 1


def test_a_resource_belongs_to_the_patient_its_reference_names_on_this_source(
        tmp_path: Path) -> None:
    versioned = observation("4548-4", 10, 7.0, "%", pid="p1")
    versioned["subject"] = {"reference": "Patient/p1/_history/3"}
    foreign = observation("2823-3", 10, 4.0, "mmol/L", pid="p1")
    foreign["subject"] = {"reference": "https://other.example/fhir/Patient/p1"}
    traversing = observation("2160-0", 10, 1.0, "mg/dL", pid="p1")
    traversing["subject"] = {"reference": "Patient/../p1"}
    write(tmp_path, "day.json", bundle(patient(pid="p1"), versioned, foreign, traversing))
    source = BundleSource(tmp_path)
    record = asyncio.run(source.patient_record("p1"))
    assert [o.code.codings[0].code for o in record.observations] == ["4548-4"]
    assert sorted(p.message for p in source.problems()) == [
        f"Observation/{foreign['id']} has no Patient subject; skipped",
        f"Observation/{traversing['id']} has no Patient subject; skipped"]


def test_a_patient_split_over_files_and_files_shared_by_patients(tmp_path: Path) -> None:
    write(tmp_path, "a/p1.json", bundle(patient(pid="p1"), observation("4548-4", 30, 7.0, "%")))
    write(tmp_path, "a/p2.json", bundle(patient(pid="p2"), observation("4548-4", 20, 9.0, "%",
                                                                       pid="p2")))
    # one file with both patients, read after theirs (sorted paths)
    write(tmp_path, "b/labs.ndjson", "\n".join(json.dumps(r) for r in (
        observation("2160-0", 10, 1.1, "mg/dL", pid="p2"),
        observation("2160-0", 10, 0.9, "mg/dL", pid="p1"),
        condition("44054006", pid="p1"))) + "\n")
    source = BundleSource(tmp_path)
    one = asyncio.run(source.patient_record("p1"))
    two = asyncio.run(source.patient_record("p2"))
    assert [(o.code.codings[0].code, o.value_quantity.value if o.value_quantity else None)
            for o in one.observations] == [("4548-4", 7.0), ("2160-0", 0.9)]
    assert [c.code.codings[0].code for c in one.conditions] == ["44054006"]
    assert [(o.code.codings[0].code, o.value_quantity.value if o.value_quantity else None)
            for o in two.observations] == [("4548-4", 9.0), ("2160-0", 1.1)]
    assert two.conditions == ()
    assert source.problems() == []


def test_records_are_read_from_the_files_when_asked_for(tmp_path: Path) -> None:
    """A one-patient file is not held after the scan: the record is read from it again,
    keeping only what the scan kept (the first of a duplicate)."""
    cond = condition("44054006", pid="p1")
    write(tmp_path, "a.json", bundle(patient(pid="p1"), cond))
    write(tmp_path, "b.json", bundle(patient(pid="p2", sex="male"), cond,
                                     condition("38341003", pid="p2")))
    source = BundleSource(tmp_path)
    source.load()
    assert [p.message for p in source.problems()] == [
        f"Condition/{cond['id']} also appears in {tmp_path / 'a.json'} entry[1]; "
        "the first one is used"]
    (tmp_path / "a.json").write_text('{"resourceType": "Bundle", "entry": [')
    with pytest.raises(PatientReadError, match="not valid JSON") as err:
        asyncio.run(source.patient_record("p1"))
    assert err.value.patient_id == "p1"
    record = asyncio.run(source.patient_record("p2"))
    assert [c.code.codings[0].code for c in record.conditions] == ["38341003"]
    assert record.patient.sex == "male"


def test_a_record_loader_reads_the_same_record_in_another_process(tmp_path: Path) -> None:
    med = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]}}
    request = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active",
               "intent": "order", "subject": {"reference": "Patient/p1"},
               "medicationReference": {"reference": "Medication/m1"}, "authoredOn": "2026-01-01"}
    write(tmp_path, "p1.json", bundle(patient(pid="p1"), request, condition("44054006")))
    write(tmp_path, "shared.ndjson", json.dumps(med) + "\n" + json.dumps(
        observation("4548-4", 30, 7.0, "%", pid="p2")) + "\n" + json.dumps(
        observation("4548-4", 40, 6.5, "%", pid="p1")) + "\n")
    source = BundleSource(tmp_path)
    loader = source.record_loader("p1")
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(load_record, pickle.loads(pickle.dumps(loader))).result()
    local = asyncio.run(source.patient_record("p1"))
    assert remote == local
    assert local.medications[0].medication.codings[0].code == "314076"
    assert [o.value_quantity.value for o in local.observations
            if o.value_quantity is not None] == [6.5]
    with pytest.raises(PatientReadError) as err, ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(load_record, source.record_loader("ghost")).result()
    assert (err.value.patient_id, str(err.value)) == (
        "ghost", "no Patient resource in the bundle folder")


def test_records_may_be_read_concurrently(tmp_path: Path) -> None:
    for n in range(8):
        write(tmp_path, f"p{n}.json", bundle(patient(pid=f"p{n}"),
                                             observation("4548-4", n + 1, 6.0 + n, "%",
                                                         pid=f"p{n}")))
    source = BundleSource(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        records = list(pool.map(lambda n: asyncio.run(source.patient_record(f"p{n}")),
                                [*range(8), *range(8)]))
    assert [r.observations[0].value_quantity.value for r in records
            if r.observations[0].value_quantity is not None] == [
        6.0 + n for n in [*range(8), *range(8)]]


def test_duplicates_are_found_in_the_same_file_across_files_and_past_a_hash_collision(
        tmp_path: Path) -> None:
    cond = {"resourceType": "Condition", "id": "c1"}
    write(tmp_path, "a.json", bundle(patient(pid="p1"), cond))
    write(tmp_path, "b.ndjson", "\n".join(json.dumps(r) for r in (
        {"resourceType": "Observation", "id": "o1"}, {"resourceType": "Observation",
                                                       "id": "o1"}, cond)) + "\n")
    write(tmp_path, "c.ndjson", json.dumps(cond) + "\n")
    files = sorted(tmp_path.iterdir())
    seen = _Seen(files)
    seen.digest = lambda key: 7  # every key collides: only the exact comparison is left
    a, b, _ = (str(f) for f in files)
    assert seen.first("Patient/p1", at=0) is None
    assert seen.first("Condition/c1", at=1) is None
    assert seen.first("Observation/o1", at=1 << 32) is None
    assert seen.first("Observation/o1", at=1 << 32 | 1) == \
        f"{b} line 1"
    assert seen.first("Condition/c1", at=1 << 32 | 2) == \
        f"{a} entry[1]"
    # b.ndjson holds Condition/c1 as well, and has a slot (for Observation/o1) of the same
    # hash: the first place is still the one reported.
    assert seen.first("Condition/c1", at=2 << 32) == f"{a} entry[1]"
    assert seen.first("Patient/p1", at=2 << 32 | 5) == f"{a} entry[0]"
    # A key of the same hash that no earlier file holds is new.
    assert seen.first("Condition/c2", at=2 << 32 | 6) is None


def test_the_duplicate_index_grows_and_keeps_every_key(tmp_path: Path) -> None:
    lines = [json.dumps({"resourceType": "Observation", "id": f"o{n}"}) for n in range(9000)]
    write(tmp_path, "a.ndjson", "\n".join(lines) + "\n")
    seen = _Seen([tmp_path / "a.ndjson"])
    assert [seen.first(f"Observation/o{n}", at=n)
            for n in range(9000)] == [None] * 9000
    assert len(seen._table) == 16384  # 4,096 slots at first, doubled at 2,731 and 5,462
    assert seen.first("Observation/o0", at=9000) == \
        f"{tmp_path / 'a.ndjson'} line 1"
    assert seen.first("Observation/o8999", at=9001) == \
        f"{tmp_path / 'a.ndjson'} line 9000"
    assert seen.first("Observation/o9000", at=9002) is None


def test_a_duplicate_in_the_same_file_is_reported_with_its_first_place(
        tmp_path: Path) -> None:
    cond = condition("44054006", pid="p1")
    write(tmp_path, "a.ndjson", "\n".join(json.dumps(r) for r in (
        patient(pid="p1"), cond, cond, cond)) + "\n")
    source = BundleSource(tmp_path)
    record = asyncio.run(source.patient_record("p1"))
    assert len(record.conditions) == 1
    first = f"{tmp_path / 'a.ndjson'} line 2"
    assert [(Path(p.where).name, p.message) for p in source.problems()] == [
        ("a.ndjson line 3", f"Condition/{cond['id']} also appears in {first}; the first "
         "one is used"),
        ("a.ndjson line 4", f"Condition/{cond['id']} also appears in {first}; the first "
         "one is used")]


# --- the scan read by worker processes ------------------------------------------------------


def _mixed_folder(folder: Path) -> None:
    """Files of every kind the scan meets, in a known order (sorted paths)."""
    shared_cond = condition("44054006", pid="p2")
    shared_cond["id"] = "dup-cond"
    med = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]}}
    request = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active",
               "intent": "order", "subject": {"reference": "Patient/p1"},
               "medicationReference": {"reference": "Medication/m1"},
               "authoredOn": "2026-01-01",
               "identifier": [{"system": "urn:x", "value": "rx-1"}]}
    write(folder, "a0.json", bundle(appointment("a1", "2026-12-01T09:00:00-06:00"),
                                    appointment("a2", "2026-12-01T10:00:00-06:00", pid="p2"),
                                    {**appointment("a3", "2026-12-01T11:00:00-06:00"),
                                     "id": 7}))
    write(folder, "p1.json", bundle(patient(pid="p1"), request, med,
                                    observation("4548-4", 30, 7.0, "%")))
    write(folder, "p2.json", bundle(patient(pid="p2"), shared_cond, shared_cond))
    write(folder, "p3.json", '{"resourceType": "Bundle", "entry": [')
    write(folder, "p4.json", bundle(patient(pid="p4"), shared_cond,
                                    observation("4548-4", 5, 8.0, "%", pid="ghost")))
    write(folder, "q.ndjson", "\n".join(json.dumps(r) for r in (
        observation("2160-0", 10, 1.1, "mg/dL", pid="p2"),
        observation("2160-0", 10, 0.9, "mg/dL", pid="p1"))) + "\n{oops\n")
    for n in range(5, 12):
        write(folder, f"r{n:02}.json", bundle(patient(pid=f"p{n}"),
                                              observation("4548-4", n, 6.0, "%", pid=f"p{n}")))


def _state(source: BundleSource) -> dict[str, Any]:
    return {"problems": [(Path(p.where).name, p.message) for p in source.problems()],
            "appointments": source._appointments.tolist(),
            "patients": source._patient_files, "held": source._held,
            "wanted": source._wanted, "medications": source._medications,
            "set_aside": source._set_aside, "identifiers": source._identifiers,
            "records": {pid: source.record_loader(pid).load()
                        for pid in ("p1", "p2", *(f"p{n}" for n in range(5, 12)))}}


class _CountingPool(ProcessPoolExecutor):
    """A pool whose workers run before the scan starts and which takes each task as it is
    given (the scan reads files itself only while its pool starts, or when no worker has
    taken a task yet: this leaves it no such gap). `done`: a task finished by a worker."""

    done: ClassVar[list[bool]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        super().submit(int).result()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(fn, *args, **kwargs)
        if fn is not int:
            while not (future.running() or future.done()):
                time.sleep(0.001)
            future.add_done_callback(lambda f: _CountingPool.done.append(
                not f.cancelled() and f.exception() is None))
        return future


class _StartedAtOnce:
    """The scan's pool starter, run to its end when started (no file is read meanwhile)."""

    def __init__(self, target: Any, **_: Any) -> None:
        self.target = target

    def start(self) -> None:
        self.target()

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        return None


def test_a_large_folder_is_scanned_by_worker_processes_with_the_same_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed_folder(tmp_path)
    alone = BundleSource(tmp_path, processes=0)
    alone.load()
    monkeypatch.setattr(bundles, "_CHUNK_BYTES", 1)  # a task a file
    monkeypatch.setattr(bundles, "_POOL_MIN_CHUNKS", 2)
    monkeypatch.setattr(bundles, "ProcessPoolExecutor", _CountingPool)
    monkeypatch.setattr(bundles, "Thread", _StartedAtOnce)
    _CountingPool.done = []
    pooled = BundleSource(tmp_path, processes=2)
    pooled.load()
    assert any(_CountingPool.done)  # some files were read by a worker
    assert _state(pooled) == _state(alone)
    first = f"{tmp_path / 'p2.json'} entry[1]"
    assert _state(pooled)["problems"] == [
        ("a0.json entry[2]", "Appointment.id is not a string; skipped"),
        ("p2.json entry[2]", f"Condition/dup-cond also appears in {first}; the first one "
                             "is used"),
        ("p3.json", "not valid JSON: Expecting value at line 1 column 38; file skipped"),
        ("p4.json entry[1]", f"Condition/dup-cond also appears in {first}; the first one "
                             "is used"),
        ("q.ndjson line 3", "not valid JSON: Expecting property name enclosed in double "
                            "quotes at line 1 column 2")]
    # the file of p4 and another patient is held; p1's Medication is found for its order
    assert sorted(pooled._held) == [(4, "ghost"), (4, "p4"), (5, "p1"), (5, "p2")]
    assert pooled._wanted == {"p1": {"Medication/m1"}}
    assert pooled._identifiers == {("urn:x", "rx-1"): "MedicationRequest/mr1"}
    assert pooled._appointments.tolist() == [0, 1, 2]


@pytest.mark.parametrize("when", ["scanning", "answering", "no room to answer"])
def test_a_worker_that_dies_while_scanning_costs_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        when: str) -> None:
    _mixed_folder(tmp_path)
    alone = BundleSource(tmp_path, processes=0)
    alone.load()
    parent = os.getpid()
    if when == "scanning":
        real_scan = bundles.scan_files

        def dying_scan(paths: Any) -> Any:  # in a worker, as if killed (out of memory)
            if os.getpid() != parent:
                os._exit(9)
            return real_scan(paths)

        monkeypatch.setattr(bundles, "scan_files", dying_scan)
    else:
        real_answer = bundles.scans_answer

        def dying_answer(paths: Any, into: str) -> Any:  # killed with its answer written
            if when == "no room to answer":  # the worker lives; its answer is lost
                raise OSError(28, "No space left on device")
            real_answer(paths, into)
            os._exit(9)

        # the task is named by reference: the forked worker finds this one by that name
        dying_answer.__module__, dying_answer.__qualname__ = \
            real_answer.__module__, real_answer.__qualname__
        monkeypatch.setattr(bundles, "scans_answer", dying_answer)
    # Forked workers see this module's patches (a fork server's would not).
    monkeypatch.setattr(bundles, "pool_context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(bundles, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(bundles, "_POOL_MIN_CHUNKS", 2)
    monkeypatch.setattr(bundles, "ProcessPoolExecutor", _CountingPool)
    monkeypatch.setattr(bundles, "Thread", _StartedAtOnce)
    _CountingPool.done = []
    pooled = BundleSource(tmp_path, processes=2)
    with caplog.at_level(logging.WARNING, logger="previsit.sources.bundles"):
        pooled.load()
    assert _CountingPool.done and not any(_CountingPool.done)  # every worker task failed
    assert _state(pooled) == _state(alone)
    assert [r.getMessage() for r in caplog.records] == ([] if when == "no room to answer" else [
        "a worker process reading the bundle folder died; the files it held are read in "
        "this process"])


class _NoPool:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("no semaphores here")


def test_a_pool_that_cannot_be_made_leaves_the_scan_to_the_run_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _mixed_folder(tmp_path)
    alone = BundleSource(tmp_path, processes=0)
    alone.load()
    monkeypatch.setattr(bundles, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(bundles, "_POOL_MIN_CHUNKS", 2)
    monkeypatch.setattr(bundles, "ProcessPoolExecutor", _NoPool)
    pooled = BundleSource(tmp_path, processes=2)
    with caplog.at_level(logging.WARNING, logger="previsit.sources.bundles"):
        pooled.load()
    assert _state(pooled) == _state(alone)
    assert [r.getMessage() for r in caplog.records] == [
        "worker processes could not be started; the bundle folder is read in this process"]


def test_a_medication_reference_that_is_not_a_string_costs_one_resource_not_the_folder(
        tmp_path: Path) -> None:
    order = {"resourceType": "MedicationRequest", "id": "mr", "status": "active",
             "intent": "order", "subject": {"reference": "urn:uuid:a"},
             "medicationReference": {"reference": ["x"]}, "authoredOn": "2026-01-01",
             "identifier": 5}  # nor is this identifier a list: not one to match
    write(tmp_path, "a.json", {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": patient(pid="A")}, {"resource": order}]})
    write(tmp_path, "b.json", {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": patient(pid="A")}, {"resource": order}]})
    source = BundleSource(tmp_path)
    record = asyncio.run(source.patient_record("A"))
    assert record.patient.id == "A"
    assert source._identifiers == {}
    assert [(Path(p.where).name, p.message.split(" also ")[0]) for p in source.problems()] \
        == [("b.json entry[0]", "Patient/A"), ("b.json entry[1]", "MedicationRequest/mr")]
