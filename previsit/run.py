"""One run: appointments → records → plans → proposals → write-back → outputs + report.

This is the only module that sequences the edges; each step is a call into a module
that knows nothing of the others. A patient whose record cannot be read, or whose
write-back fails, marks that patient's visits `failed` with the reason; the run goes on
and the exit code tells the scheduler.

Each patient's read and each visit's planning is one broad boundary: whatever goes wrong
inside (a SourceError, or something nobody foresaw in one chart) fails that patient's
visits, is logged, and the run goes on to write its report. Reading has a deadline for
the whole run; what is not read by then fails, the rest is planned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from previsit.errors import ProposalError, SourceError
from previsit.evaluate import Settings, evaluate
from previsit.filenames import safe_part
from previsit.files import private_folder, write_text
from previsit.identifiers import DEFAULT_SYSTEM
from previsit.jsonio import dumps
from previsit.plan import DayPlan, ProposalOutcome, Visit, VisitPlan
from previsit.proposals import plan_proposals
from previsit.record import PatientRecord, with_plausible_birth_date
from previsit.report import RunReport, SheetCounts, build_report
from previsit.ruleset import RuleSet
from previsit.sources import Source, VisitWindow

log = logging.getLogger("previsit.run")

@dataclass(frozen=True)
class RunOptions:
    window: VisitWindow
    settings: Settings = field(default_factory=Settings)
    identifier_system: str = DEFAULT_SYSTEM
    as_of: date | None = None  # the authoredOn of proposals; default: the window start
    write_back: bool = False  # send transactions to the source (a server)
    concurrency: int = 8
    # Also store each planned visit's sheet as a DocumentReference (with write_back only).
    # The callable renders a plan's sheet as HTML (previsit.sheets.render_visit_sheet).
    render_sheet: Callable[[VisitPlan], str] | None = None
    # Reading (appointments and every record) must be over this many seconds after the run
    # starts (config source.deadline_seconds); None: no deadline.
    read_deadline_seconds: float | None = None


@dataclass(frozen=True)
class RunResult:
    day: DayPlan
    bundles: dict[str, dict[str, Any]]  # appointment id -> transaction Bundle to write
    report: RunReport

    @property
    def exit_code(self) -> int:
        return self.report.exit_code


def _failed_plan(visit: Visit, reason: str) -> VisitPlan:
    return VisitPlan(visit=visit, patient_name=None, patient_age=None, patient_sex=None,
                     patient_mrn=None, findings=(), failed=reason)


# What a patient's earlier visit in this run settled, so that a later visit neither draws
# the same lab twice nor re-proposes what a clinician declined.
_HANDLED_HERE = frozenset({ProposalOutcome.PROPOSED, ProposalOutcome.ALREADY_WRITTEN,
                           ProposalOutcome.ALREADY_OPEN, ProposalOutcome.DECLINED,
                           ProposalOutcome.DONE})

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _unexpected(exc: BaseException) -> str:
    """The reason for a failure nobody foresaw: its kind, never its message (which may
    quote a chart's values); the traceback is logged at DEBUG."""
    return (f"unexpected {type(exc).__name__} (a bug, or data previsit cannot read; details "
            "with --verbose)")


async def _read_records(source: Source, patient_ids: Sequence[str], concurrency: int,
                        on_progress: Progress | None, deadline: float | None
                        ) -> dict[str, PatientRecord | str]:
    """Each patient once, at most `concurrency` at a time; a failure is kept as its reason.
    `deadline` (time.monotonic()) ends every read still going."""
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(pid: str) -> tuple[str, PatientRecord | str]:
        nonlocal done
        try:
            async with asyncio.timeout(None if deadline is None
                                       else max(0.0, deadline - time.monotonic())):
                async with gate:
                    result: PatientRecord | str = await source.patient_record(pid)
        except SourceError as exc:
            # the reason can name the patient's resources: not at WARNING
            log.warning("a patient record could not be read")
            log.debug("record %s: %s", pid, exc)
            result = f"record could not be read: {exc}"
        except TimeoutError:
            log.warning("a patient record was not read by the run's deadline")
            result = "record not read within the run's deadline (source.deadline_seconds)"
        except Exception as exc:  # the per-patient boundary: this patient only
            log.warning("a patient record could not be read: unexpected %s",
                        type(exc).__name__)
            log.debug("record %s", pid, exc_info=True)
            result = f"record could not be read: {_unexpected(exc)}"
        done += 1
        if on_progress:
            on_progress("records", done, len(patient_ids))
        return pid, result

    return dict(await asyncio.gather(*(one(pid) for pid in patient_ids)))


async def _appointments(source: Source, window: VisitWindow, seconds: float | None
                        ) -> list[Visit]:
    try:
        async with asyncio.timeout(seconds):
            return list(await source.appointments(window))
    except TimeoutError:
        raise SourceError(f"the appointments were not read within the run's deadline of "
                          f"{seconds:g} s (source.deadline_seconds)") from None


@dataclass
class _Day:
    """What the visits planned so far settled, for the visits after them."""

    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)
    proposed_for: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)


async def run_day(source: Source, ruleset: RuleSet, options: RunOptions, *,
                  on_progress: Progress | None = None) -> RunResult:
    """Plan every appointment in the window. Raises SourceError when nothing can be read."""
    started = time.perf_counter()
    seconds = options.read_deadline_seconds
    deadline = None if seconds is None else time.monotonic() + seconds
    visits = await _appointments(source, options.window, seconds)
    read_done = time.perf_counter()
    log.info("planning %d appointments", len(visits))
    patient_ids = list(dict.fromkeys(v.patient_id for v in visits))
    records = await _read_records(source, patient_ids, options.concurrency, on_progress,
                                  deadline)
    records_done = time.perf_counter()

    plans: list[VisitPlan] = []
    state = _Day()
    # The last appointment of each patient's day (visits are in start order): an earlier one
    # the same day draws the labs and leaves the rest to it.
    last_of_day = {(v.patient_id, v.day): i for i, v in enumerate(visits, start=1)}
    for index, visit in enumerate(visits, start=1):
        record = records.get(visit.patient_id)
        if not isinstance(record, PatientRecord):
            plans.append(_failed_plan(visit, record or "record was not read"))
            continue
        later_visit = visit.day is not None and \
            last_of_day[(visit.patient_id, visit.day)] > index
        try:
            plan = await _plan_visit(source, ruleset, options, visit, record, later_visit,
                                     state)
        except Exception as exc:  # the per-visit boundary: this visit only
            log.warning("appointment %d of %d could not be planned: unexpected %s",
                        index, len(visits), type(exc).__name__)
            log.debug("appointment %s", visit.appointment_id, exc_info=True)
            plan = _failed_plan(visit, f"could not be planned: {_unexpected(exc)}")
        plans.append(plan)
        if on_progress:
            on_progress("visits", index, len(visits))
    finished = time.perf_counter()
    day = DayPlan(generated_for=options.window.start,
                  days=(options.window.end - options.window.start).days, plans=tuple(plans),
                  ruleset=ruleset.describe())
    writes = state.writes
    report = build_report(
        day, write_back=options.write_back, created=writes["created"],
        already_present=writes["existing"],
        sheets=SheetCounts(writes["sheets_created"], writes["sheets_updated"]),
        problems=source.problems(), http_requests=int(getattr(source, "request_count", 0)),
        timings={"appointments_seconds": round(read_done - started, 3),
                 "records_seconds": round(records_done - read_done, 3),
                 "planning_seconds": round(finished - records_done, 3),
                 "total_seconds": round(finished - started, 3)})
    log.info("planned %d of %d appointments", report.visits.planned, len(visits))
    return RunResult(day=day, bundles=state.bundles, report=report)


async def _plan_visit(source: Source, ruleset: RuleSet, options: RunOptions, visit: Visit,
                      record: PatientRecord, later_visit: bool, state: _Day) -> VisitPlan:
    """One visit: evaluate, propose, write back (and store the sheet)."""
    as_of = options.as_of or options.window.start
    if visit.day is not None:
        record = with_plausible_birth_date(record, visit.day)
    plan = evaluate(record, ruleset, visit, options.settings)
    try:
        proposals = plan_proposals(plan, record, identifier_system=options.identifier_system,
                                   authored=as_of,
                                   already_this_run=state.proposed_for.get(visit.patient_id,
                                                                           ()),
                                   later_visit=later_visit)
    except ProposalError as exc:
        return replace(plan, failed=f"proposals could not be built: {exc}")
    state.proposed_for.setdefault(visit.patient_id, []).extend(
        (p.resource_type, p.code) for p in proposals.summaries
        if p.outcome in _HANDLED_HERE)
    summaries = proposals.summaries
    if not options.write_back:  # a dry run: say so on the sheet and in plan.json
        summaries = tuple(replace(p, outcome=ProposalOutcome.DRY_RUN)
                          if p.outcome == ProposalOutcome.PROPOSED else p
                          for p in summaries)
    plan = replace(plan, proposals=summaries)
    if proposals.bundle is not None:
        state.bundles[visit.appointment_id] = proposals.bundle
        if options.write_back:
            try:
                result = await source.write_transaction(proposals.bundle,
                                                        key=visit.appointment_id)
            except SourceError as exc:
                plan = replace(plan, failed=f"write-back failed: {exc}")
            else:
                state.writes["created"] += len(result.created)
                state.writes["existing"] += len(result.existing)
    if options.write_back and options.render_sheet is not None and not plan.failed:
        plan = await _store_sheet(source, plan, options.render_sheet, options, as_of,
                                  state.writes)
    return plan


async def _store_sheet(source: Source, plan: VisitPlan, render: Callable[[VisitPlan], str],
                       options: RunOptions, as_of: date, writes: Counter[str]) -> VisitPlan:
    """Store the visit's sheet as a DocumentReference (conditional update: one per visit,
    replaced on a re-run). A failure fails the visit: the team asked for the sheet in the EHR."""
    from previsit.documents import sheet_transaction

    bundle = sheet_transaction(plan, render(plan), identifier_system=options.identifier_system,
                               as_of=as_of)
    try:
        result = await source.write_transaction(bundle, key=f"sheet-{plan.visit.appointment_id}")
    except SourceError as exc:
        return replace(plan, failed=f"the planning sheet could not be stored: {exc}")
    writes["sheets_created"] += len(result.created)
    writes["sheets_updated"] += len(result.existing)
    return plan


def write_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """plan.json, run-report.json and one transaction Bundle per visit; returns the paths.

    Files are written with sorted keys so that the same input gives byte-identical output,
    each atomically and readable by its owner only (previsit.files). Stale transaction
    files from an earlier run of the same folder are removed, so the folder always shows
    exactly what this run planned.
    """
    tx_dir = private_folder(out_dir / "transactions")
    for stale in tx_dir.glob("*.json"):
        stale.unlink()
    paths = {"plan": out_dir / "plan.json", "report": out_dir / "run-report.json"}
    write_text(paths["plan"], dumps(result.day.to_json()))
    write_text(paths["report"], dumps(result.report.to_json()))
    for appointment_id, bundle in result.bundles.items():
        write_text(tx_dir / f"{safe_part(appointment_id)}.json", dumps(bundle))
    paths["transactions"] = tx_dir
    return paths
