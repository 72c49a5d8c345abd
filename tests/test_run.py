"""Run orchestration: one patient's failure fails only their visits; exit codes; outputs."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import appointment, bundle, patient, tiny_rules, write

from previsit.errors import ConfigError, PatientReadError, SourceError
from previsit.plan import ProposalOutcome, Visit
from previsit.record import PatientRecord
from previsit.report import EXIT_NOTHING, EXIT_OK, EXIT_PARTIAL, VisitCounts
from previsit.run import RunOptions, run_day, write_outputs
from previsit.sources import VisitWindow, WriteResult
from previsit.sources.bundles import BundleSource

WINDOW = VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 2), timezone="America/Chicago")


class Breaking(BundleSource):
    """A bundle source whose reads or writes fail for chosen patients / appointments: with
    a SourceError, with an error nobody foresaw (`broken`, `unwritable_oddly`), or by never
    answering (`hanging`)."""

    def __init__(self, folder: Path, *, unreadable: Sequence[str] = (),
                 unwritable: Sequence[str] = (), down: bool = False,
                 broken: Sequence[str] = (), unwritable_oddly: Sequence[str] = (),
                 hanging: Sequence[str] = ()) -> None:
        super().__init__(folder)
        self.unreadable, self.unwritable, self.down = set(unreadable), set(unwritable), down
        self.broken, self.oddly, self.hanging = set(broken), set(unwritable_oddly), set(hanging)

    async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
        if self.down:
            raise SourceError("connection refused")
        return await super().appointments(window)

    async def patient_record(self, patient_id: str) -> PatientRecord:
        if patient_id in self.unreadable:
            raise PatientReadError(patient_id, "HTTP 503 after 5 attempts")
        if patient_id in self.broken:
            raise OverflowError("Ana Able's value 1e999 does not fit")  # names the patient
        if patient_id in self.hanging:
            await asyncio.sleep(3600)
        return await super().patient_record(patient_id)

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        if key in self.unwritable:
            raise SourceError("HTTP 500 on transaction")
        if key in self.oddly:
            raise KeyError("entry")
        return await super().write_transaction(bundle, key=key)


@pytest.fixture
def day(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write(folder, "day.json", bundle(
        patient(pid="p1", age=50), patient(pid="p2", age=60), patient(pid="p3", age=70),
        appointment("a1", "2026-12-01T09:00:00-06:00", pid="p1"),
        appointment("a2", "2026-12-01T09:20:00-06:00", pid="p2"),
        appointment("a2b", "2026-12-01T11:00:00-06:00", pid="p2"),
        appointment("a3", "2026-12-01T10:00:00-06:00", pid="p3")))
    return folder


def run(source: BundleSource, tmp_path: Path, write_back: bool = True,
        deadline: float | None = None) -> Any:
    rules = tiny_rules(tmp_path / "rules")
    return asyncio.run(run_day(source, rules, RunOptions(window=WINDOW, write_back=write_back,
                                                         read_deadline_seconds=deadline)))


def test_all_planned(day: Path, tmp_path: Path) -> None:
    result = run(BundleSource(day), tmp_path)
    assert result.exit_code == EXIT_OK
    assert [p.visit.appointment_id for p in result.day.plans] == ["a1", "a2", "a3", "a2b"]
    # p2 has two visits: the FIT is proposed for the first one only
    outcomes = {p.visit.appointment_id: [s.outcome for s in p.proposals]
                for p in result.day.plans}
    assert outcomes == {"a1": ["proposed"], "a2": ["proposed"], "a3": ["proposed"],
                        "a2b": ["earlier-visit"]}
    assert sorted(result.bundles) == ["a1", "a2", "a3"]
    assert result.report.visits == VisitCounts(total=4, planned=4, failed=0, patients=3)


def test_one_unreadable_patient_fails_only_their_visits(day: Path, tmp_path: Path) -> None:
    result = run(Breaking(day, unreadable=["p2"]), tmp_path)
    assert result.exit_code == EXIT_PARTIAL
    failed = {p.visit.appointment_id: p.failed for p in result.day.plans if p.failed}
    assert set(failed) == {"a2", "a2b"}
    assert "HTTP 503 after 5 attempts" in failed["a2"]
    assert [f.appointment for f in result.report.failures] == ["a2", "a2b"]


def test_write_back_failure_fails_that_visit(day: Path, tmp_path: Path) -> None:
    result = run(Breaking(day, unwritable=["a3"]), tmp_path)
    assert result.exit_code == EXIT_PARTIAL
    assert [p.visit.appointment_id for p in result.day.plans if p.failed] == ["a3"]


def test_every_patient_failing_is_nothing_done(day: Path, tmp_path: Path) -> None:
    result = run(Breaking(day, unreadable=["p1", "p2", "p3"]), tmp_path)
    assert result.exit_code == EXIT_NOTHING


def test_unreachable_source_raises(day: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="connection refused"):
        run(Breaking(day, down=True), tmp_path)


def test_dry_run_writes_nothing(day: Path, tmp_path: Path) -> None:
    result = run(Breaking(day, unwritable=["a1", "a2", "a3"]), tmp_path, write_back=False)
    assert result.exit_code == EXIT_OK
    assert result.report.proposals.created == 0
    assert result.report.proposals[ProposalOutcome.DRY_RUN] == 3
    assert result.report.proposals[ProposalOutcome.PROPOSED] == 0
    # the sheets and plan.json say it was not written
    assert {s.outcome for p in result.day.plans for s in p.proposals} == {"dry-run",
                                                                           "earlier-visit"}
    assert sorted(result.bundles) == ["a1", "a2", "a3"]  # what would be written


@pytest.mark.parametrize(("status", "first"), [("draft", "already-written"),
                                               ("revoked", "declined"),
                                               ("completed", "done")])
def test_a_rerun_reads_like_the_first_run_for_a_second_visit(day: Path, tmp_path: Path,
                                                              status: str, first: str) -> None:
    # Run 1 proposed the FIT for a2; on the chart now, as written (or revoked / completed by
    # a clinician). Run 2: a2 finds its own proposal, and a2b still says earlier-visit —
    # not "someone's open order", and a revoked one is not re-proposed for the later visit.
    written = run(BundleSource(day), tmp_path).bundles["a2"]["entry"][0]["resource"]
    write(day, "written.json", bundle({**written, "id": "sr-written", "status": status}))
    result = run(BundleSource(day), tmp_path)
    outcomes = {p.visit.appointment_id: [s.outcome for s in p.proposals]
                for p in result.day.plans}
    assert outcomes["a2"] == [first]
    assert outcomes["a2b"] == ["earlier-visit"]
    assert "a2" not in result.bundles and "a2b" not in result.bundles


def test_outputs_are_byte_identical_on_a_rerun(day: Path, tmp_path: Path) -> None:
    first = write_outputs(run(BundleSource(day), tmp_path), tmp_path / "out1")
    second = write_outputs(run(BundleSource(day), tmp_path), tmp_path / "out2")
    assert first["plan"].read_bytes() == second["plan"].read_bytes()
    names = sorted(p.name for p in (tmp_path / "out1" / "transactions").iterdir())
    assert names == ["a1.json", "a2.json", "a3.json"]
    for name in names:
        assert (tmp_path / "out1/transactions" / name).read_bytes() == \
            (tmp_path / "out2/transactions" / name).read_bytes()
    report = json.loads(first["report"].read_text())
    assert report["exit_code"] == 0 and "timings" in report


# --- the per-patient boundary and the deadline ----------------------------------------------


def test_an_unforeseen_error_reading_one_patient_fails_only_their_visits(
        day: Path, tmp_path: Path) -> None:
    result = run(Breaking(day, broken=["p2"]), tmp_path)
    assert result.exit_code == EXIT_PARTIAL
    failed = {p.visit.appointment_id: p.failed for p in result.day.plans if p.failed}
    reason = ("record could not be read: unexpected OverflowError (a bug, or data previsit "
              "cannot read; details with --verbose)")
    assert failed == {"a2": reason, "a2b": reason}  # the message (a name) is not repeated
    assert sorted(result.bundles) == ["a1", "a3"]


def test_an_unforeseen_error_planning_one_visit_fails_only_that_visit(
        day: Path, tmp_path: Path) -> None:
    result = run(Breaking(day, unwritable_oddly=["a1"]), tmp_path)
    assert result.exit_code == EXIT_PARTIAL
    assert {p.visit.appointment_id: p.failed for p in result.day.plans if p.failed} == {
        "a1": "could not be planned: unexpected KeyError (a bug, or data previsit cannot "
              "read; details with --verbose)"}


def test_reading_stops_at_the_runs_deadline(day: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run(Breaking(day, hanging=["p3"]), tmp_path, deadline=0.5)
    assert time.monotonic() - started < 5
    assert result.exit_code == EXIT_PARTIAL
    assert {p.visit.appointment_id: p.failed for p in result.day.plans if p.failed} == {
        "a3": "record not read within the run's deadline (source.deadline_seconds)"}


def test_appointments_not_read_by_the_deadline_are_nothing_done(day: Path,
                                                                tmp_path: Path) -> None:
    class Slow(BundleSource):
        async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
            await asyncio.sleep(3600)
            return []

    with pytest.raises(SourceError, match=r"^the appointments were not read within the "
                       r"run's deadline of 0.2 s \(source.deadline_seconds\)$"):
        run(Slow(day), tmp_path, deadline=0.2)


def test_outputs_are_private_and_replace_the_last_ones_whole(day: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    previous = os.umask(0)  # the most permissive umask: the modes must not depend on it
    try:
        paths = write_outputs(run(BundleSource(day), tmp_path), out)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in [tmp_path / "new", *sorted((tmp_path / "new").rglob("*"))]}
    assert modes == {"new": "0o700", "new/out": "0o700", "new/out/plan.json": "0o600",
                     "new/out/run-report.json": "0o600", "new/out/transactions": "0o700",
                     "new/out/transactions/a1.json": "0o600",
                     "new/out/transactions/a2.json": "0o600",
                     "new/out/transactions/a3.json": "0o600"}
    assert json.loads(paths["plan"].read_text())["resourceType"] == "previsit-plan"

# --- the two horizons ------------------------------------------------------------------------


@pytest.fixture
def week(tmp_path: Path) -> Path:
    """The clinic day (12-01), a patient who died with a stale booking that day, and a
    visit 8 days out (12-09) whose pre-visit lab is ordered tonight (run day 11-30)."""
    folder = tmp_path / "week"
    dead = {**patient(pid="p4", age=80), "deceasedDateTime": "2026-10-19"}
    write(folder, "week.json", bundle(
        patient(pid="p1", age=50), dead, patient(pid="p5", age=60),
        appointment("a1", "2026-12-01T09:00:00-06:00", pid="p1"),
        appointment("a4", "2026-12-01T10:00:00-06:00", pid="p4"),
        appointment("a5", "2026-12-09T09:00:00-06:00", pid="p5"),
        appointment("a6", "2026-12-20T09:00:00-06:00", pid="p5")))  # beyond the horizon
    return folder


def run_week(source: BundleSource, tmp_path: Path) -> Any:
    rules = tiny_rules(tmp_path / "rules")
    options = RunOptions(window=WINDOW, write_back=True, labs_ahead_days=10,
                         run_day=date(2026, 11, 30))
    return asyncio.run(run_day(source, rules, options))


def test_one_run_plans_the_clinic_day_and_orders_the_labs_ahead(week: Path,
                                                               tmp_path: Path) -> None:
    result = run_week(BundleSource(week), tmp_path)
    assert [p.visit.appointment_id for p in result.day.plans] == ["a1", "a4"]
    assert [p.visit.appointment_id for p in result.day.ahead] == ["a5"]
    assert result.day.run_day == date(2026, 11, 30)
    # tomorrow's FIT: at check-in; the one 9 days out: from tonight until 7 days before
    [tomorrow] = result.day.plans[0].proposals
    [ahead] = result.day.ahead[0].proposals
    assert (tomorrow.occurrence_start, tomorrow.occurrence) == (date(2026, 12, 1),) * 2
    assert (ahead.occurrence_start, ahead.occurrence) == (date(2026, 11, 30), date(2026, 12, 2))
    resource = result.bundles["a5"]["entry"][0]["resource"]
    assert resource["authoredOn"] == "2026-11-30"
    assert resource["occurrencePeriod"] == {"start": "2026-11-30", "end": "2026-12-02"}
    assert result.labs_ahead is not None and result.labs_ahead.visits == 1
    assert result.labs_ahead.proposals == {ProposalOutcome.PROPOSED: 1}


def test_a_deceased_patients_booking_is_an_input_problem_not_a_failure(
        week: Path, tmp_path: Path) -> None:
    result = run_week(BundleSource(week), tmp_path)
    dead = result.day.plans[1]
    assert (dead.findings, dead.proposals, dead.failed) == ((), (), None)
    assert dead.not_planned == ("the patient is recorded as deceased on 2026-10-19: the "
                                "booking was not planned and no order was written; cancel it")
    assert "a4" not in result.bundles
    assert [(p.where, p.patient_id) for p in result.report.source_problems] == [
        ("Appointment/a4", "p4")]
    assert result.report.visits == VisitCounts(total=2, planned=2, failed=0, patients=2)
    assert result.exit_code == EXIT_OK


def test_a_labs_ahead_visit_that_fails_makes_the_run_partial(week: Path,
                                                             tmp_path: Path) -> None:
    result = run_week(Breaking(week, unreadable=["p5"]), tmp_path)
    assert result.report.failures == ()  # the clinic day itself is fine
    assert result.labs_ahead is not None
    assert [a for a, _ in result.labs_ahead.failures] == ["a5"]
    assert result.exit_code == EXIT_PARTIAL


def test_the_report_says_what_the_labs_ahead_horizon_did(week: Path, tmp_path: Path) -> None:
    paths = write_outputs(run_week(BundleSource(week), tmp_path), tmp_path / "out")
    report = json.loads(paths["report"].read_text())
    assert report["run_date"] == "2026-11-30"
    assert report["labs_ahead"]["start"] == "2026-12-02"
    assert report["labs_ahead"]["end"] == "2026-12-11"
    assert report["labs_ahead"]["visits"] == 1
    assert report["labs_ahead"]["proposals"]["proposed"] == 1
    plan = json.loads(paths["plan"].read_text())
    assert [v["visit"]["appointment_id"] for v in plan["labs_ahead"]] == ["a5"]
    assert sorted(p.name for p in paths["transactions"].iterdir()) == ["a1.json", "a5.json"]


def test_a_clinic_day_already_past_is_refused(week: Path, tmp_path: Path) -> None:
    rules = tiny_rules(tmp_path / "rules")
    options = RunOptions(window=WINDOW, run_day=date(2026, 12, 2))
    with pytest.raises(ConfigError, match="before the run day"):
        asyncio.run(run_day(BundleSource(week), rules, options))


class Releasing(BundleSource):
    """Records when the run says it is done with a patient (release_record), and which of
    the patient's appointments had been written by then."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.written: list[str] = []
        self.released: dict[str, list[str]] = {}

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> Any:
        self.written.append(key)
        return await super().write_transaction(bundle, key=key)

    def release_record(self, patient_id: str) -> None:
        self.released[patient_id] = list(self.written)


def test_a_patient_is_released_once_all_their_visits_are_written(day: Path,
                                                                   tmp_path: Path) -> None:
    source = Releasing(day)
    result = run(source, tmp_path)
    assert result.exit_code == EXIT_OK
    assert set(source.released) == {"p1", "p2", "p3"}
    assert "a1" in source.released["p1"]
    assert "a2" in source.released["p2"]  # a2b proposes nothing: its lab is a2's
    assert "a3" in source.released["p3"]
