"""The nightly job against a production-like FHIR server: `previsit` as a process, end to end.

This is the issue 9 walk-through, as a new user would try it against a production Medplum:
the test server's strict (medplum) profile — transactions of at most 8 conditional
entries, UUID ids only, no create by PUT, per-client rate limits answered with 429 and the
RateLimit header, SMART scopes enforced, conflicts between overlapping conditional updates —
and a normal backend client (client id and secret) with previsit's default settings.

`previsit upload sample_bundles` loads the day as that client (server-assigned ids; a second
upload creates nothing); `config check` is green; a dry run writes nothing; the first
`--write-back` creates exactly the proposals plan.json and transactions/ name, and the day
plans identically from the server and from the folder (compared by the patient's MRN and the
visit's time, and by each resource's upload identifier, never by server ids); a second run
creates nothing; a clinician's revocation is respected; someone else's open order suppresses
ours; sheets are stored once per visit; two runs at once, and a run with the client's quota
nearly spent, write every visit exactly once. The rate-limit window is 2 s instead of
Medplum's 60 so that the pauses it forces stay short.

The write-back steps build on each other, so they run once per module, in order, the first
time a test asks for one (`Scenario`); each test asserts on the step it names.

PREVISIT_TEST_FHIR_URL (and PREVISIT_TEST_FHIR_TOKEN) point the scenario at another server
(bearer token instead of the client): the sample data is uploaded there the same way, and
our earlier proposals and sheets for the sample patients are deleted first, so the sets
compared are ours alone. The fault tests use servers of their own, started here: they kill
them.
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
    FhirServerAdmin,
    ensure_installed,
    external_fhir_server,
    fhir_test_server,
)

from previsit.upload import read_resources

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_bundles"
DAY = "2026-12-01"
TZ = "America/Chicago"
SYSTEM = "urn:previsit:proposal"  # output.identifier_system, the default
SHEETS = "urn:previsit:sheet"  # output.sheet_identifier_system, the default
UPLOAD = "urn:previsit:upload"  # the identifier upload gives each resource: its folder id
RUN_TIMEOUT_S = 120
MARIA = "Patient/pat-maria-lopez"
MARIA_OPEN_HBA1C = "ServiceRequest/maria-lopez-sr-001"  # on her chart, not ours
HBA1C = "4548-4"
CLIENT_ID = "previsit-nightly"
CLIENT_SECRET = "nightly-secret-0123456789"
WINDOW_S = 2  # the rate limit's window (Medplum: 60 s for 50,000 points)

Key = tuple[str, str, str]  # (resource type, patient, identifier value)


# --- the CLI -----------------------------------------------------------------------------


def _previsit() -> list[str]:
    script = Path(sys.executable).with_name("previsit")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from previsit.cli.app import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without PREVISIT_* settings (config.py reads them), except
    the external server's token, which the configuration names; and the client's secret."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREVISIT_") or k == "PREVISIT_TEST_FHIR_TOKEN"}
    env["PREVISIT_CLIENT_SECRET"] = CLIENT_SECRET
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


def finished(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    """The process's output, for assertion messages."""
    return (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n"
            f"{proc.stderr[-3000:]}")


def write_config(path: Path, *, base_url: str | None, out: Path, auth: str = "none",
                 **source: Any) -> Path:
    """A TOML configuration for a FHIR source; `source` adds [source] keys. `auth`: none,
    client (the registered backend client: only its id here, the secret in the environment,
    as a new user configures it) or token (the external server's bearer token)."""
    lines = ["[source]", 'kind = "fhir"', f'timezone = "{TZ}"']
    if base_url is not None:
        lines.append(f'base_url = "{base_url}"')
    lines += [f"{key} = {json.dumps(value)}" for key, value in source.items()]
    lines += ["", "[output]", f'folder = "{out}"']
    if auth == "client":
        lines += ["", "[auth]", 'method = "client-secret"', f'client_id = "{CLIENT_ID}"']
    elif auth == "token":
        lines += ["", "[auth]", 'method = "bearer"', 'token_env = "PREVISIT_TEST_FHIR_TOKEN"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(config: Path) -> subprocess.CompletedProcess[str]:
    proc = previsit("upload", SAMPLE, "--config", config)
    assert proc.returncode == 0 and proc.stdout.startswith("uploaded "), shown(proc)
    return proc


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

    def day(self, names: Names | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """The plan by (patient MRN, visit start): every finding and proposal, without the
        ids a server assigns (evidence, references), an `existing` order named by its
        folder id when `names` knows it."""
        out = {}
        for v in self.plan["visits"]:
            findings = sorted((f["rule_id"], f["status"], f["explanation"], f["due_date"],
                               tuple(f["flags"])) for f in v["findings"])
            proposals = sorted((p["resource_type"], p["code"], p["outcome"], p["occurrence"],
                                names.folder(p["existing"]) if names and p["existing"]
                                else p["existing"]) for p in v["proposals"])
            out[(v["patient_mrn"], v["visit"]["start"])] = {
                "findings": findings, "proposals": proposals, "failed": v.get("failed")}
        return out


def run_cli(config: Path, out: Path, *extra: str,
            env: Mapping[str, str] | None = None) -> Run:
    proc = previsit("run", "--config", config, "--date", DAY, "--out", out, *extra, env=env)
    return Run(proc, out)


# --- reading the server ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    base_url: str
    token: str | None  # what the test reads the server with (local: the admin token)
    external: bool
    admin: FhirServerAdmin | None = None

    @property
    def auth(self) -> str:
        return "token" if self.external else "client"

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


def _value(resource: Mapping[str, Any], system: str) -> str | None:
    for identifier in resource.get("identifier") or ():
        if identifier.get("system") == system:
            return str(identifier.get("value"))
    return None


@dataclass(frozen=True)
class Names:
    """What the server made of the folder's resources: "Type/server id" <-> "Type/folder id",
    read from the identifier upload gives each resource."""

    to_folder: Mapping[str, str]

    @cached_property
    def to_server(self) -> dict[str, str]:
        return {folder: server for server, folder in self.to_folder.items()}

    def folder(self, reference: str) -> str:
        return self.to_folder.get(reference, reference)

    def server(self, reference: str) -> str:
        return self.to_server[reference]

    def server_id(self, reference: str) -> str:
        return self.server(reference).split("/", 1)[1]

    def patients(self) -> list[str]:
        """The server ids of the sample's patients."""
        return sorted(v.split("/", 1)[1] for k, v in self.to_server.items()
                      if k.startswith("Patient/"))


def names_on_server(target: Target) -> Names:
    mapping: dict[str, str] = {}
    with target.client() as client:
        for rtype in ("Patient", "Appointment", "ServiceRequest", "MedicationRequest"):
            for resource in search(client, rtype, identifier=f"{UPLOAD}|"):
                folder_id = _value(resource, UPLOAD)
                if resource["resourceType"] == rtype and folder_id:
                    mapping[f"{rtype}/{resource['id']}"] = f"{rtype}/{folder_id}"
    return Names(mapping)


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


def _codes(resource: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]
           ) -> frozenset[str]:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    reference = (resource.get("medicationReference") or {}).get("reference")
    if reference in medications:
        concept = medications[reference].get("code") or {}
    return frozenset(c.get("code") for c in concept.get("coding") or ())


def requests_on_server(target: Target, names: Names
                       ) -> tuple[list[Stored], list[tuple[str, str, str]]]:
    """(ours, everyone else's as (type, id, status)) among the sample patients' requests."""
    patients = ",".join(names.patients())
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
                value = _value(r, SYSTEM)
                if value is None:
                    others.append((rtype, r["id"], r.get("status", "")))
                    continue
                ours.append(Stored(
                    rtype, r["id"], r["subject"]["reference"].removeprefix("Patient/"), value,
                    _codes(r, medications), r.get("status", ""), r.get("intent", ""),
                    (r.get("meta") or {}).get("versionId"), r))
    return sorted(ours, key=lambda s: s.key), sorted(others)


def sheets_on_server(target: Target, names: Names) -> list[dict[str, Any]]:
    with target.client() as client:
        found = search(client, "DocumentReference", patient=",".join(names.patients()))
    return [r for r in found if r["resourceType"] == "DocumentReference" and _value(r, SHEETS)]


def delete_ours(target: Target, names: Names) -> None:
    """Remove our proposals and sheets for the sample patients."""
    with target.client() as client:
        patients = ",".join(names.patients())
        for rtype, system in (("ServiceRequest", SYSTEM), ("MedicationRequest", SYSTEM),
                              ("DocumentReference", SHEETS)):
            for r in search(client, rtype, patient=patients):
                if r["resourceType"] == rtype and _value(r, system) is not None:
                    client.delete(f"{rtype}/{r['id']}").raise_for_status()


def as_written(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a proposal that any server keeps as sent."""
    return {k: resource.get(k) for k in (
        "resourceType", "status", "intent", "subject", "code", "authoredOn",
        "occurrenceDateTime", "medicationCodeableConcept", "medicationReference",
        "priorPrescription", "identifier")}


# --- the scenario, one step at a time ------------------------------------------------------


class Scenario:
    """Upload (twice), a dry run, run 1, run 2, a revocation and run 3, two runs storing
    sheets, then two runs at once and a run with the quota nearly spent (each after our
    proposals and sheets were removed, so that each has everything to write).

    Each step runs the ones before it first, once; a step only runs and records, the tests
    assert.
    """

    def __init__(self, target: Target, folder: Path) -> None:
        self.target = target
        self.folder = folder
        self.config = write_config(folder / "previsit.toml", base_url=target.base_url,
                                   out=folder / "out", auth=target.auth)

    def run(self, name: str, *extra: str, env: Mapping[str, str] | None = None,
            config: Path | None = None) -> Run:
        return run_cli(config or self.config, self.folder / name, *extra, env=env)

    @cached_property
    def uploads(self) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str],
                               Names]:
        if self.target.external:
            delete_ours(self.target, names_on_server(self.target))
        first = upload(self.config)
        return first, upload(self.config), names_on_server(self.target)

    @property
    def names(self) -> Names:
        return self.uploads[2]

    @cached_property
    def loaded(self) -> tuple[list[Stored], list[tuple[str, str, str]]]:
        return requests_on_server(self.target, self.names)

    @cached_property
    def dry(self) -> tuple[Run, list[Stored]]:
        _ = self.loaded
        # The base URL only in the environment: the override a scheduler would use.
        no_url = write_config(self.folder / "no-url.toml", base_url=None,
                              out=self.folder / "unused", auth=self.target.auth)
        run = self.run("dry", config=no_url,
                       env=_env(PREVISIT_SOURCE_BASE_URL=self.target.base_url))
        return run, requests_on_server(self.target, self.names)[0]

    @cached_property
    def first(self) -> tuple[Run, list[Stored], list[tuple[str, str, str]]]:
        _ = self.dry
        return (self.run("run1", "--write-back"), *requests_on_server(self.target, self.names))

    @cached_property
    def second(self) -> tuple[Run, list[Stored], list[tuple[str, str, str]]]:
        _ = self.first
        return (self.run("run2", "--write-back"), *requests_on_server(self.target, self.names))

    @cached_property
    def revoked(self) -> tuple[Stored, Run, list[Stored]]:
        """A clinician revokes one of our ServiceRequests (not María López's), then run 3."""
        _, ours, _ = self.second
        maria = self.names.server_id(MARIA)
        chosen = next(s for s in ours
                      if s.resource_type == "ServiceRequest" and s.patient != maria)
        with self.target.client() as client:
            current = client.get(f"ServiceRequest/{chosen.id}")
            current.raise_for_status()
            changed = {**current.json(), "status": "revoked"}
            client.put(f"ServiceRequest/{chosen.id}", json=changed,
                       headers={"Content-Type": "application/fhir+json"}).raise_for_status()
        return (chosen, self.run("run3", "--write-back"),
                requests_on_server(self.target, self.names)[0])

    @cached_property
    def sheets(self) -> tuple[list[Run], list[list[dict[str, Any]]], list[Stored]]:
        """Two runs with --write-sheets, and the stored sheets after each."""
        _ = self.revoked
        runs, stored = [], []
        for n in (1, 2):
            runs.append(self.run(f"sheets{n}", "--write-back", "--write-sheets"))
            stored.append(sheets_on_server(self.target, self.names))
        return runs, stored, requests_on_server(self.target, self.names)[0]

    @cached_property
    def check(self) -> subprocess.CompletedProcess[str]:
        _ = self.sheets
        return previsit("config", "check", "--config", self.config, timeout=60)

    @cached_property
    def at_once(self) -> tuple[list[Run], list[Stored], list[dict[str, Any]]]:
        """Our proposals and sheets removed, then two runs at once, storing sheets."""
        _ = self.check
        delete_ours(self.target, self.names)
        started = [start_previsit("run", "--config", self.config, "--date", DAY,
                                  "--write-back", "--write-sheets", "--out",
                                  self.folder / f"together{n}") for n in (1, 2)]
        runs = [Run(finished(p), self.folder / f"together{n}")
                for n, p in enumerate(started, 1)]
        return (runs, requests_on_server(self.target, self.names)[0],
                sheets_on_server(self.target, self.names))

    @cached_property
    def throttled(self) -> tuple[Run, list[Stored], list[dict[str, Any]], dict[str, Any]]:
        """Our proposals and sheets removed, the client's quota left at 1,500 points for
        8 s, then a run storing sheets (about 30,000 points of work)."""
        _ = self.at_once
        admin = self.target.admin
        assert admin is not None
        delete_ours(self.target, self.names)
        admin.reset()  # counters and windows; not the data
        admin.spend_quota(f"client:{CLIENT_ID}", remaining=1500, reset_s=8)
        run = self.run("throttled", "--write-back", "--write-sheets")
        return (run, requests_on_server(self.target, self.names)[0],
                sheets_on_server(self.target, self.names), admin.stats())


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A fresh medplum-profile server with the backend client registered, or the external
    one."""
    external = external_fhir_server()
    if external is not None:
        yield Target(external[0], external[1], external=True)
        return
    clients = {"clients": [{"client_id": CLIENT_ID, "kind": "backend-services",
                            "secret": CLIENT_SECRET}]}
    with fhir_test_server(clients=clients, rate_limit_window_s=WINDOW_S) as server:
        yield Target(server.base_url, server.admin_token, external=False, admin=server.admin)


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


def local_only(scenario: Scenario) -> None:
    if scenario.target.external:
        pytest.skip("needs the local test server's admin API")


# --- the scenario's tests ----------------------------------------------------------------


def test_upload_loads_the_day_as_a_normal_client_and_a_second_upload_creates_nothing(
        scenario: Scenario) -> None:
    first, second, names = scenario.uploads
    resources = read_resources(SAMPLE)
    if not scenario.target.external:
        assert f"{len(resources)} created, 0 already there" in first.stdout, shown(first)
    assert f"0 created, {len(resources)} already there" in second.stdout, shown(second)
    # every patient, appointment and order of the folder is on the server once, under an
    # id the server chose
    folder = {f"{r['resourceType']}/{r['id']}" for r in resources
              if r["resourceType"] in ("Patient", "Appointment", "ServiceRequest",
                                       "MedicationRequest")}
    assert set(names.to_folder.values()) == folder
    assert len(names.to_folder) == len(folder)
    assert not set(names.to_folder) & folder


def test_the_day_plans_identically_from_the_server_and_from_the_folder(
        scenario: Scenario, bundle_run: Run) -> None:
    # By the patient's MRN and the visit's time: a server's ids are its own.
    run, _ = scenario.dry
    from_server = run.day(scenario.names)
    from_files = {key: {**v, "proposals": [(*p[:2], "dry-run" if p[2] == "proposed"
                                            else p[2], *p[3:]) for p in v["proposals"]]}
                  for key, v in bundle_run.day().items()}
    assert from_server.keys() == from_files.keys()
    different = [key for key in from_files if from_server[key] != from_files[key]]
    assert different == [], (different[:1], from_server[different[0]] if different else None,
                             from_files[different[0]] if different else None)
    findings = sum(len(v["findings"]) for v in from_files.values())
    assert findings > 700


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
    assert run.report["failures"] == []
    identifiers = [s.identifier for s in ours]
    assert len(identifiers) == len(set(identifiers)), "duplicate proposals on the server"
    planned = run.keys("proposed")
    assert len(planned) >= 100
    assert {s.key for s in ours} == planned
    # what transactions/ holds is what was written, field for field
    written = {_value(r, SYSTEM): as_written(r) for r in run.transaction_resources()}
    assert {s.identifier: as_written(s.resource) for s in ours} == written
    codes = {p["identifier"]: p["code"] for p in run.proposals()}
    assert all(codes[s.identifier] in s.codes for s in ours), \
        [(s.identifier, codes[s.identifier], s.codes) for s in ours
         if codes[s.identifier] not in s.codes]
    assert {(s.status, s.intent) for s in ours} == {("draft", "proposal")}
    assert run.report["proposals"]["created"] == len(ours)
    assert run.report["proposals"]["proposed"] == len(ours)
    assert run.report["proposals"]["not_written"] == 0
    if not scenario.target.external:
        assert others == others_before  # nobody else's orders were touched


def test_visits_with_more_proposals_than_a_transaction_holds_are_written_whole(
        scenario: Scenario) -> None:
    # Medplum refuses a transaction of more than 8 conditional creates: 3 sample visits have
    # 10 to 13 proposals, and were never written.
    run, ours, _ = scenario.first
    per_visit: dict[str, int] = {}
    for p in run.proposals():
        if p["outcome"] == "proposed":
            per_visit[p["appointment"]] = per_visit.get(p["appointment"], 0) + 1
    large = {a: n for a, n in per_visit.items() if n > 8}
    assert sorted(large.values()) == [10, 12, 13]
    on_server = {s.identifier for s in ours}
    for appointment in large:
        assert {p["identifier"] for p in run.proposals() if p["appointment"] == appointment
                and p["outcome"] == "proposed"} <= on_server


def test_the_server_run_proposes_what_the_bundle_run_proposes(
        scenario: Scenario, bundle_run: Run) -> None:
    run = scenario.first[0]
    names = scenario.names

    def summary(r: Run, translate: Callable[[str], str]) -> set[tuple[str, ...]]:
        return {(translate(f"Appointment/{p['appointment']}"), p["resource_type"], p["code"],
                 p["outcome"], translate(p["existing"]) if p.get("existing") else "")
                for p in r.proposals()}

    from_server = summary(run, names.folder)
    from_files = summary(bundle_run, lambda ref: ref)
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
    names = scenario.names
    maria = names.server_id(MARIA)
    hba1c = [p for p in run.proposals() if p["patient"] == maria and p["code"] == HBA1C]
    assert hba1c, "María López's HbA1c (overdue) was not considered at all"
    # at her 8:00 lab visit someone's open order suppresses ours; at 9:20 it is that
    # earlier visit's draw
    assert {(p["outcome"], p.get("existing")) for p in hba1c} == \
        {("already-open", names.server(MARIA_OPEN_HBA1C)), ("earlier-visit", None)}
    assert not [s for s in ours if s.patient == maria and HBA1C in s.codes]


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


def sheets_by_visit(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_visit: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        for related in (doc.get("context") or {}).get("related") or ():
            ref = related.get("reference", "")
            if ref.startswith("Appointment/"):
                by_visit.setdefault(ref.removeprefix("Appointment/"), []).append(doc)
    return by_visit


def test_sheets_are_stored_once_per_planned_visit(scenario: Scenario) -> None:
    _, _, ours_before = scenario.revoked
    runs, stored, ours_after = scenario.sheets
    for run in runs:
        assert run.code == 0, shown(run.proc)
    visits = {v["visit"]["appointment_id"]: v["visit"]["patient_id"]
              for v in runs[0].plan["visits"] if not v.get("failed")}
    assert len(visits) >= 20
    for documents in stored:
        by_visit = sheets_by_visit(documents)
        assert {a: len(d) for a, d in by_visit.items()} == dict.fromkeys(visits, 1)
        assert len(documents) == len(visits)
        for appointment, (doc,) in by_visit.items():
            assert doc["subject"]["reference"] == f"Patient/{visits[appointment]}"
            assert doc["status"] == "current"
            # dated in the clinic's zone, in its own identifier system (not the proposals')
            assert doc["date"] == "2026-12-01T00:00:00-06:00"
            assert _value(doc, SYSTEM) is None
            attachment = doc["content"][0]["attachment"]
            assert attachment["contentType"].startswith("text/html")
            html = base64.b64decode(attachment["data"]).decode("utf-8")
            assert html.lstrip().lower().startswith("<!doctype html")
    assert sorted(d["id"] for d in stored[1]) == sorted(d["id"] for d in stored[0])
    assert ours_after == ours_before  # storing sheets writes no orders


def test_config_check_is_green_with_the_default_scopes(scenario: Scenario) -> None:
    proc = scenario.check
    assert proc.returncode == 0, shown(proc)
    assert re.search(r"\bbatch\b", proc.stdout, re.IGNORECASE), shown(proc)
    assert "[fail]" not in proc.stdout, shown(proc)
    assert "Traceback" not in proc.stderr
    if not scenario.target.external:
        assert "[ok] scopes: the token grants every permission the run needs" in proc.stdout
        for rtype in ("ServiceRequest", "MedicationRequest"):
            assert f"[ok] write check: creating {rtype} is allowed" in proc.stdout, \
                shown(proc)


@pytest.mark.parametrize(("scope", "red"), [
    # previsit's old default: reads, and v1 writes that Medplum maps to nothing
    ("system/*.read system/ServiceRequest.write system/MedicationRequest.write",
     ["[fail] write check: creating MedicationRequest is refused (HTTP 403 Forbidden",
      "[fail] write check: creating ServiceRequest is refused (HTTP 403 Forbidden"]),
    # everything but ServiceRequest
    ("system/Appointment.rs system/Patient.rs system/Condition.rs "
     "system/MedicationRequest.crus system/Medication.rs system/Observation.rs "
     "system/Procedure.rs system/Immunization.rs system/Encounter.rs "
     "system/MedicationDispense.rs system/MedicationStatement.rs",
     ["[fail] scopes: system/ServiceRequest.crus is not granted: reading each patient's "
      "record; writing lab, screening and immunization proposals will be refused",
      # nor may the check search for one to try creating with
      "[warn] write check: could not look for a ServiceRequest to check writing with"]),
])
def test_config_check_names_each_missing_permission(scenario: Scenario, scope: str,
                                                    red: list[str]) -> None:
    local_only(scenario)
    _ = scenario.uploads
    config = scenario.folder / "narrow.toml"
    config.write_text(scenario.config.read_text("utf-8") + f'scope = "{scope}"\n', "utf-8")
    proc = previsit("config", "check", "--config", config, timeout=60)
    found = [line for line in proc.stdout.splitlines()
             if line.startswith(("[fail]", "[warn] write check"))]
    assert [line[:len(want)] for line, want in zip(found, red, strict=True)] == red, \
        shown(proc)


def test_two_runs_at_once_write_every_proposal_and_sheet_once(
        scenario: Scenario, bundle_run: Run) -> None:
    runs, ours, documents = scenario.at_once
    for run in runs:
        assert run.code == 0, shown(run.proc)
        assert run.report["failures"] == []
    identifiers = [s.identifier for s in ours]
    assert len(identifiers) == len(set(identifiers)), "duplicate proposals on the server"
    # each run proposed what the other had not written yet when it read the patient
    for run in runs:
        assert {s.key for s in ours} == run.keys("proposed", "already-written")
    assert len(ours) == sum(1 for p in bundle_run.proposals() if p["outcome"] == "proposed")
    # each proposal was created by exactly one of the two runs
    assert sum(r.report["proposals"]["created"] for r in runs) == len(ours)
    # one sheet per visit, whichever run stored it last
    visits = runs[0].visits(failed=False)
    assert {a: len(d) for a, d in sheets_by_visit(documents).items()} == \
        dict.fromkeys(visits, 1)


def test_a_run_with_the_quota_nearly_spent_pauses_and_writes_everything(
        scenario: Scenario, bundle_run: Run) -> None:
    local_only(scenario)
    run, ours, documents, stats = scenario.throttled
    assert run.code == 0, shown(run.proc)
    assert run.report["failures"] == []
    assert stats["rate_limited"]["requests"] + stats["rate_limited"]["entries"] >= 1
    assert "every request pauses" in run.proc.stderr, shown(run.proc)
    assert len(ours) == len({s.identifier for s in ours}) == run.report["proposals"]["created"]
    assert {s.key for s in ours} == run.keys("proposed")
    assert len(ours) == sum(1 for p in bundle_run.proposals() if p["outcome"] == "proposed")
    visits = run.visits(failed=False)
    assert {a: len(d) for a, d in sheets_by_visit(documents).items()} == \
        dict.fromkeys(visits, 1)


# --- faults ----------------------------------------------------------------------------------


def seed(root_url: str) -> None:
    """The sample day stored by the admin (PUT by the folder's ids, no production rules):
    fast, for tests about what happens after the data is there."""
    resources = read_resources(SAMPLE)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}
    FhirServerAdmin(root_url, timeout_s=60).load(bundle)


class KillableServer:
    """The test server (the strict default profile) with --verbose, so the test sees each
    request as the server takes it, and kills the server (SIGKILL) from the reading thread
    the moment a condition on the requests seen since `arm()` holds: before the response
    leaves (latency)."""

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
        self.root_url = self.base_url.removesuffix("/fhir/R4")

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
               *extra: str, attempts: int = 2, **source: Any) -> Run:
    config = write_config(tmp_path / "c.toml", base_url=server.base_url, out=tmp_path / "out",
                          page_size=1000, max_attempts=attempts, max_retry_seconds=2.0,
                          **source)
    seed(server.root_url)
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
    # A patient's record is read and its visits written before later patients are done, so
    # reads and transactions interleave: when POST number patients + 5 arrives, at least 5
    # transactions have. Written one at a time (write_concurrency 1), each answered before
    # the next is sent: at least 4 were written. One attempt per request.
    run = _fault_run(killable, tmp_path,
                     lambda seen: _posts(_after_appointments(seen)) >= patients + 5,
                     "--write-back", attempts=1, write_concurrency=1)
    assert run.code == 3, shown(run.proc)
    failures = run.report["failures"]
    assert {f["appointment"] for f in failures} == run.visits(failed=True) != set()
    for failure in failures:
        assert re.match(r"write-back (failed|partly done)|record could not be read",
                        failure["reason"]), failure
        assert failure["appointment"] in run.proc.stdout  # the summary names them
    assert any(f["reason"].startswith("write-back") for f in failures)
    not_written = {i for f in failures for i in f["not_written"]}
    written = [p for p in run.proposals()
               if p["outcome"] == "proposed" and p["identifier"] not in not_written]
    assert len(written) >= 4
    assert run.report["proposals"]["created"] == len(written)
    assert run.report["proposals"]["not_written"] == len(not_written)


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
