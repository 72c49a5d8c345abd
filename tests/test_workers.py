"""Planning in worker processes: the same outputs as planning in the run's process, and a
worker that dies fails only the patient it was planning.

The sample day through the bundle source, streamed into a folder (run.run_to_folder, as
the CLI runs it) or kept in memory (run.run_day, as the web app runs it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import shipped_rules

from previsit import answers, workers
from previsit import timeline as tl
from previsit.config import Config
from previsit.errors import SourceError
from previsit.evaluate import Settings
from previsit.identifiers import DEFAULT_SYSTEM
from previsit.plan import VisitPlan
from previsit.report import EXIT_PARTIAL
from previsit.run import RunOptions, RunResult, run_day, run_to_folder
from previsit.sources import VisitWindow
from previsit.sources.bundles import BundleSource

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_bundles"
WINDOW = VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 2), timezone="America/Chicago")
MINUTES = Config().sheets.minutes_saved
WHITEHORSE = "appt-1201-1000-whitehorse"


def to_folder(out: Path, processes: int | None) -> RunResult:
    result, _, _ = asyncio.run(run_to_folder(
        BundleSource(SAMPLE), shipped_rules(), RunOptions(window=WINDOW, processes=processes),
        out, minutes_saved=MINUTES))
    return result


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run-report.json"}


def test_a_pool_of_two_writes_what_the_run_process_writes(tmp_path: Path) -> None:
    alone = to_folder(tmp_path / "alone", 0)
    pooled = to_folder(tmp_path / "pooled", 2)
    written = outputs(tmp_path / "pooled")
    assert written == outputs(tmp_path / "alone")
    assert len([name for name in written if name.startswith("sheets/")]) == 33
    assert not list((tmp_path / "pooled").glob(".previsit-spool-*"))  # the spool is gone
    assert pooled.report.to_json() | {"timings": {}} == alone.report.to_json() | {"timings": {}}
    assert pooled.report.visits.planned == 33 and pooled.bundle_count == 32


def test_a_pool_gives_run_day_the_same_day_plan() -> None:
    def day(processes: int) -> RunResult:
        return asyncio.run(run_day(BundleSource(SAMPLE), shipped_rules(),
                                   RunOptions(window=WINDOW, processes=processes)))

    pooled, alone = day(2), day(0)
    assert pooled.day == alone.day
    assert pooled.bundles == alone.bundles
    assert list(pooled.bundles) == list(alone.bundles)  # in the day's order


@pytest.mark.parametrize("when", ["planning", "answering"])
def test_a_worker_that_dies_fails_only_the_patient_it_was_planning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    real, real_put = workers.evaluate, answers.put
    victim: dict[str, str] = {}

    def evaluate(record: Any, ruleset: Any, visit: Any, settings: Any) -> VisitPlan:
        if visit.appointment_id == WHITEHORSE:
            os._exit(9)  # the worker process dies as an out-of-memory kill would end it
        return real(record, ruleset, visit, settings)

    def put(answer: Any, into: str) -> str:  # dies with its answer (tens of KB) written
        path = real_put(answer, into)
        if isinstance(answer, list) and any(d.plan.visit.appointment_id == WHITEHORSE
                                            for d in answer):
            os._exit(9)
        return path

    # worker processes forked from the run plan with these
    monkeypatch.setattr(workers, "START_METHOD", "fork")
    if when == "planning":
        monkeypatch.setattr(workers, "evaluate", evaluate)
    else:
        monkeypatch.setattr(answers, "put", put)
    result = to_folder(tmp_path / "crashed", 2)
    monkeypatch.setattr(workers, "evaluate", real)
    monkeypatch.setattr(answers, "put", real_put)
    to_folder(tmp_path / "whole", 0)

    assert result.exit_code == EXIT_PARTIAL
    failures = result.report.failures
    victim = {f.appointment: f.reason for f in failures}
    assert victim == {WHITEHORSE: "could not be planned: the worker process planning this "
                                  "patient died (killed, out of memory, or a crash)"}
    assert result.report.visits.planned == 32
    crashed, whole = outputs(tmp_path / "crashed"), outputs(tmp_path / "whole")
    differing = {name for name in whole if crashed.get(name) != whole[name]}
    # the victim's own sheet and transaction, and the documents of the whole day
    assert differing == {"plan.json", "huddle.html", "visits.html",
                         f"sheets/visit-{WHITEHORSE}.html", f"transactions/{WHITEHORSE}.json"}
    assert f"transactions/{WHITEHORSE}.json" not in crashed


def test_the_pool_is_left_out_of_a_small_day_unless_asked_for() -> None:
    cores = len(os.sched_getaffinity(0))
    assert workers.pool_size(None, workers.POOL_MIN_VISITS - 1) == 0
    assert workers.pool_size(None, workers.POOL_MIN_VISITS) == (cores if cores > 1 else 0)
    assert workers.pool_size(0, 10_000) == 0
    assert workers.pool_size(1, 10_000) == 0
    assert workers.pool_size(3, 5) == 3


def test_a_day_as_large_as_the_threshold_is_planned_in_a_pool_when_left_to_previsit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    caplog.set_level(logging.INFO, logger="previsit.run")
    monkeypatch.setattr(workers, "POOL_MIN_VISITS", 36)  # the sample day: 36 appointments
    cores = len(os.sched_getaffinity(0))
    to_folder(tmp_path / "pooled", None)
    pooled = [r.getMessage() for r in caplog.records if "worker processes" in r.getMessage()]
    assert pooled == ([f"planning in {cores} worker processes"] if cores > 1 else [])
    caplog.clear()
    monkeypatch.setattr(workers, "POOL_MIN_VISITS", 37)
    to_folder(tmp_path / "alone", None)
    assert not [r for r in caplog.records if "worker processes" in r.getMessage()]


class _DamagedAfterScan(BundleSource):
    """A folder whose one patient file is broken between the scan and the record's read
    (a file replaced mid-run): the read happens where the record is planned."""

    def __init__(self, folder: Path, victim: Path) -> None:
        super().__init__(folder)
        self.victim = victim
        self.read_here = 0  # records read in the run's process

    def record_loader(self, patient_id: str) -> Any:
        if self.victim.stem == patient_id:
            self.victim.write_text("{ not json")
        return super().record_loader(patient_id)

    async def patient_record(self, patient_id: str) -> Any:
        self.read_here += 1
        return self.record_loader(patient_id).load()


def test_a_record_a_worker_cannot_read_fails_only_that_patient(tmp_path: Path) -> None:
    import shutil

    def damaged(name: str, processes: int) -> tuple[RunResult, int]:
        folder = tmp_path / name
        shutil.copytree(SAMPLE, folder)
        source = _DamagedAfterScan(folder, folder / "patients" / "pat-james-whitehorse.json")
        result, _, _ = asyncio.run(run_to_folder(
            source, shipped_rules(), RunOptions(window=WINDOW, processes=processes),
            tmp_path / f"{name}-out", minutes_saved=MINUTES))
        return result, source.read_here

    (pooled, read_in_run), (alone, read_alone) = damaged("pooled", 2), damaged("alone", 0)
    # in a pool each worker reads the records it plans; without one, the run reads them
    assert (read_in_run, read_alone) == (0, 31)
    assert pooled.exit_code == EXIT_PARTIAL
    reasons = {f.appointment: f.reason for f in pooled.report.failures}
    assert list(reasons) == [WHITEHORSE]
    assert reasons[WHITEHORSE].startswith("record could not be read: ")
    assert reasons[WHITEHORSE].endswith("/pooled/patients/pat-james-whitehorse.json: not "
                                        "valid JSON: Expecting property name enclosed in "
                                        "double quotes at line 1 column 3; file skipped")
    assert [f.reason.replace("/alone/", "/pooled/") for f in alone.report.failures] == \
        [reasons[WHITEHORSE]]
    assert pooled.report.visits.planned == 32
    assert outputs(tmp_path / "pooled-out") == {
        name: content.replace(b"/alone/", b"/pooled/")
        for name, content in outputs(tmp_path / "alone-out").items()}


_FORK_SERVERS = r"""
import os, sys, time
from previsit import workers

def fork_servers():
    found = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline", "rb") as cmd:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                found += parent == os.getpid() and b"forkserver" in cmd.read()
        except OSError:
            pass
    return found

if __name__ == "__main__":
    started = [workers.warm_up(0), workers.warm_up(1)]
    time.sleep(0.5)
    counts = [fork_servers()]
    started.append(workers.warm_up(int(sys.argv[1]) if sys.argv[1] != "auto" else None))
    deadline = time.monotonic() + 10
    while fork_servers() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    counts.append(fork_servers())
    print(started, counts)
"""


@pytest.mark.parametrize("processes", ["2", "auto"])
def test_the_fork_server_is_started_while_the_day_is_read_unless_planning_in_process(
        tmp_path: Path, processes: str) -> None:
    # Started early, its import of previsit (0.5 s) runs beside the read, not after it.
    script = tmp_path / "warm.py"
    script.write_text(_FORK_SERVERS, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), processes], capture_output=True,
                          text=True, check=True, timeout=60)
    one_core = processes == "auto" and len(os.sched_getaffinity(0)) == 1  # pool_size: none
    assert done.stdout.strip() == ("[False, False, False] [0, 0]" if one_core else
                                   "[False, False, True] [0, 1]")


class _CollectorWatch:
    """A record 'loader' that tells whether Python's cycle collector was on while it read."""

    patient_id = "p1"

    def load(self) -> Any:
        raise SourceError(f"collector on: {gc.isenabled()}")


def test_the_collector_rests_while_a_worker_reads_and_plans_a_patient() -> None:
    context = workers.PlanContext(
        shipped_rules(), Settings(), DEFAULT_SYSTEM, False,
        tl.Timeline(run_day=date(2026, 11, 30), huddle=WINDOW), visits=1)

    async def plan(processes: int) -> object:
        async with workers.Planner(context, processes) as planner:
            return await planner.plan(_CollectorWatch(), [])

    assert asyncio.run(plan(1)) == "record could not be read: collector on: False"
    assert gc.isenabled()  # the run's own process is left as it was
    assert asyncio.run(plan(0)) == "record could not be read: collector on: True"
