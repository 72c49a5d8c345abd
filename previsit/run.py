"""One run: appointments → records → plans → proposals → write-back → outputs + report.

This is the only module that sequences the edges; each step is a call into a module
that knows nothing of the others. A patient whose record cannot be read, or whose
write-back fails, marks that patient's visits `failed` with the reason; the run goes on
and the exit code tells the scheduler. Which visits are prepared in full and which only
get their pre-visit labs, and when those are drawn, is previsit.timeline's.

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
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from previsit import timeline as tl
from previsit.errors import ProposalError, SourceError
from previsit.evaluate import Settings, evaluate
from previsit.filenames import safe_part
from previsit.files import private_folder, write_text
from previsit.identifiers import DEFAULT_SHEET_SYSTEM, DEFAULT_SYSTEM
from previsit.jsonio import dumps
from previsit.plan import DayPlan, Horizon, ProposalOutcome, Visit, VisitPlan
from previsit.proposals import plan_proposals
from previsit.record import PatientRecord
from previsit.report import (
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_PARTIAL,
    RunReport,
    SheetCounts,
    build_report,
)
from previsit.ruleset import RuleSet
from previsit.sources import Source, SourceProblem, VisitWindow, WriteResult
from previsit.suppressions import DeclineLookup, apply_declines

log = logging.getLogger("previsit.run")

@dataclass(frozen=True)
class RunOptions:
    window: VisitWindow  # the clinic day(s) prepared in full: the huddle horizon
    settings: Settings = field(default_factory=Settings)
    identifier_system: str = DEFAULT_SYSTEM
    sheet_identifier_system: str = DEFAULT_SHEET_SYSTEM
    # The run day: the authoredOn of proposals, and no order is dated before it. Default:
    # the day before the window (the nightly run that prepares it).
    run_day: date | None = None
    # Visits up to run day + this many days get their pre-visit labs ordered tonight.
    labs_ahead_days: int = tl.DEFAULT_LABS_AHEAD_DAYS
    lab_only_codes: tuple[str, ...] = ()  # the clinic's own codes of lab-only appointments
    write_back: bool = False  # send transactions to the source (a server)
    concurrency: int = 8
    # Also store each planned visit's sheet as a DocumentReference (with write_back only).
    # The callable renders a plan's sheet as HTML (previsit.sheets.render_visit_sheet).
    render_sheet: Callable[[VisitPlan], str] | None = None
    # Plan only the visits of the patients this returns True for (a shard of the day,
    # previsit.shards.Shard.holds); None plans every visit in the window.
    patients: Callable[[str], bool] | None = None
    # Findings clinicians declined in the app or in CDS Hooks cards, per visit: set aside,
    # not proposed again (previsit.suppressions).
    declines: DeclineLookup | None = None
    # Reading (appointments and every record) must be over this many seconds after the run
    # starts (config source.deadline_seconds); None: no deadline.
    read_deadline_seconds: float | None = None


@dataclass(frozen=True)
class RunResult:
    day: DayPlan
    bundles: dict[str, dict[str, Any]]  # appointment id -> transaction Bundle to write
    report: RunReport  # the huddle horizon; its exit code covers both horizons
    labs_ahead: tl.LabsAhead | None = None

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    def report_json(self) -> dict[str, Any]:
        """run-report.json: the report, with what the labs-ahead horizon did."""
        out = self.report.to_json()
        out["labs_ahead"] = self.labs_ahead.to_json() if self.labs_ahead else None
        out["run_date"] = self.day.run_day.isoformat() if self.day.run_day else None
        return out


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
                        on_progress: Progress | None, deadline: float | None = None
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


async def run_day(source: Source, ruleset: RuleSet, options: RunOptions, *,
                  on_progress: Progress | None = None) -> RunResult:
    """Plan both horizons from one read. Raises SourceError when nothing can be read."""
    started = time.perf_counter()
    seconds = options.read_deadline_seconds
    deadline = None if seconds is None else time.monotonic() + seconds
    timeline = tl.Timeline(
        run_day=options.run_day or options.window.start - timedelta(days=1),
        huddle=options.window, labs_ahead_days=options.labs_ahead_days)
    visits = await _appointments(source, timeline.read_window, seconds)
    if options.patients is not None:
        visits = [v for v in visits if options.patients(v.patient_id)]
    read_done = time.perf_counter()
    ahead_count = sum(timeline.horizon(v) == Horizon.LABS_AHEAD for v in visits)
    log.info("planning %d appointments, and the pre-visit labs of %d further out",
             len(visits) - ahead_count, ahead_count)
    patient_ids = list(dict.fromkeys(v.patient_id for v in visits))
    records = await _read_records(source, patient_ids, options.concurrency, on_progress,
                                  deadline)
    records_done = time.perf_counter()

    plans: dict[Horizon, list[VisitPlan]] = {Horizon.HUDDLE: [], Horizon.LABS_AHEAD: []}
    bundles: dict[str, dict[str, Any]] = {}
    proposed_for: dict[str, list[tuple[str, str]]] = {}
    writes: Counter[str] = Counter()
    not_written: dict[str, frozenset[str]] = {}  # appointment -> proposal identifiers
    as_of = timeline.run_day
    same_day = tl.same_day(visits, tl.lab_only_test(ruleset.valuesets, options.lab_only_codes))
    async def plan_one(visit: Visit, horizon: Horizon, record: PatientRecord) -> VisitPlan:
        """One visit: evaluate, propose, write back (and store the sheet)."""
        plan = evaluate(record, ruleset, visit, options.settings)
        if options.declines is not None:
            plan = apply_declines(plan, options.declines(visit))
        try:
            proposals = plan_proposals(
                plan, record, identifier_system=options.identifier_system, authored=as_of,
                already_this_run=proposed_for.get(visit.patient_id, ()),
                same_day=same_day[visit.appointment_id],
                dating=tl.dating(plan, timeline, same_day[visit.appointment_id]),
                labs_only=horizon == Horizon.LABS_AHEAD)
        except ProposalError as exc:
            return replace(plan, failed=f"proposals could not be built: {exc}")
        proposed_for.setdefault(visit.patient_id, []).extend(
            (p.resource_type, p.code) for p in proposals.summaries
            if p.outcome in _HANDLED_HERE)
        summaries = proposals.summaries
        if not options.write_back:  # a dry run: say so on the sheet and in plan.json
            summaries = tuple(replace(p, outcome=ProposalOutcome.DRY_RUN)
                              if p.outcome == ProposalOutcome.PROPOSED else p
                              for p in summaries)
        plan = replace(plan, proposals=summaries)
        if horizon == Horizon.HUDDLE:
            plan = replace(plan, labs=tl.lab_progress(plan, record, ruleset,
                                                      options.identifier_system,
                                                      options.settings))
        if proposals.bundle is not None:
            bundles[visit.appointment_id] = proposals.bundle
            if options.write_back:
                try:
                    result = await source.write_transaction(proposals.bundle,
                                                            key=visit.appointment_id)
                except SourceError as exc:
                    plan = replace(plan, failed=f"write-back failed: {exc}")
                    not_written[visit.appointment_id] = _identifiers(proposals.bundle)
                else:
                    writes["created"] += len(result.created)
                    writes["existing"] += len(result.existing)
                    if not result.complete:
                        missing = _identifiers(proposals.bundle, result.missing)
                        not_written[visit.appointment_id] = missing
                        plan = replace(plan, failed=_partly_written(plan, missing, result))
        if options.write_back and options.render_sheet is not None and not plan.failed \
                and horizon == Horizon.HUDDLE:
            plan = await _store_sheet(source, plan, options.render_sheet, options,
                                      writes)
        return plan

    for index, visit in enumerate(visits, start=1):
        horizon = timeline.horizon(visit)
        record = records.get(visit.patient_id)
        if not isinstance(record, PatientRecord):
            plans[horizon].append(_failed_plan(visit, record or "record was not read"))
            continue
        try:
            plan = await plan_one(visit, horizon, record)
        except Exception as exc:  # the per-visit boundary: this visit only
            log.warning("appointment %d of %d could not be planned: unexpected %s",
                        index, len(visits), type(exc).__name__)
            log.debug("appointment %s", visit.appointment_id, exc_info=True)
            plan = _failed_plan(visit, f"could not be planned: {_unexpected(exc)}")
        plans[horizon].append(plan)
        if on_progress:
            on_progress("visits", index, len(visits))
    finished = time.perf_counter()
    day = DayPlan(generated_for=options.window.start,
                  days=(options.window.end - options.window.start).days,
                  plans=tuple(plans[Horizon.HUDDLE]), ruleset=ruleset.describe(),
                  run_day=timeline.run_day, ahead=tuple(plans[Horizon.LABS_AHEAD]))
    ahead = tl.labs_ahead(timeline, day.ahead)
    # A deceased patient's stale booking is not a failure: an input problem to fix.
    stale = [SourceProblem(f"Appointment/{p.visit.appointment_id}", p.not_planned,
                           p.visit.patient_id)
             for p in (*day.plans, *day.ahead) if p.not_planned]
    report = build_report(
        day, write_back=options.write_back, created=writes["created"],
        already_present=writes["existing"], not_written=not_written,
        sheets=SheetCounts(writes["sheets_created"], writes["sheets_updated"]),
        problems=[*source.problems(), *stale],
        http_requests=int(getattr(source, "request_count", 0)),
        timings={"appointments_seconds": round(read_done - started, 3),
                 "records_seconds": round(records_done - read_done, 3),
                 "planning_seconds": round(finished - records_done, 3),
                 "total_seconds": round(finished - started, 3)})
    if report.exit_code == EXIT_OK and ahead.failures:
        # the clinic day is fine, but some labs could not be ordered ahead: partial
        report = replace(report, exit_code=EXIT_PARTIAL)
    log.info("planned %d of %d appointments; %d further out for their pre-visit labs",
             report.visits.planned, len(day.plans), len(day.ahead))
    return RunResult(day=day, bundles=bundles, report=report, labs_ahead=ahead)


async def _store_sheet(source: Source, plan: VisitPlan, render: Callable[[VisitPlan], str],
                       options: RunOptions, writes: Counter[str]) -> VisitPlan:
    """Store the visit's sheet as a DocumentReference (conditional update: one per visit,
    replaced on a re-run). A failure fails the visit: the team asked for the sheet in the EHR."""
    from previsit.documents import sheet_transaction

    bundle = sheet_transaction(plan, render(plan),
                               identifier_system=options.sheet_identifier_system,
                               as_of=plan.visit.day or options.window.start,
                               timezone=options.window.timezone)
    try:
        result = await source.write_transaction(bundle, key=f"sheet-{plan.visit.appointment_id}")
    except SourceError as exc:
        return replace(plan, failed=f"the planning sheet could not be stored: {exc}")
    writes["sheets_created"] += len(result.created)
    writes["sheets_updated"] += len(result.existing)
    return plan


def _identifiers(bundle: dict[str, Any], full_urls: Sequence[str] | None = None
                 ) -> frozenset[str]:
    """The proposal identifiers of the bundle's entries (of those with these fullUrls)."""
    wanted = None if full_urls is None else set(full_urls)
    return frozenset(
        str(identifier.get("value")) for entry in bundle.get("entry", ())
        if wanted is None or entry.get("fullUrl") in wanted
        for identifier in entry["resource"].get("identifier", ())[:1])


def _partly_written(plan: VisitPlan, missing: frozenset[str], result: WriteResult) -> str:
    """What a partly written visit lacks, by name, and why; a re-run writes the rest."""
    proposed = [p for p in plan.proposals if p.outcome == ProposalOutcome.PROPOSED]
    lacking = [f"{p.display} ({p.resource_type})" for p in proposed if p.identifier in missing]
    return (f"write-back partly done: {len(proposed) - len(lacking)} of {len(proposed)} "
            f"proposals written; not written: {', '.join(lacking)} — {result.problem}; a "
            "re-run writes only what is missing")


# What a run leaves in its folder beside run-report.json: a run that could plan nothing
# removes an earlier run's copies, so that nobody prints last night's huddle as tonight's.
_PLAN_OUTPUTS = ("plan.json", "huddle.html", "visits.html")
_PLAN_FOLDERS = (("transactions", "*.json"), ("sheets", "*.html"))


def write_failure(out_dir: Path, *, day: date, reason: str) -> Path:
    """The outputs of a run that could plan nothing (exit 4): run-report.json says why, and
    the plan, sheets and transactions an earlier run left in the folder are removed."""
    for name in _PLAN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    for folder, pattern in _PLAN_FOLDERS:
        for stale in (out_dir / folder).glob(pattern):
            stale.unlink()
    report = out_dir / "run-report.json"
    private_folder(out_dir)
    write_text(report, dumps({"date": day.isoformat(), "exit_code": EXIT_NOTHING,
                              "error": reason, "visits": {"total": 0, "planned": 0,
                                                          "failed": 0, "patients": 0}}))
    return report


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
    write_text(paths["report"], dumps(result.report_json()))
    for appointment_id, bundle in result.bundles.items():
        write_text(tx_dir / f"{safe_part(appointment_id)}.json", dumps(bundle))
    paths["transactions"] = tx_dir
    return paths
