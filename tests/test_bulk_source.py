"""BulkSource against a mocked Bulk Data server (respx): the kick-off, polling, the
manifest, downloads, the local store, incremental nights, and every way an export can
fail — each ending either in records from the export or in records read by search, never
in a record planned from incomplete data. Sleeps and the clock are injected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import respx
from builders import RXNORM, condition, json_response, observation, patient

import previsit.sources.bulkstore as bulkstore
from previsit.auth import BearerToken
from previsit.config import load_config, requested_scope
from previsit.errors import SourceError
from previsit.record import PatientRecord
from previsit.sources import Source, VisitWindow
from previsit.sources.bulk import BulkSource, parse_manifest
from previsit.sources.bulkstore import export_types, lines, patient_of, reference_id
from previsit.sources.http import HttpSource, RetryPolicy

BASE = "https://ehr.example/fhir/R4"
STATUS = f"{BASE}/$export-poll/job1"
T1 = "2026-11-30T02:00:00.000Z"
T2 = "2026-12-01T02:00:00.000Z"
NOW = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
TYPES = ("Patient,Condition,MedicationRequest,Medication,Observation,Procedure,"
         "Immunization,ServiceRequest,Encounter,MedicationDispense,MedicationStatement")
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def ndjson(*resources: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in resources)


def medication_request(rid: str, medication: str, pid: str) -> dict[str, Any]:
    # Absolute references, as an export may write them (the IG allows both forms).
    return {"resourceType": "MedicationRequest", "id": rid, "status": "active",
            "intent": "order", "authoredOn": "2026-06-01",
            "subject": {"reference": f"{BASE}/Patient/{pid}"},
            "medicationReference": {"reference": f"{BASE}/Medication/{medication}"}}


LISINOPRIL = {"resourceType": "Medication", "id": "med-lisinopril",
              "code": {"coding": [{"system": RXNORM, "code": "314076",
                                   "display": "lisinopril 10 MG Oral Tablet"}]}}


class Server:
    """A mocked FHIR server with Bulk Data: one export job at a time, scripted per test,
    and a search API answering records from `charts`."""

    def __init__(self, *, token: str | None = None) -> None:
        self.router = respx.MockRouter(base_url=BASE, assert_all_called=False)
        self.client = httpx.AsyncClient(auth=BearerToken(token) if token else None,
                                        transport=httpx.MockTransport(
                                            self.router.async_handler))
        self.charts: dict[str, list[dict[str, Any]]] = {}
        self.searched: list[str] = []  # patients whose record was read by search
        self.router.route(method="GET", path__regex=(
            r"/(Patient/[^/$]+|Condition|MedicationRequest|Observation|Procedure|"
            r"Immunization|ServiceRequest|Encounter|MedicationDispense|MedicationStatement)$"
        )).mock(side_effect=self._search_api)
        self.delete = self.router.delete("/$export-poll/job1").mock(
            return_value=httpx.Response(202))

    def _search_api(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/R4/")
        if path.startswith("Patient/"):
            pid = path.split("/")[1]
            self.searched.append(pid)
            chart = self.charts.get(pid)
            if chart is None:
                return json_response({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-found"}]}, 404)
            return json_response(chart[0])
        found = [r for r in self.charts.get(request.url.params["patient"], [])
                 if r["resourceType"] == path]
        return json_response({"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"resource": r} for r in found]})

    def kickoff(self, *responses: httpx.Response) -> respx.Route:
        answers = list(responses) or [httpx.Response(202, headers={"Content-Location": STATUS})]
        return self.router.get("/Group/panel/$export").mock(side_effect=answers)

    def export(self, files: dict[str, Sequence[Any]], *, polls: Sequence[httpx.Response] = (),
               errors: Sequence[Any] = (), deleted: Sequence[Any] = (),
               requires_token: bool = True, transaction_time: str = T1,
               file_base: str = BASE) -> respx.Route:
        """Script one export: the kick-off, `polls` answers before the manifest, the files."""
        self.kickoff()
        manifest: dict[str, Any] = {
            "transactionTime": transaction_time, "request": f"{BASE}/Group/panel/$export",
            "requiresAccessToken": requires_token, "output": [], "error": [], "deleted": []}
        for kind, items in (("output", files.items()), ("error", [("OperationOutcome",
                                                                    errors)] if errors else []),
                            ("deleted", [("Bundle", deleted)] if deleted else [])):
            for rtype, lines_ in items:
                url = f"{file_base}/$export-file/{kind}-{rtype}.ndjson"
                manifest[kind].append({"type": rtype, "url": url})
                self.router.get(url).mock(return_value=httpx.Response(
                    200, text=ndjson(*lines_), headers={"Content-Type": "application/fhir+ndjson"}))
        return self.router.get("/$export-poll/job1").mock(side_effect=[
            *polls, httpx.Response(200, json=manifest)])

    def group(self, *members: str) -> respx.Route:
        return self.router.get("/Group/panel").mock(return_value=json_response({
            "resourceType": "Group", "id": "panel", "type": "person", "actual": True,
            "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members]}))

    def kickoffs(self) -> list[httpx.Request]:
        """The kick-off requests the source sent, in order."""
        return [c.request for r in self.router.routes for c in r.calls
                if c.request.url.path.endswith("/$export")]


class Harness:
    def __init__(self, folder: Path, server: Server | None = None, **options: Any) -> None:
        self.server = server or Server()
        self.sleeps: list[float] = []
        self.now = NOW

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        retry = RetryPolicy(sleep=sleep, now=lambda: self.now)
        search = HttpSource(self.server.client, BASE, use_batch=False, retry=retry)
        self.source = BulkSource(search, self.server.client, group_id="panel",
                                 state_folder=folder, retry=retry, **options)

    def records(self, *pids: str) -> dict[str, PatientRecord]:
        async def read() -> dict[str, PatientRecord]:
            try:
                return {pid: await self.source.patient_record(pid) for pid in pids}
            finally:
                await self.source.aclose()
        return run(read())

    def problems(self) -> list[str]:
        return [f"{p.where}: {p.message}" for p in self.source.problems()]


def two_patients() -> dict[str, list[Any]]:
    return {"Patient": [patient(pid="p1"), patient(60, "male", pid="p2")],
            "Condition": [condition("44054006", pid="p2", display="Diabetes type 2"),
                          condition("38341003", pid="p1", display="Hypertension")],
            "MedicationRequest": [medication_request("mr1", "med-lisinopril", "p1")],
            "Medication": [LISINOPRIL],
            "Observation": [observation("4548-4", 30, 7.1, "%", pid="p2")]}


# --- what is asked for ---------------------------------------------------------------------


def test_the_export_asks_for_what_a_record_is_built_from() -> None:
    # record.RECORD_SEARCHES, the Medication its MedicationRequest search _includes, Patient
    assert ",".join(export_types()) == TYPES


def test_the_kick_off_asks_the_panel_asynchronously_for_those_types(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.records("p1")
    [request] = h.server.kickoffs()
    assert request.url.params["_type"] == TYPES
    assert "_since" not in request.url.params
    assert request.headers["Prefer"] == "respond-async"
    assert request.headers["Accept"] == "application/fhir+json"


# --- records from the export -----------------------------------------------------------------


def test_each_record_holds_its_own_resources_and_resolves_absolute_references(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    records = h.records("p1", "p2")
    p1, p2 = records["p1"], records["p2"]
    assert [c.code.codings[0].code for c in p1.conditions] == ["38341003"]
    assert [c.code.codings[0].code for c in p2.conditions] == ["44054006"]
    assert [o.code.codings[0].code for o in p2.observations] == ["4548-4"]
    assert p1.observations == ()
    # the Medication, not in anyone's compartment, is found through the absolute reference
    assert [(m.medication.codings[0].system, m.medication.codings[0].code)
            for m in p1.medications] == [(RXNORM, "314076")]
    assert (p1.patient.sex, p2.patient.sex) == ("female", "male")
    assert h.server.searched == []  # nothing was read by search
    assert h.problems() == []


def test_polling_honours_retry_after_and_otherwise_backs_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients(), polls=[
        httpx.Response(202, headers={"X-Progress": "10% complete", "Retry-After": "5"}),
        httpx.Response(202, headers={"X-Progress": "in progress"}),
        httpx.Response(202),
        httpx.Response(202, headers={"Retry-After": "Mon, 30 Nov 2026 02:30:30 GMT"})])
    with caplog.at_level(logging.INFO, logger="previsit.sources.bulk"):
        h.records("p1")
    assert h.sleeps == [5.0, 2.0, 4.0, 30.0]  # Retry-After; 1 s doubling; an HTTP-date
    assert "bulk export in progress (10% complete); asking again in 5 s" in caplog.text
    assert "bulk export in progress (in progress)" in caplog.text
    assert h.server.searched == []


def test_the_job_is_deleted_once_its_files_are_in(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.records("p1")
    assert h.server.delete.call_count == 1


def test_files_are_fetched_with_the_token_when_the_manifest_requires_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, Server(token="s3cret"))
    h.server.export(two_patients(), requires_token=True)
    h.records("p1")
    file_calls = [c for r in h.server.router.routes for c in r.calls
                  if "/$export-file/" in c.request.url.path]
    assert len(file_calls) == 5
    assert all(c.request.headers["Authorization"] == "Bearer s3cret" for c in file_calls)
    assert all(c.request.headers["Accept"] == "application/fhir+ndjson" for c in file_calls)


def test_files_that_need_no_token_get_none_wherever_they_are(tmp_path: Path) -> None:
    h = Harness(tmp_path, Server(token="s3cret"))
    h.server.export(two_patients(), requires_token=False,
                    file_base="https://files.example/signed")
    assert h.records("p1")["p1"].conditions
    file_calls = [c for r in h.server.router.routes for c in r.calls
                  if "/$export-file/" in c.request.url.path]
    assert len(file_calls) == 5
    assert all("Authorization" not in c.request.headers for c in file_calls)


def test_the_token_is_not_sent_to_another_host(tmp_path: Path) -> None:
    h = Harness(tmp_path, Server(token="s3cret"))
    h.server.charts["p1"] = [patient(pid="p1")]
    h.server.export(two_patients(), requires_token=True, file_base="https://files.example")
    h.records("p1")
    assert h.server.searched == ["p1"]  # every record by search instead
    assert not [c for r in h.server.router.routes for c in r.calls
                if c.request.url.host == "files.example"]
    assert "previsit sends its access token to the FHIR server only" in h.problems()[0]


# --- the store on disk -------------------------------------------------------------------------


def test_the_state_folder_is_private_and_remembers_the_export(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    h = Harness(folder)
    h.server.export(two_patients())
    h.records("p1")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "store.sqlite").stat().st_mode) == 0o600
    assert json.loads((folder / "state.json").read_text()) == {
        "version": 1, "server": BASE, "group": "panel", "types": TYPES.split(","),
        "since": T1, "full_at": T1}
    assert sorted(p.name for p in folder.iterdir()) == ["lock", "state.json", "store.sqlite"]


def test_two_runs_cannot_share_a_state_folder(tmp_path: Path) -> None:
    first, second = Harness(tmp_path), Harness(tmp_path)
    first.server.export(two_patients())

    async def both() -> None:
        first.source._start()
        try:
            with pytest.raises(SourceError, match="in use by another previsit run"):
                await second.source.patient_record("p1")
        finally:
            await first.source.aclose()
            await second.source.aclose()

    run(both())


def test_a_line_longer_than_the_limit_is_skipped_without_reading_it_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulkstore, "MAX_LINE_BYTES", 16)
    path = tmp_path / "x.ndjson"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 100 + b"\n\n" + b'{"b": 2}')
    assert list(lines(path)) == [(1, b'{"a": 1}'), (2, None), (4, b'{"b": 2}')]


def test_references_are_read_relative_absolute_and_versioned() -> None:
    assert reference_id("Patient/p1", "Patient") == "p1"
    assert reference_id(f"{BASE}/Patient/p1", "Patient") == "p1"
    assert reference_id("Patient/p1/_history/3", "Patient") == "p1"
    assert reference_id("Group/p1", "Patient") is None
    assert reference_id("urn:uuid:1234", "Patient") is None
    assert patient_of({"resourceType": "Immunization", "patient": {
        "reference": "Patient/p7"}}) == "p7"
    assert patient_of({"resourceType": "Patient", "id": "p8"}) == "p8"
    assert patient_of({"resourceType": "Observation"}) is None


# --- one patient's problem ----------------------------------------------------------------------


def test_a_malformed_line_sends_its_patient_to_search_and_the_rest_to_the_export(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    files = two_patients()
    files["Observation"] = [
        *files["Observation"],
        '{"resourceType": "Observation", "id": "o9", "subject": {"reference": "Patient/p2"}, '
        '"code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"',  # cut short
    ]
    h.server.export(files)
    h.server.charts["p2"] = [patient(60, "male", pid="p2"),
                             observation("2345-7", 3, 98, "mg/dL", pid="p2")]
    records = h.records("p1", "p2")
    assert h.server.searched == ["p2"]
    assert [o.code.codings[0].code for o in records["p2"].observations] == ["2345-7"]
    assert [c.code.codings[0].code for c in records["p1"].conditions] == ["38341003"]
    [problem] = h.source.problems()
    assert problem.where == "the export's Observation file 1 line 2"
    assert problem.patient_id == "p2"
    assert "malformed line" in problem.message and "read by search instead" in problem.message
    # the next export is a full one: a _since export would not send the lost line again
    assert not (tmp_path / "state.json").exists()


def test_an_unattributable_line_is_reported_and_the_next_export_is_full(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    files = two_patients()
    files["Condition"] = [*files["Condition"], "{not json at all"]
    h.server.export(files)
    h.records("p1", "p2")
    assert h.server.searched == []
    assert h.problems() == ["the export's Condition file 1 line 3: not a FHIR resource as JSON "
                            "(a malformed line); skipped"]
    assert not (tmp_path / "state.json").exists()


def test_errors_in_the_manifest_are_reported_and_their_patient_read_by_search(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients(), errors=[
        {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "processing",
             "diagnostics": "Observation/o77 of Patient/p2 could not be exported"}]},
        {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": "42 files"}]}])
    h.server.charts["p2"] = [patient(60, "male", pid="p2")]
    h.records("p1", "p2")
    assert h.server.searched == ["p2"]
    assert h.problems() == [
        "the export's error file 1 line 1: the server could not export something: error "
        "(processing): Observation/o77 of Patient/p2 could not be exported"]
    assert not (tmp_path / "state.json").exists()


def test_a_patient_not_on_the_panel_is_read_by_search(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.server.charts["p3"] = [patient(70, pid="p3"), condition("44054006", pid="p3")]
    records = h.records("p3", "p1")
    assert h.server.searched == ["p3"]
    assert records["p3"].patient.id == "p3"
    assert h.problems() == []


# --- the export fails: every record by search -----------------------------------------------


def _fails_over_to_search(h: Harness, *words: str) -> None:
    h.server.charts["p1"] = [patient(pid="p1"), condition("38341003", pid="p1")]
    record = h.records("p1")["p1"]
    assert [c.code.codings[0].code for c in record.conditions] == ["38341003"]
    assert h.server.searched == ["p1"]
    [problem] = h.problems()
    assert problem.startswith("bulk export of Group/panel: ")
    assert problem.endswith("; every record was read by search instead")
    for word in words:
        assert word in problem
    assert not (h.source._folder / "state.json").exists()


def test_a_failed_job_falls_back_to_search(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.kickoff()
    h.server.router.get("/$export-poll/job1").mock(side_effect=[
        httpx.Response(202, headers={"Retry-After": "1"}),
        json_response({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing",
            "details": {"text": "An internal timeout has occurred"}}]}, 500)])
    _fails_over_to_search(h, "the server's bulk export failed — polling the bulk export: HTTP 500",
                          "An internal timeout has occurred")
    assert h.server.delete.call_count == 1  # the job is cancelled


def test_a_transient_status_failure_is_retried(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients(), polls=[
        httpx.Response(503, headers={"Retry-After": "7"}),
        json_response({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "transient", "diagnostics": "try later"}]}, 500),
        httpx.Response(429)])
    assert h.records("p1")["p1"].conditions
    assert h.server.searched == []
    assert h.sleeps[0] == 7.0 and len(h.sleeps) == 3


def test_a_refused_kick_off_falls_back_to_search(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.kickoff(json_response({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "not-supported",
        "diagnostics": "Group export is not enabled"}]}, 400))
    _fails_over_to_search(h, "starting the bulk export", "HTTP 400",
                          "Group export is not enabled")


def test_a_kick_off_busy_with_another_export_waits_as_asked(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.server.kickoff(httpx.Response(429, headers={"Retry-After": "20"}),
                     httpx.Response(202, headers={"Content-Location": STATUS}))
    assert h.records("p1")["p1"].conditions
    assert h.sleeps == [20.0]


def test_a_kick_off_without_a_status_url_falls_back_to_search(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.kickoff(httpx.Response(202))
    _fails_over_to_search(h, "has no Content-Location")


def test_an_export_that_does_not_finish_in_time_is_cancelled(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_export_seconds=1000)
    h.server.kickoff()
    h.server.router.get("/$export-poll/job1").mock(return_value=httpx.Response(
        202, headers={"Retry-After": "600", "X-Progress": "Exported 10 of 90 patients"}))
    _fails_over_to_search(h, "did not finish within 1000 s (bulk.max_export_seconds)",
                          "last progress: Exported 10 of 90 patients")
    assert h.sleeps == [600.0]
    assert h.server.delete.call_count == 1


def test_a_file_that_fails_to_download_falls_back_to_search(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.server.router.get(f"{BASE}/$export-file/output-Observation.ndjson").mock(
        return_value=httpx.Response(404, text="gone"))
    _fails_over_to_search(h, "downloading the export's Observation file 1", "HTTP 404")


def test_a_file_larger_than_the_cap_is_not_read_and_falls_back_to_search(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, max_file_bytes=1000)
    h.server.export(two_patients())
    h.server.router.get(f"{BASE}/$export-file/output-Observation.ndjson").mock(
        return_value=httpx.Response(200, text='{"resourceType": "Observation"}\n' * 100))
    _fails_over_to_search(h, "downloading the export's Observation file 1",
                          "larger than bulk.max_file_bytes (1,000 bytes)")


def test_an_endless_error_page_is_read_only_in_part(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    h.server.router.get(f"{BASE}/$export-file/output-Observation.ndjson").mock(
        return_value=httpx.Response(404, content=endless()))
    _fails_over_to_search(h, "downloading the export's Observation file 1", "HTTP 404")


def test_a_file_download_cut_short_is_retried_from_the_start(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.server.router.get(f"{BASE}/$export-file/output-Condition.ndjson").mock(side_effect=[
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.Response(503),
        httpx.Response(200, text=ndjson(*two_patients()["Condition"]))])
    records = h.records("p1", "p2")
    assert [c.code.codings[0].code for c in records["p2"].conditions] == ["44054006"]
    assert h.server.searched == []
    assert len(h.sleeps) == 2


def test_an_unusable_manifest_falls_back_to_search(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.kickoff()
    h.server.router.get("/$export-poll/job1").mock(return_value=httpx.Response(
        200, json={"request": "x", "output": []}))
    _fails_over_to_search(h, "the bulk export's manifest cannot be used: it has no "
                             "transactionTime")


@pytest.mark.parametrize(("manifest", "words"), [
    ([], "not a JSON object"),
    ({"transactionTime": T1, "requiresAccessToken": "yes", "output": []},
     "requiresAccessToken is not true or false"),
    ({"transactionTime": T1, "output": {}}, "output is not a list"),
    ({"transactionTime": T1, "output": [{"type": "Patient"}]}, "an item of output has no"),
])
def test_a_manifest_says_what_is_wrong_with_it(manifest: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_manifest(manifest)


def test_a_manifest_without_error_or_deleted_lists_is_read() -> None:
    manifest = parse_manifest({"transactionTime": T1, "output": [
        {"type": "Patient", "url": f"{BASE}/f1", "count": 2}]})
    assert manifest.requires_token is True
    assert (manifest.error, manifest.deleted) == ((), ())
    assert [f.type for f in manifest.output] == ["Patient"]


# --- incremental nights --------------------------------------------------------------------------


def _first_night(folder: Path) -> dict[str, list[Any]]:
    """A clean full export into `folder`; returns what it exported."""
    files = two_patients()
    h = Harness(folder)
    h.server.export(files)
    h.records("p1")
    return files


def test_the_next_night_exports_only_what_changed_and_applies_it(tmp_path: Path) -> None:
    first = _first_night(tmp_path)
    h = Harness(tmp_path)
    h.now = NOW + timedelta(days=1)
    h.server.group("p1", "p2")
    new_a1c = observation("4548-4", 1, 8.4, "%", pid="p1")
    old_condition = first["Condition"][1]  # p1's hypertension
    status = h.server.export({"Observation": [new_a1c]}, transaction_time=T2, deleted=[
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": f"Condition/{old_condition['id']}"}}]}])
    records = h.records("p1", "p2")
    [kickoff] = h.server.kickoffs()
    assert kickoff.url.params["_since"] == T1
    assert status.call_count == 1
    assert [o.value_quantity.value for o in records["p1"].observations
            if o.value_quantity] == [8.4]
    assert records["p1"].conditions == ()  # deleted
    assert [c.code.codings[0].code for c in records["p2"].conditions] == ["44054006"]
    assert h.server.searched == []
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["since"], state["full_at"]) == (T2, T1)


def test_a_patient_who_left_the_panel_is_read_by_search(tmp_path: Path) -> None:
    _first_night(tmp_path)
    h = Harness(tmp_path)
    h.server.group("p1", "p3")  # p2 left, p3 joined
    h.server.export({}, transaction_time=T2)
    h.server.charts["p2"] = [patient(60, "male", pid="p2")]
    h.server.charts["p3"] = [patient(40, pid="p3")]
    h.records("p1", "p2", "p3")
    assert h.server.searched == ["p2", "p3"]


def test_a_week_after_the_last_full_export_everything_is_exported_again(tmp_path: Path) -> None:
    _first_night(tmp_path)
    h = Harness(tmp_path)
    h.now = NOW + timedelta(days=7)
    h.server.group("p1", "p2")
    h.server.export(two_patients(), transaction_time=T2)
    h.records("p1")
    [kickoff] = h.server.kickoffs()
    assert "_since" not in kickoff.url.params
    assert json.loads((tmp_path / "state.json").read_text())["full_at"] == T2


def test_an_unreadable_group_means_a_full_export(tmp_path: Path) -> None:
    _first_night(tmp_path)
    h = Harness(tmp_path)
    h.server.router.get("/Group/panel").mock(return_value=httpx.Response(403))
    h.server.export(two_patients(), transaction_time=T2)
    h.records("p1")
    [kickoff] = h.server.kickoffs()
    assert "_since" not in kickoff.url.params


def test_another_panel_or_incremental_off_means_a_full_export(tmp_path: Path) -> None:
    _first_night(tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**state, "group": "other-panel"}))
    h = Harness(tmp_path)
    h.server.group("p1", "p2")
    h.server.export(two_patients(), transaction_time=T2)
    h.records("p1")
    assert "_since" not in h.server.kickoffs()[0].url.params

    h = Harness(tmp_path, incremental=False)
    h.server.group("p1", "p2")
    h.server.export(two_patients(), transaction_time=T2)
    h.records("p1")
    assert "_since" not in h.server.kickoffs()[0].url.params


def test_a_failed_incremental_night_keeps_the_last_store_and_state(tmp_path: Path) -> None:
    _first_night(tmp_path)
    before = (tmp_path / "state.json").read_bytes()
    h = Harness(tmp_path)
    h.server.group("p1", "p2")
    h.server.export({"Observation": [observation("4548-4", 1, 8.4, "%", pid="p1")]},
                    transaction_time=T2)
    h.server.router.get(f"{BASE}/$export-file/output-Observation.ndjson").mock(
        return_value=httpx.Response(410))
    h.server.charts["p1"] = [patient(pid="p1")]
    h.records("p1")
    assert h.server.searched == ["p1"]
    assert (tmp_path / "state.json").read_bytes() == before
    # the store still answers as of the last clean export
    h = Harness(tmp_path)
    h.server.group("p1", "p2")
    h.server.export({}, transaction_time=T2)
    assert [c.code.codings[0].code for c in h.records("p1")["p1"].conditions] == ["38341003"]


# --- the source as the run sees it ------------------------------------------------------------


def test_appointments_and_write_back_go_through_the_search_api(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.server.router.get("/Appointment").mock(return_value=json_response({
        "resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
            "resourceType": "Appointment", "id": "a1", "status": "booked",
            "start": "2026-12-01T09:00:00-06:00",
            "participant": [{"actor": {"reference": "Patient/p1"}}]}}]}))
    written = h.server.router.post(BASE).mock(return_value=json_response({
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": [{"response": {"status": "201 Created",
                                "location": "ServiceRequest/sr1/_history/1"}}]}))
    async def night() -> tuple[Any, Any, int]:
        assert isinstance(h.source, Source)
        try:
            window = VisitWindow(NOW.date(), NOW.date() + timedelta(days=2),
                                 timezone="America/Chicago")
            visits = await h.source.appointments(window)
            await h.source.patient_record("p1")
            result = await h.source.write_transaction(
                {"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "POST", "url": "ServiceRequest",
                                 "ifNoneExist": "identifier=x|y"},
                     "resource": {"resourceType": "ServiceRequest"}}]}, key="a1")
            return visits, result, h.source.request_count
        finally:
            await h.source.aclose()

    visits, result, requests = run(night())
    assert [v.appointment_id for v in visits] == ["a1"]
    assert result.created == ("ServiceRequest/sr1",)
    assert written.call_count == 1
    # appointments 1, kick-off 1, poll 1, files 5, delete 1, write 1
    assert requests == 10


def test_a_bulk_configuration_names_what_is_missing(tmp_path: Path) -> None:
    config = load_config(env={"PREVISIT_SOURCE_KIND": "bulk",
                              "PREVISIT_SOURCE_BASE_URL": BASE})
    with pytest.raises(SourceError, match=r"bulk\.group_id is not set"):
        BulkSource.from_config(config, {})
    config = load_config(env={"PREVISIT_SOURCE_KIND": "bulk", "PREVISIT_BULK_GROUP_ID": "g1"})
    with pytest.raises(SourceError, match=r"source\.base_url is not set"):
        BulkSource.from_config(config, {})
    config = load_config(env={"PREVISIT_SOURCE_KIND": "bulk", "PREVISIT_BULK_GROUP_ID": "g1",
                              "PREVISIT_SOURCE_BASE_URL": BASE,
                              "PREVISIT_OUTPUT_FOLDER": str(tmp_path / "out")})
    source = BulkSource.from_config(config, {})
    assert source._folder == tmp_path / "out" / "bulk-state"
    run(source.aclose())
    assert not (tmp_path / "out").exists()  # nothing is created before a run starts
    with pytest.raises(SourceError, match="is not a FHIR id"):
        BulkSource(source._search, httpx.AsyncClient(), group_id="a b",
                   state_folder=tmp_path)


def test_a_state_folder_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    h = Harness(blocker / "state")

    async def read() -> None:
        try:
            await h.source.patient_record("p1")
        finally:
            await h.source.aclose()

    with pytest.raises(SourceError, match=r"bulk.state_folder .*state"):
        run(read())
    assert os.path.isfile(blocker)


def test_what_a_killed_run_left_in_the_state_folder_is_removed(tmp_path: Path) -> None:
    (tmp_path / "download-abc").mkdir(parents=True)
    (tmp_path / "download-abc" / "00000.ndjson").write_text('{"resourceType": "Patient"}\n')
    (tmp_path / "store.sqlite.partial").write_text("half a store")
    h = Harness(tmp_path)
    h.server.export(two_patients())
    h.records("p1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "state.json", "store.sqlite"]


def test_a_failed_download_stops_the_others(tmp_path: Path) -> None:
    h = Harness(tmp_path, concurrency=1)
    h.server.export(two_patients())
    h.server.router.get(f"{BASE}/$export-file/output-Patient.ndjson").mock(
        return_value=httpx.Response(403))
    _fails_over_to_search(h, "downloading the export's Patient file 1", "HTTP 403")
    fetched = [c.request.url.path for r in h.server.router.routes for c in r.calls
               if "/$export-file/" in c.request.url.path]
    assert fetched == ["/fhir/R4/$export-file/output-Patient.ndjson"]


def test_a_bulk_run_asks_also_to_read_the_panels_group() -> None:
    bulk = requested_scope(load_config(env={"PREVISIT_SOURCE_KIND": "bulk"}))
    fhir = requested_scope(load_config(env={"PREVISIT_SOURCE_KIND": "fhir"}))
    assert bulk == f"{fhir} system/Group.rs"
    assert "Group" not in fhir
    given = load_config(env={"PREVISIT_SOURCE_KIND": "bulk", "PREVISIT_AUTH_SCOPE": "system/*.rs"})
    assert requested_scope(given) == "system/*.rs"
