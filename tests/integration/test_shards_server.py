"""Four shards at once against one server, then `previsit merge`: the union is the single
run's day, and the server holds each proposal once.

The sample day is loaded into a fresh (strict, Medplum-like) test server; `previsit run
--shard K/4 --write-back` runs as four processes started together (as an Indexed Job's
pods or four cron hosts would), `previsit merge` joins their folders, and a shard is run
again (a retried pod).
Then the server is emptied and reloaded and one unsharded `--write-back` run plans the same
day: every output file of the merge equals the single run's, except the run report's
timings and HTTP request count (each shard reads the day's appointment list and the
server's CapabilityStatement itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirserver import fhir_test_server
from nights import outputs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_bundles"
SYSTEM = "urn:previsit:proposal"
CLI = [sys.executable, "-c", "from previsit.cli.app import main; main()"]
ENV = {k: v for k, v in os.environ.items()
       if not k.startswith(("PREVISIT_", "JOB_COMPLETION"))}


def previsit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=180, check=False)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def day_args(base_url: str, out: Path) -> list[str | Path]:
    return ["run", "--fhir-url", base_url, "--date", "2026-12-01", "--timezone",
            "America/Chicago", "--write-back", "--quiet", "--out", out]


def proposals_on(base_url: str) -> Counter[str]:
    """How many resources on the server carry each of our proposal identifiers."""
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=base_url + "/", timeout=30) as client:
        for rtype in ("ServiceRequest", "MedicationRequest"):
            bundle = client.get(rtype, params={"_count": "1000"}).json()
            assert not [x for x in bundle.get("link", []) if x["relation"] == "next"]
            for entry in bundle.get("entry", []):
                for identifier in entry["resource"].get("identifier", []):
                    if identifier.get("system") == SYSTEM:
                        seen[identifier["value"]] += 1
    return seen


@dataclass(frozen=True)
class Night:
    shards: list[Path]
    day: Path
    single: Path
    after_shards: Counter[str]  # proposals on the server after the four shards
    retry: subprocess.CompletedProcess[str]
    after_retry: Counter[str]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    tmp = tmp_path_factory.mktemp("shards")
    with fhir_test_server() as server:
        server.admin.load_folder(SAMPLE)
        shards = [tmp / f"out-{k}" for k in range(1, 5)]
        running = [subprocess.Popen([*CLI, *map(str, day_args(server.base_url, out)),
                                     "--shard", f"{k}/4"], cwd=ROOT, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for k, out in enumerate(shards, start=1)]
        for proc in running:
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout}\n{stderr}"
        merged = previsit("merge", *shards, "--out", tmp / "day")
        assert merged.returncode == 0, shown(merged)
        after_shards = proposals_on(server.base_url)
        retry = previsit(*day_args(server.base_url, tmp / "retry-2"), "--shard", "2/4")
        after_retry = proposals_on(server.base_url)

        server.admin.reset(data=True)
        server.admin.load_folder(SAMPLE)
        single = previsit(*day_args(server.base_url, tmp / "single"))
        assert single.returncode == 0, shown(single)
        yield Night(shards, tmp / "day", tmp / "single", after_shards, retry, after_retry)


def _plan(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    return data


def test_the_merged_shards_are_the_single_run_file_for_file(night: Night) -> None:
    merged, single = outputs(night.day), outputs(night.single)
    assert sorted(merged) == sorted(single)
    for name, data in single.items():
        assert merged[name] == data, name
    assert len(_plan(night.day)["visits"]) == 33


def test_every_shard_planned_part_of_the_day_and_no_visit_twice(night: Night) -> None:
    per_shard = [[v["visit"]["appointment_id"]
                  for v in (*_plan(f)["visits"], *_plan(f)["labs_ahead"])]
                 for f in night.shards]
    assert all(per_shard)
    every = [a for part in per_shard for a in part]
    assert len(every) == len(set(every)) == 33 + 3  # the clinic day and the labs ahead


def test_the_server_holds_each_proposal_once(night: Night) -> None:
    proposed = [p["identifier"] for v in _plan(night.day)["visits"]
                for p in v["proposals"] if p["outcome"] == "proposed"]
    assert len(proposed) == len(set(proposed)) > 100
    assert night.after_shards == Counter(proposed)  # exactly one per visit and code
    report = json.loads((night.day / "run-report.json").read_text(encoding="utf-8"))
    assert report["proposals"]["created"] == len(proposed)
    assert report["exit_code"] == 0


def test_a_retried_shard_writes_nothing_twice(night: Night) -> None:
    assert night.retry.returncode == 0, shown(night.retry)
    assert night.after_retry == night.after_shards
    retried = night.day.parent / "retry-2"
    report = json.loads((retried / "run-report.json").read_text(encoding="utf-8"))
    assert report["proposals"]["created"] == 0
    again = _plan(retried)
    first = _plan(night.shards[1])
    assert [v["visit"]["appointment_id"] for v in again["visits"]] == \
        [v["visit"]["appointment_id"] for v in first["visits"]]
    outcomes = Counter(p["outcome"] for v in again["visits"] for p in v["proposals"])
    assert outcomes["proposed"] == 0 and outcomes["already-written"] > 0
