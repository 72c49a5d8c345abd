"""The nightly job against a real FHIR server: `previsit run` as a process, end to end.

The sample clinic day is loaded into a fresh test server with `previsit upload`, then the
CLI runs against it as the scheduler would run it, and the tests read back what is on the
server: a dry run writes nothing; the first `--write-back` creates exactly the proposals
plan.json and transactions/ name (and the same ones a run on sample_bundles/ proposes); a
second run creates nothing and says so; a clinician's revocation is respected; someone
else's open order suppresses ours; two runs at once make no duplicates; sheets are stored
once per visit. Then the faults: the server killed during the record reads (exit 3), right
after the appointments (exit 4) and during the write-back (exit 3), a URL that refuses
connections (one line, exit 4).

The write-back steps build on each other, so they run once per module, in order, the
first time a test asks for one (`Scenario`); each test asserts on the step it names.

PREVISIT_TEST_FHIR_URL (and PREVISIT_TEST_FHIR_TOKEN) point the scenario at another
server. The sample data is loaded there too (PUT by id, so loading twice is harmless), and
our earlier proposals for the sample patients (resources carrying our identifier system)
are deleted first, so the sets compared are ours alone. The fault tests and the two runs at
once always use servers of their own, started here: they kill them or need them empty.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirserver import (
    READY_PREFIX,
    SERVER_DIR,
    START_TIMEOUT_S,
    ensure_installed,
    fhir_server_or_external,
    running_fhir_server,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_bundles"
DAY = "2026-12-01"
TZ = "America/Chicago"
SYSTEM = "urn:previsit:proposal"  # output.identifier_system, the default
SHEET_PREFIX = "pv-sheet-"
RUN_TIMEOUT_S = 90
MARIA = "pat-maria-lopez"
MARIA_OPEN_HBA1C = "ServiceRequest/maria-lopez-sr-001"  # on her chart, not ours
HBA1C = "4548-4"

Key = tuple[str, str, str]  # (resource type, patient id, identifier value)


# --- the CLI -----------------------------------------------------------------------------


def _previsit() -> list[str]:
    script = Path(sys.executable).with_name("previsit")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from previsit.cli.app import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without PREVISIT_* settings (config.py reads them), except
    the external server's token, which the configuration names."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREVISIT_") or k == "PREVISIT_TEST_FHIR_TOKEN"}
    env.update(extra)
    return env


def previsit(*args: str | Path, env: Mapping[str, str] | None = None,
             timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_previsit(), *map(str, args)], cwd=ROOT,
                          env=dict(env) if env is not None else _env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_previsit(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*_previsit(), *map(str, args)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    """The process's output, for assertion messages."""
    return (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n"
            f"{proc.stderr[-3000:]}")


def write_config(path: Path, *, base_url: str | None, out: Path, token: bool = False,
                 **source: Any) -> Path:
    """A TOML configuration for a FHIR source; `source` adds [source] keys."""
    lines = ["[source]", 'kind = "fhir"', f'timezone = "{TZ}"']
    if base_url is not None:
        lines.append(f'base_url = "{base_url}"')
    lines += [f"{key} = {json.dumps(value)}" for key, value in source.items()]
    lines += ["", "[output]", f'folder = "{out}"', f'identifier_system = "{SYSTEM}"']
    if token:
        lines += ["", "[auth]", 'method = "bearer"', 'token_env = "PREVISIT_TEST_FHIR_TOKEN"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(base_url: str, config: Path) -> None:
    proc = previsit("upload", SAMPLE, "--config", config, "--fhir-url", base_url)
    assert proc.returncode == 0 and proc.stdout.startswith("uploaded "), shown(proc)


@dataclass(frozen=True)
class Run:
    """One finished `previsit run` and the folder it wrote."""

    proc: subprocess.CompletedProcess[str]
    out: Path

    @property
    def code(self) -> int:
        return self.proc.returncode

    @cached_property
    def plan(self) -> dict[str, Any]:
        assert (self.out / "plan.json").exists(), shown(self.proc)
        data: dict[str, Any] = json.loads((self.out / "plan.json").read_text("utf-8"))
        return data

    @cached_property
    def report(self) -> dict[str, Any]:
        assert (self.out / "run-report.json").exists(), shown(self.proc)
        data: dict[str, Any] = json.loads((self.out / "run-report.json").read_text("utf-8"))
        return data

    def proposals(self) -> list[dict[str, Any]]:
        """Every proposal summary, with the visit's patient and appointment added."""
        return [{**p, "patient": v["visit"]["patient_id"],
                 "appointment": v["visit"]["appointment_id"]}
                for v in self.plan["visits"] for p in v["proposals"]]

    def keys(self, *outcomes: str) -> set[Key]:
        return {(p["resource_type"], p["patient"], p["identifier"]) for p in self.proposals()
                if p["outcome"] in outcomes}

    def outcomes(self) -> dict[str, str]:
        """identifier value -> outcome (an identifier belongs to one appointment)."""
        return {p["identifier"]: p["outcome"] for p in self.proposals()}

    def transaction_resources(self) -> list[dict[str, Any]]:
        return [entry["resource"] for path in sorted((self.out / "transactions").glob("*.json"))
                for entry in json.loads(path.read_text("utf-8"))["entry"]]

    def visits(self, *, failed: bool) -> set[str]:
        return {v["visit"]["appointment_id"] for v in self.plan["visits"]
                if bool(v.get("failed")) is failed}


def run_cli(config: Path, out: Path, *extra: str,
            env: Mapping[str, str] | None = None) -> Run:
    proc = previsit("run", "--config", config, "--date", DAY, "--out", out, *extra, env=env)
    return Run(proc, out)


# --- reading the server ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    base_url: str
    token: str | None
    external: bool

    def client(self) -> httpx.Client:
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return httpx.Client(base_url=self.base_url + "/", headers=headers, timeout=30.0)


def search(client: httpx.Client, resource_type: str, **params: str) -> list[dict[str, Any]]:
    """Every resource of a search, following Bundle.link[next] (included ones too)."""
    response = client.get(resource_type, params={**params, "_count": "200"})
    found: list[dict[str, Any]] = []
    for _ in range(100):
        response.raise_for_status()
        bundle = response.json()
        found += [e["resource"] for e in bundle.get("entry") or () if "resource" in e]
        following = [x["url"] for x in bundle.get("link") or () if x.get("relation") == "next"]
        if not following:
            return found
        response = client.get(following[0])
    raise AssertionError(f"{resource_type} search: next links do not end")


@dataclass(frozen=True)
class Stored:
    """One resource on the server carrying our identifier system."""

    resource_type: str
    id: str
    patient: str
    identifier: str
    codes: frozenset[str]
    status: str
    intent: str
    version: str | None
    resource: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> Key:
        return (self.resource_type, self.patient, self.identifier)


def _ours(resource: Mapping[str, Any], system: str = SYSTEM) -> str | None:
    for identifier in resource.get("identifier") or ():
        if identifier.get("system") == system:
            return str(identifier.get("value"))
    return None


def _codes(resource: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]
           ) -> frozenset[str]:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    reference = (resource.get("medicationReference") or {}).get("reference")
    if reference in medications:
        concept = medications[reference].get("code") or {}
    return frozenset(c.get("code") for c in concept.get("coding") or ())


def sample_patients() -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "patients").glob("*.json"))


def requests_on_server(target: Target) -> tuple[list[Stored], list[tuple[str, str, str]]]:
    """(ours, everyone else's as (type, id, status)) among the sample patients' requests."""
    patients = ",".join(sample_patients())
    ours: list[Stored] = []
    others: list[tuple[str, str, str]] = []
    with target.client() as client:
        for rtype in ("ServiceRequest", "MedicationRequest"):
            params = {"patient": patients}
            if rtype == "MedicationRequest":
                params["_include"] = "MedicationRequest:medication"
            found = search(client, rtype, **params)
            medications = {f"Medication/{r['id']}": r for r in found
                           if r["resourceType"] == "Medication"}
            for r in found:
                if r["resourceType"] != rtype:
                    continue
                value = _ours(r)
                if value is None:
                    others.append((rtype, r["id"], r.get("status", "")))
                    continue
                ours.append(Stored(
                    rtype, r["id"], r["subject"]["reference"].removeprefix("Patient/"), value,
                    _codes(r, medications), r.get("status", ""), r.get("intent", ""),
                    (r.get("meta") or {}).get("versionId"), r))
    return sorted(ours, key=lambda s: s.key), sorted(others)


def sheets_on_server(target: Target) -> list[dict[str, Any]]:
    with target.client() as client:
        found = search(client, "DocumentReference", patient=",".join(sample_patients()))
    return [r for r in found if r["resourceType"] == "DocumentReference"
            and (_ours(r) or "").startswith(SHEET_PREFIX)]


def delete_ours(target: Target) -> None:
    """On a shared server: remove our proposals and sheets for the sample patients."""
    with target.client() as client:
        patients = ",".join(sample_patients())
        for rtype in ("ServiceRequest", "MedicationRequest", "DocumentReference"):
            for r in search(client, rtype, patient=patients):
                if r["resourceType"] == rtype and _ours(r) is not None:
                    client.delete(f"{rtype}/{r['id']}").raise_for_status()


def as_written(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a proposal that any server keeps as sent."""
    return {k: resource.get(k) for k in (
        "resourceType", "status", "intent", "subject", "code", "authoredOn",
        "occurrenceDateTime", "medicationCodeableConcept", "medicationReference",
        "priorPrescription", "identifier")}


# --- the write-back scenario, one step at a time -----------------------------------------


class Scenario:
    """Dry run, run 1, run 2, a revocation and run 3, then two runs storing sheets.

    Each step runs the ones before it first, once; a step only runs and records, the tests
    assert.
    """

    def __init__(self, target: Target, folder: Path) -> None:
        self.target = target
        self.folder = folder
        self.config = write_config(folder / "previsit.toml", base_url=target.base_url,
                                   out=folder / "out", token=target.token is not None)

    def run(self, name: str, *extra: str, env: Mapping[str, str] | None = None,
            config: Path | None = None) -> Run:
        return run_cli(config or self.config, self.folder / name, *extra, env=env)

    @cached_property
    def loaded(self) -> tuple[list[Stored], list[tuple[str, str, str]]]:
        if self.target.external:
            delete_ours(self.target)
        upload(self.target.base_url, self.config)
        return requests_on_server(self.target)

    @cached_property
    def dry(self) -> tuple[Run, list[Stored]]:
        _ = self.loaded
        # The base URL only in the environment: the override a scheduler would use.
        no_url = write_config(self.folder / "no-url.toml", base_url=None,
                              out=self.folder / "unused", token=self.target.token is not None)
        run = self.run("dry", config=no_url,
                       env=_env(PREVISIT_SOURCE_BASE_URL=self.target.base_url))
        return run, requests_on_server(self.target)[0]

    @cached_property
    def first(self) -> tuple[Run, list[Stored], list[tuple[str, str, str]]]:
        _ = self.dry
        return (self.run("run1", "--write-back"), *requests_on_server(self.target))

    @cached_property
    def second(self) -> tuple[Run, list[Stored], list[tuple[str, str, str]]]:
        _ = self.first
        return (self.run("run2", "--write-back"), *requests_on_server(self.target))

    @cached_property
    def revoked(self) -> tuple[Stored, Run, list[Stored]]:
        """A clinician revokes one of our ServiceRequests (not María López's), then run 3."""
        _, ours, _ = self.second
        chosen = next(s for s in ours
                      if s.resource_type == "ServiceRequest" and s.patient != MARIA)
        with self.target.client() as client:
            current = client.get(f"ServiceRequest/{chosen.id}")
            current.raise_for_status()
            changed = {**current.json(), "status": "revoked"}
            client.put(f"ServiceRequest/{chosen.id}", json=changed,
                       headers={"Content-Type": "application/fhir+json"}).raise_for_status()
        return chosen, self.run("run3", "--write-back"), requests_on_server(self.target)[0]

    @cached_property
    def sheets(self) -> tuple[list[Run], list[list[dict[str, Any]]], list[Stored]]:
        """Two runs with --write-sheets, and the stored sheets after each."""
        _ = self.revoked
        runs, stored = [], []
        for n in (1, 2):
            runs.append(self.run(f"sheets{n}", "--write-back", "--write-sheets"))
            stored.append(sheets_on_server(self.target))
        return runs, stored, requests_on_server(self.target)[0]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A fresh server for this module (exact sets), or the external one."""
    with fhir_server_or_external() as (base_url, token, external):
        yield Target(base_url, token, external=external)


@pytest.fixture(scope="module")
def scenario(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return Scenario(target, tmp_path_factory.mktemp("scenario"))


@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same day from sample_bundles/, with no server: what should be proposed."""
    out = tmp_path_factory.mktemp("bundles") / "out"
    proc = previsit("run", "--source", SAMPLE, "--date", DAY, "--timezone", TZ, "--out", out)
    assert proc.returncode == 0, shown(proc)
    return Run(proc, out)


# --- the scenario's tests ----------------------------------------------------------------


def test_a_dry_run_writes_nothing_and_marks_its_proposals_dry_run(scenario: Scenario) -> None:
    before, _ = scenario.loaded
    run, after = scenario.dry
    assert run.code == 0, shown(run.proc)
    # The configuration has no base_url: PREVISIT_SOURCE_BASE_URL supplied it.
    assert f"FHIR server {scenario.target.base_url}" in run.proc.stdout
    assert after == before == []
    assert run.report["proposals"]["created"] == 0
    outcomes = [p["outcome"] for p in run.proposals()]
    assert "proposed" not in outcomes
    assert outcomes.count("dry-run") >= 10, sorted(set(outcomes))
    assert "dry run" in run.proc.stdout


def test_the_first_write_back_creates_exactly_the_planned_proposals(
        scenario: Scenario) -> None:
    (_, others_before), (run, ours, others) = scenario.loaded, scenario.first
    assert run.code == 0, shown(run.proc)
    identifiers = [s.identifier for s in ours]
    assert len(identifiers) == len(set(identifiers)), "duplicate proposals on the server"
    planned = run.keys("proposed")
    assert len(planned) >= 10
    assert {s.key for s in ours} == planned
    # what transactions/ holds is what was written, field for field
    written = {_ours(r): as_written(r) for r in run.transaction_resources()}
    assert {s.identifier: as_written(s.resource) for s in ours} == written
    codes = {p["identifier"]: p["code"] for p in run.proposals()}
    assert all(codes[s.identifier] in s.codes for s in ours), \
        [(s.identifier, codes[s.identifier], s.codes) for s in ours
         if codes[s.identifier] not in s.codes]
    assert {(s.status, s.intent) for s in ours} == {("draft", "proposal")}
    assert run.report["proposals"]["created"] == len(ours)
    assert run.report["proposals"]["proposed"] == len(ours)
    if not scenario.target.external:
        assert others == others_before  # nobody else's orders were touched


def test_the_server_run_proposes_what_the_bundle_run_proposes(
        scenario: Scenario, bundle_run: Run) -> None:
    run = scenario.first[0]

    def summary(r: Run) -> set[tuple[str, str, str, str, str, str]]:
        return {(p["appointment"], p["resource_type"], p["identifier"], p["code"],
                 p["outcome"], p.get("existing") or "") for p in r.proposals()}

    from_server, from_files = summary(run), summary(bundle_run)
    assert from_server == from_files, (
        f"only from the server: {sorted(from_server - from_files)}\n"
        f"only from the bundles: {sorted(from_files - from_server)}")


def test_a_second_run_creates_nothing_and_says_so(scenario: Scenario) -> None:
    _, ours_1, _ = scenario.first
    run, ours_2, _ = scenario.second
    assert run.code == 0, shown(run.proc)
    # the same resources, same ids, not even updated
    assert ours_2 == ours_1
    assert run.report["proposals"]["created"] == 0
    assert run.report["proposals"]["proposed"] == 0
    assert list((run.out / "transactions").glob("*.json")) == []
    ids = {s.identifier: f"{s.resource_type}/{s.id}" for s in ours_1}
    again = {p["identifier"]: (p["outcome"], p.get("existing")) for p in run.proposals()}
    assert {i: again.get(i) for i in ids} == {i: ("already-written", ref)
                                             for i, ref in ids.items()}
    text = run.proc.stdout
    assert re.search(r"(?<![\d,])0 (draft orders? )?created|nothing new", text), text
    assert re.search(rf"\b{len(ids)} already (proposed|written)", text), text


def test_someone_elses_open_order_suppresses_ours(scenario: Scenario) -> None:
    run, ours, _ = scenario.first
    hba1c = [p for p in run.proposals() if p["patient"] == MARIA and p["code"] == HBA1C]
    assert hba1c, "María López's HbA1c (overdue) was not considered at all"
    # at her 8:00 lab visit someone's open order suppresses ours; at 9:20 it is that
    # earlier visit's draw
    assert {(p["outcome"], p.get("existing")) for p in hba1c} == \
        {("already-open", MARIA_OPEN_HBA1C), ("earlier-visit", None)}
    assert not [s for s in ours if s.patient == MARIA and HBA1C in s.codes]


def test_a_revoked_proposal_is_declined_and_not_proposed_again(scenario: Scenario) -> None:
    _, before, _ = scenario.second
    chosen, run, after = scenario.revoked
    assert run.code == 0, shown(run.proc)
    assert run.outcomes()[chosen.identifier] == "declined"
    declined = [p for p in run.proposals() if p["identifier"] == chosen.identifier]
    assert declined[0].get("existing") == f"ServiceRequest/{chosen.id}"
    assert run.report["proposals"]["created"] == 0
    assert run.report["proposals"]["declined"] >= 1
    assert [(s.identifier, s.id) for s in after] == [(s.identifier, s.id) for s in before]
    assert {s.identifier: s.status for s in after} == {
        s.identifier: "revoked" if s.identifier == chosen.identifier else "draft"
        for s in before}


def test_sheets_are_stored_once_per_planned_visit(scenario: Scenario) -> None:
    _, _, ours_before = scenario.revoked
    runs, stored, ours_after = scenario.sheets
    for run in runs:
        assert run.code == 0, shown(run.proc)
    visits = {v["visit"]["appointment_id"]: v["visit"]["patient_id"]
              for v in runs[0].plan["visits"] if not v.get("failed")}
    assert len(visits) >= 20
    for documents in stored:
        by_visit: dict[str, list[dict[str, Any]]] = {}
        for doc in documents:
            for related in (doc.get("context") or {}).get("related") or ():
                ref = related.get("reference", "")
                if ref.startswith("Appointment/"):
                    by_visit.setdefault(ref.removeprefix("Appointment/"), []).append(doc)
        assert {a: len(d) for a, d in by_visit.items()} == dict.fromkeys(visits, 1)
        assert len(documents) == len(visits)
        for appointment, (doc,) in by_visit.items():
            assert doc["subject"]["reference"] == f"Patient/{visits[appointment]}"
            assert doc["status"] == "current"
            attachment = doc["content"][0]["attachment"]
            assert attachment["contentType"].startswith("text/html")
            html = base64.b64decode(attachment["data"]).decode("utf-8")
            assert html.lstrip().lower().startswith("<!doctype html")
    assert sorted(d["id"] for d in stored[1]) == sorted(d["id"] for d in stored[0])
    assert ours_after == ours_before  # storing sheets writes no orders


def test_config_check_reports_what_will_work(scenario: Scenario) -> None:
    _ = scenario.loaded
    proc = previsit("config", "check", "--config", scenario.config, timeout=60)
    assert proc.returncode == 0, shown(proc)
    assert re.search(r"\bbatch\b", proc.stdout, re.IGNORECASE), shown(proc)
    assert "Traceback" not in proc.stderr


# --- two runs at once ----------------------------------------------------------------------


def test_two_runs_at_once_create_no_duplicates(tmp_path: Path, bundle_run: Run) -> None:
    with running_fhir_server() as base_url:
        config = write_config(tmp_path / "c.toml", base_url=base_url, out=tmp_path / "out")
        upload(base_url, config)
        started = [start_previsit("run", "--config", config, "--date", DAY, "--write-back",
                                  "--out", tmp_path / f"out{n}") for n in (1, 2)]
        procs = []
        for proc in started:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
            procs.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                                     stderr))
        ours, _ = requests_on_server(Target(base_url, None, external=False))
    runs = [Run(p, tmp_path / f"out{n}") for n, p in enumerate(procs, 1)]
    for run in runs:
        assert run.code == 0, shown(run.proc)
    identifiers = [s.identifier for s in ours]
    assert len(identifiers) == len(set(identifiers)), "duplicate proposals on the server"
    assert {s.key for s in ours} == bundle_run.keys("proposed")
    # each proposal was created by exactly one of the two runs
    assert sum(r.report["proposals"]["created"] for r in runs) == len(ours)


# --- faults ----------------------------------------------------------------------------------


class KillableServer:
    """The test server with --verbose, so the test sees each request as the server takes
    it, and kills the server (SIGKILL) from the reading thread the moment a condition on
    the requests seen since `arm()` holds: before the response leaves (latency)."""

    def __init__(self, latency_ms: int) -> None:
        node = ensure_installed()
        self.proc = subprocess.Popen(
            [str(node), str(SERVER_DIR / "server.mjs"), "--port", "0", "--latency-ms",
             str(latency_ms), "--verbose"],
            cwd=SERVER_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.requests: list[str] = []
        self.killed_at: int | None = None
        self._lock = threading.Lock()
        self._condition: Callable[[list[str]], bool] | None = None
        self._armed_at = 0
        ready: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._ready, args=(ready,), daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()
        line = ready.get(timeout=START_TIMEOUT_S)
        assert line.startswith(READY_PREFIX), f"test server printed {line!r}"
        self.base_url = line[len(READY_PREFIX):].strip()

    def _ready(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stdout is not None
        lines.put(self.proc.stdout.readline())  # the one line it prints

    def _watch(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.requests.append(line.strip())
                since = self.requests[self._armed_at:]
                if self._condition is not None and self._condition(since):
                    self.proc.kill()
                    self.killed_at = len(since)
                    self._condition = None

    def arm(self, condition: Callable[[list[str]], bool]) -> None:
        with self._lock:
            self._armed_at = len(self.requests)
            self._condition = condition

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def killable() -> Iterator[KillableServer]:
    server = KillableServer(latency_ms=100)
    try:
        yield server
    finally:
        server.stop()


def _after_appointments(requests: Sequence[str]) -> list[str]:
    """The requests after the appointment search (the record reads, then the writes)."""
    for index, line in enumerate(requests):
        if line.startswith("GET /fhir/R4/Appointment?"):
            return list(requests[index + 1:])
    return []


def _posts(requests: Sequence[str]) -> int:
    """POSTs to the base: one batch per record (page_size 1000), then one transaction per
    visit with proposals."""
    return sum(1 for line in requests if re.match(r"POST /fhir/R4/? ", line))


def _fault_run(server: KillableServer, tmp_path: Path, condition: Callable[[list[str]], bool],
               *extra: str, attempts: int = 2) -> Run:
    config = write_config(tmp_path / "c.toml", base_url=server.base_url, out=tmp_path / "out",
                          page_size=1000, max_attempts=attempts, max_retry_seconds=2.0)
    upload(server.base_url, config)
    server.arm(condition)
    run = run_cli(config, tmp_path / "out", *extra)
    assert server.killed_at is not None, f"the server was never killed: {server.requests}"
    return run


def _assert_failures_reported(run: Run, words: str) -> None:
    failed = run.visits(failed=True)
    assert failed, shown(run.proc)
    assert {f["appointment"] for f in run.report["failures"]} == failed
    for failure in run.report["failures"]:
        assert words in failure["reason"], failure
        assert failure["appointment"] in run.proc.stdout  # the summary names them
    assert run.report["visits"]["failed"] == len(failed)
    assert run.report["visits"]["planned"] == len(run.visits(failed=False))


def test_a_server_killed_during_the_record_reads_is_a_partial_run(
        killable: KillableServer, tmp_path: Path, bundle_run: Run) -> None:
    # Killed when the 12th record read arrives: the client sends a 9th only after one of
    # its 8 concurrent reads has been answered, so at least 4 records were read, and at
    # most 11 of the 30. A dry run: with --write-back the visits read would fail writing.
    run = _fault_run(killable, tmp_path,
                     lambda seen: _posts(_after_appointments(seen)) >= 12)
    assert run.code == 3, shown(run.proc)
    assert run.report["exit_code"] == 3
    _assert_failures_reported(run, "could not be read")
    planned = run.visits(failed=False)
    assert len(planned) >= 4
    assert planned | run.visits(failed=True) == bundle_run.visits(failed=False)


def test_a_server_killed_right_after_the_appointments_is_nothing_done(
        killable: KillableServer, tmp_path: Path, bundle_run: Run) -> None:
    run = _fault_run(killable, tmp_path, lambda seen: bool(_after_appointments(seen)),
                     "--write-back")
    assert run.code == 4, shown(run.proc)
    assert run.report["exit_code"] == 4
    assert run.report["visits"]["planned"] == 0
    assert run.visits(failed=True) == bundle_run.visits(failed=False)
    _assert_failures_reported(run, "could not be read")
    assert "Traceback" not in run.proc.stderr


def test_a_server_killed_during_the_write_back_is_a_partial_run(
        killable: KillableServer, tmp_path: Path, bundle_run: Run) -> None:
    patients = len({v["visit"]["patient_id"] for v in bundle_run.plan["visits"]})
    # Transactions go one at a time: killed as the 5th arrives, 4 were written. One attempt
    # per request: the writes after the kill are tried one after another, each with its
    # full retry budget (about 8 s with the defaults).
    run = _fault_run(killable, tmp_path,
                     lambda seen: _posts(_after_appointments(seen)) >= patients + 5,
                     "--write-back", attempts=1)
    assert run.code == 3, shown(run.proc)
    _assert_failures_reported(run, "write-back failed")
    with_proposals = {path.stem for path in (bundle_run.out / "transactions").glob("*.json")}
    written = run.visits(failed=False) & with_proposals
    assert len(written) == 4, sorted(written)
    assert run.report["proposals"]["created"] == sum(
        1 for p in run.proposals() if p["appointment"] in written and p["outcome"] == "proposed")


def _refused_url() -> tuple[str, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/fhir/R4", port


def test_a_url_that_refuses_connections_is_one_line_and_nothing_done(tmp_path: Path) -> None:
    url, port = _refused_url()
    config = write_config(tmp_path / "c.toml", base_url=url, out=tmp_path / "out")
    run = run_cli(config, tmp_path / "out", "--write-back")
    assert run.code == 4, shown(run.proc)
    lines = run.proc.stderr.strip().splitlines()
    assert len(lines) == 1, shown(run.proc)
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in run.proc.stderr


def test_config_check_on_a_url_that_refuses_connections_is_nothing_done(
        tmp_path: Path) -> None:
    url, port = _refused_url()
    config = write_config(tmp_path / "c.toml", base_url=url, out=tmp_path / "out")
    proc = previsit("config", "check", "--config", config, timeout=60)
    assert proc.returncode == 4, shown(proc)
    assert f"127.0.0.1:{port}" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
