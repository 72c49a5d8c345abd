"""One run: appointments → records → plans → proposals → write-back → outputs + report.

This is the only module that sequences the edges; each step is a call into a module
that knows nothing of the others.

The run streams. After the appointments, each patient goes read → plan (evaluate,
proposals, rendered outputs: previsit.workers, in this process or a worker process) →
write-back → the sink, and is then let go (`release_record`, for a source that keeps
records for the run): at most `concurrency` records are being read and `write_concurrency`
transactions written at a time, and memory is bounded by those, not by the day. A
patient's visits are planned in order, one after the other (a later visit relies on what
the earlier one proposed). The sink gets each visit as it finishes, with its place in the
day: `run_day` keeps them (a DayPlan in memory: the web app, tests), `run_to_folder`
spools them into the output folder (previsit.outputs) and assembles the outputs in the
day's order at the end. The report is added up visit by visit (report.Tally).

A patient whose record cannot be read, or whose write-back fails, marks that patient's
visits `failed` with the reason; the run goes on and the exit code tells the scheduler.
Which visits are prepared in full and which only get their pre-visit labs, and when
those are drawn, is previsit.timeline's.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol

from previsit import timeline as tl
from previsit.errors import SourceError
from previsit.evaluate import Settings
from previsit.filenames import safe_part
from previsit.files import private_folder, write_text
from previsit.identifiers import DEFAULT_SHEET_SYSTEM, DEFAULT_SYSTEM
from previsit.jsonio import dumps
from previsit.memory import give_back
from previsit.outputs import Rendered
from previsit.plan import DayPlan, Horizon, ProposalOutcome, Visit, VisitPlan
from previsit.record import PatientRecord
from previsit.report import (
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_PARTIAL,
    RunReport,
    SheetCounts,
    Tally,
)
from previsit.ruleset import RuleSet
from previsit.sources import Source, SourceProblem, VisitWindow, WriteResult
from previsit.suppressions import DeclineLookup
from previsit.workers import (
    PlanContext,
    Planner,
    RecordLoader,
    VisitDone,
    VisitJob,
    failed_plan,
    pool_size,
    unexpected,
    warm_up,
)

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
    concurrency: int = 8  # records being read at a time
    # Worker processes that plan (evaluate, propose, render): 0 plans in this process (the
    # web app, tests); None lets previsit choose (one per core for a large day; see
    # previsit.workers.pool_size).
    processes: int | None = 0
    # Transactions being written at a time (config source.write_concurrency); each waits on
    # the source's own rate-limit pause like a read does.
    write_concurrency: int = 4
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
class FailedVisit:
    """A visit of the clinic day that could not be planned: what the CLI's summary lists."""

    position: int  # 1-based, among the clinic day's visits
    visit: Visit
    reason: str


@dataclass(frozen=True)
class RunResult:
    """What a run did. From `run_day`, `day` holds every plan and `bundles` every
    transaction; from `run_to_folder` (which wrote them to the folder as it went) `day` is
    only the header of plan.json (no visits) and `bundles` is empty: read the report."""

    day: DayPlan
    bundles: dict[str, dict[str, Any]]  # appointment id -> transaction Bundle to write
    report: RunReport  # the huddle horizon; its exit code covers both horizons
    labs_ahead: tl.LabsAhead | None = None
    failed: tuple[FailedVisit, ...] = ()  # the clinic day's visits that failed, in order
    bundle_count: int = 0  # transaction Bundles (also those a streamed run spooled)

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    def report_json(self) -> dict[str, Any]:
        """run-report.json: the report, with what the labs-ahead horizon did."""
        out = self.report.to_json()
        out["labs_ahead"] = self.labs_ahead.to_json() if self.labs_ahead else None
        out["run_date"] = self.day.run_day.isoformat() if self.day.run_day else None
        return out


Progress = Callable[[str, int, int], None]  # (stage, done, total)


async def _read_record(source: Source, pid: str, gate: asyncio.Semaphore,
                       deadline: float | None, pooled: bool = False
                       ) -> PatientRecord | RecordLoader | str:
    """One patient's record, or the reason it could not be read. `deadline`
    (time.monotonic()) ends the read when it is still going. `pooled`: the record is
    planned in a worker process, which builds it when the source reads it to be built
    there (`fetch_record`: HttpSource)."""
    fetch = getattr(source, "fetch_record", None) if pooled else None
    try:
        async with asyncio.timeout(None if deadline is None
                                   else max(0.0, deadline - time.monotonic())):
            async with gate:
                if callable(fetch):
                    read: PatientRecord | RecordLoader = await fetch(pid)
                    return read
                return await source.patient_record(pid)
    except SourceError as exc:
        # the reason can name the patient's resources: not at WARNING
        log.warning("a patient record could not be read")
        log.debug("record %s: %s", pid, exc)
        return f"record could not be read: {exc}"
    except TimeoutError:
        log.warning("a patient record was not read by the run's deadline")
        return "record not read within the run's deadline (source.deadline_seconds)"
    except Exception as exc:  # the per-patient boundary: this patient only
        log.warning("a patient record could not be read: unexpected %s", type(exc).__name__)
        log.debug("record %s", pid, exc_info=True)
        return f"record could not be read: {unexpected(exc)}"


def _loader(source: Source, patient_id: str) -> RecordLoader | None:
    """How a worker process can read this patient's record itself, when the source offers
    that (local files: `BundleSource.record_loader`); None to read it here."""
    make = getattr(source, "record_loader", None)
    if not callable(make):
        return None
    try:
        loader: RecordLoader = make(patient_id)
    except Exception:  # read here instead, where a failure is reported as usual
        log.debug("record loader %s", patient_id, exc_info=True)
        return None
    return loader


def _release(source: Source, patient_id: str) -> None:
    """Tell a source that keeps records for the run (read once however many visits ask)
    that this patient is done, so that a run's memory stays bounded by its concurrency."""
    release = getattr(source, "release_record", None)
    if callable(release):
        release(patient_id)


async def _appointments(source: Source, window: VisitWindow, seconds: float | None
                        ) -> list[Visit]:
    try:
        async with asyncio.timeout(seconds):
            return list(await source.appointments(window))
    except TimeoutError:
        raise SourceError(f"the appointments were not read within the run's deadline of "
                          f"{seconds:g} s (source.deadline_seconds)") from None


class VisitSink(Protocol):
    """Where a run puts each visit as it is finished: its plan (final: written back, sheet
    stored) and its transaction Bundle. Visits arrive in completion order; `position` is
    the visit's place in the day (appointment start, then id), whatever that order."""

    def add(self, position: int, horizon: Horizon, plan: VisitPlan,
            bundle: dict[str, Any] | None, rendered: Rendered | None = None) -> None: ...


class _MemorySink:
    """Every plan and bundle kept, for a caller that wants the DayPlan itself (the web
    app, tests); `previsit.outputs.FolderSink` spools them to disk instead."""

    def __init__(self) -> None:
        self.plans: dict[int, tuple[Horizon, VisitPlan]] = {}
        self.bundles: dict[int, tuple[str, dict[str, Any]]] = {}

    def add(self, position: int, horizon: Horizon, plan: VisitPlan,
            bundle: dict[str, Any] | None, rendered: Rendered | None = None) -> None:
        self.plans[position] = (horizon, plan)
        if bundle is not None:
            self.bundles[position] = (plan.visit.appointment_id, bundle)

    def horizon(self, horizon: Horizon) -> tuple[VisitPlan, ...]:
        return tuple(plan for _, (h, plan) in sorted(self.plans.items()) if h == horizon)


@dataclass
class _Progress:
    """What the run has done so far: counts for the report, and the little it keeps of each
    visit (nothing of a plan but its proposals' outcomes for the labs ahead)."""

    tally: Tally = field(default_factory=Tally)
    writes: Counter[str] = field(default_factory=Counter)
    ahead: dict[int, VisitPlan] = field(default_factory=dict)  # stubs: visit, proposals
    stale: dict[tuple[int, int], SourceProblem] = field(default_factory=dict)
    failed: dict[int, FailedVisit] = field(default_factory=dict)
    visits_done: int = 0
    records_done: int = 0
    # Seconds per stage, summed over the patients in flight (they overlap: not wall time):
    # waiting for records, planning (in this process or a worker), writing back, spooling.
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("records", "planning", "writing", "outputs"), 0.0))

    def timed(self, stage: str, since: float) -> None:
        self.seconds[stage] += time.perf_counter() - since


async def _plan_day(source: Source, ruleset: RuleSet, options: RunOptions,
                    timeline: tl.Timeline, visits: list[Visit], sink: VisitSink,
                    deadline: float | None, on_progress: Progress | None,
                    render_for: date | None) -> _Progress:
    """Every patient through read → plan → write → sink, at most `concurrency` records
    being read and `write_concurrency` transactions being written at a time; a patient's
    record is released when its visits are done, so memory is bounded by those two.
    Takes `visits` over (the list is emptied): a patient's visits are let go with it."""
    done = _Progress()
    total = len(visits)
    by_patient: dict[str, list[tuple[int, Visit]]] = {}
    for position, visit in enumerate(visits):
        by_patient.setdefault(visit.patient_id, []).append((position, visit))
    same_day = tl.same_day(visits, tl.lab_only_test(ruleset.valuesets, options.lab_only_codes))
    read_gate = asyncio.Semaphore(options.concurrency)
    write_gate = asyncio.Semaphore(options.write_concurrency)
    horizons = [timeline.horizon(v) for v in visits]
    context = PlanContext(ruleset, options.settings, options.identifier_system,
                          options.write_back, timeline, total, render_for)
    visits.clear()
    ranks = list(accumulate(h == Horizon.HUDDLE for h in horizons))  # 1-based, clinic day

    def finish(position: int, plan: VisitPlan, bundle: dict[str, Any] | None,
               not_written: frozenset[str] = frozenset(),
               rendered: Rendered | None = None) -> None:
        horizon = horizons[position]
        since = time.perf_counter()
        sink.add(position, horizon, plan, bundle, rendered)
        done.timed("outputs", since)
        if horizon == Horizon.HUDDLE:
            done.tally.add(plan, not_written, position=position)
            if plan.failed:
                done.failed[position] = FailedVisit(ranks[position], plan.visit, plan.failed)
        else:
            done.ahead[position] = VisitPlan(
                visit=plan.visit, patient_name=None, patient_age=None, patient_sex=None,
                patient_mrn=None, findings=(), proposals=plan.proposals, failed=plan.failed)
        if plan.not_planned:
            # A deceased patient's stale booking is not a failure: an input problem to fix.
            done.stale[(horizon != Horizon.HUDDLE, position)] = SourceProblem(
                f"Appointment/{plan.visit.appointment_id}", plan.not_planned,
                plan.visit.patient_id)
        done.visits_done += 1
        if on_progress:
            on_progress("visits", done.visits_done, total)

    async def write(bundle: dict[str, Any], key: str) -> WriteResult:
        async with write_gate:
            return await source.write_transaction(bundle, key=key)

    def job(position: int, visit: Visit) -> VisitJob | None:
        """The visit's job for the planner; None (and the visit failed) when what the run
        knows of it cannot be gathered (the declines lookup failing)."""
        try:
            declined = None if options.declines is None else options.declines(visit)
        except Exception as exc:  # the per-visit boundary: this visit only
            log.warning("appointment %d of %d could not be planned: unexpected %s",
                        position + 1, total, type(exc).__name__)
            log.debug("appointment %s", visit.appointment_id, exc_info=True)
            finish(position, failed_plan(visit, f"could not be planned: {unexpected(exc)}"),
                   None)
            return None
        return VisitJob(position, visit, horizons[position],
                        same_day[visit.appointment_id], declined)

    def read() -> None:
        done.records_done += 1
        if on_progress:
            on_progress("records", done.records_done, patients)

    def fail(items: list[tuple[int, Visit]], reason: str) -> None:
        for position, visit in items:
            finish(position, failed_plan(visit, reason), None)

    async def patient(pid: str) -> None:
        items = by_patient.pop(pid)
        loader = _loader(source, pid) if planner.pooled else None
        try:
            if loader is not None:
                # Read where it is planned: the worker reads and builds the record too.
                since = time.perf_counter()
                async with read_gate:
                    planned = await plan(loader, [j for p, v in items if (j := job(p, v))])
                done.timed("planning", since)
                read()
            else:
                since = time.perf_counter()
                record = await _read_record(source, pid, read_gate, deadline, planner.pooled)
                done.timed("records", since)
                read()
                if isinstance(record, str):
                    fail(items, record)
                    return
                since = time.perf_counter()
                planned = await plan(record, [j for p, v in items if (j := job(p, v))])
                done.timed("planning", since)
                del record  # not kept while the writes wait: memory is bounded by the reads
            if isinstance(planned, str):
                log.warning("a patient record could not be read")
                fail(items, planned)
                return
            await write_all(planned)
        finally:
            _release(source, pid)

    async def plan(record: PatientRecord | RecordLoader, jobs: list[VisitJob]
                   ) -> list[VisitDone] | str:
        try:
            return await planner.plan(record, jobs)
        except Exception as exc:  # the per-patient boundary (the pool itself failing)
            log.warning("a patient's visits could not be planned: unexpected %s",
                        type(exc).__name__)
            log.debug("appointments %s", [j.visit.appointment_id for j in jobs],
                      exc_info=True)
            return [VisitDone(j.position, failed_plan(
                j.visit, f"could not be planned: {unexpected(exc)}")) for j in jobs]

    async def write_all(planned: list[VisitDone]) -> None:
        for done_visit in planned:
            position = done_visit.position
            try:
                since = time.perf_counter()
                plan, bundle, missing = await _write_back(
                    done_visit.plan, done_visit.bundle, horizons[position], options, write,
                    done.writes)
                done.timed("writing", since)
            except Exception as exc:  # the per-visit boundary: this visit only
                visit = done_visit.plan.visit
                log.warning("appointment %d of %d could not be planned: unexpected %s",
                            position + 1, total, type(exc).__name__)
                log.debug("appointment %s", visit.appointment_id, exc_info=True)
                plan, bundle, missing = (failed_plan(
                    visit, f"could not be planned: {unexpected(exc)}"), None, frozenset())
            # outputs rendered by the planner are of this plan unless the write changed it
            finish(position, plan, bundle, missing,
                   done_visit.rendered if plan is done_visit.plan else None)

    patients = len(by_patient)
    pending = iter(list(by_patient))

    async def worker() -> None:
        for pid in pending:  # shared: each patient is taken by one worker
            await patient(pid)

    workers = max(1, options.concurrency + (options.write_concurrency
                                            if options.write_back else 0))
    async with Planner(context, pool_size(options.processes, total)) as planner:
        await asyncio.gather(*(worker() for _ in range(min(workers, len(by_patient)))))
    return done


Writer = Callable[[dict[str, Any], str], Awaitable[WriteResult]]


async def _write_back(plan: VisitPlan, bundle: dict[str, Any] | None, horizon: Horizon,
                      options: RunOptions, write: Writer, writes: Counter[str]
                      ) -> tuple[VisitPlan, dict[str, Any] | None, frozenset[str]]:
    """Write one visit's transaction (and store its sheet) when the run writes back: the
    plan as it then stands (the same object when nothing changed), its bundle, and the
    identifiers of what was not written."""
    missing: frozenset[str] = frozenset()
    key = plan.visit.appointment_id
    if bundle is not None and options.write_back:
        try:
            result = await write(bundle, key)
        except SourceError as exc:
            plan = replace(plan, failed=f"write-back failed: {exc}")
            missing = _identifiers(bundle)
        else:
            writes["created"] += len(result.created)
            writes["existing"] += len(result.existing)
            if not result.complete:
                missing = _identifiers(bundle, result.missing)
                plan = replace(plan, failed=_partly_written(plan, missing, result))
    if options.write_back and options.render_sheet is not None and not plan.failed \
            and horizon == Horizon.HUDDLE:
        plan = await _store_sheet(write, plan, options.render_sheet, options, writes)
    return plan, bundle, missing


async def _run(source: Source, ruleset: RuleSet, options: RunOptions, sink: VisitSink,
               on_progress: Progress | None, render_for: date | None = None
               ) -> tuple[tl.Timeline, _Progress, dict[str, float]]:
    started = time.perf_counter()
    seconds = options.read_deadline_seconds
    deadline = None if seconds is None else time.monotonic() + seconds
    timeline = tl.Timeline(
        run_day=options.run_day or options.window.start - timedelta(days=1),
        huddle=options.window, labs_ahead_days=options.labs_ahead_days)
    warm_up(options.processes)
    visits = await _appointments(source, timeline.read_window, seconds)
    if options.patients is not None:
        visits = [v for v in visits if options.patients(v.patient_id)]
    give_back()  # what reading them (and a folder's scan) freed
    read_done = time.perf_counter()
    ahead_count = sum(timeline.horizon(v) == Horizon.LABS_AHEAD for v in visits)
    log.info("planning %d appointments, and the pre-visit labs of %d further out",
             len(visits) - ahead_count, ahead_count)
    done = await _plan_day(source, ruleset, options, timeline, visits, sink, deadline,
                           on_progress, render_for)
    finished = time.perf_counter()
    # Patients are read, planned and written at once: the stages are summed over them.
    timings = {"appointments_seconds": round(read_done - started, 3),
               **{f"{stage}_seconds": round(done.seconds[stage], 3)
                  for stage in ("records", "planning", "writing", "outputs")},
               "patients_seconds": round(finished - read_done, 3),
               "total_seconds": round(finished - started, 3)}
    return timeline, done, timings


def _result(source: Source, ruleset: RuleSet, options: RunOptions, timeline: tl.Timeline,
            done: _Progress, timings: dict[str, float], day: DayPlan,
            bundles: dict[str, dict[str, Any]], bundle_count: int) -> RunResult:
    """The run's result from what `_plan_day` added up: the report, the labs ahead."""
    ahead = tl.labs_ahead(timeline, [done.ahead[k] for k in sorted(done.ahead)])
    writes = done.writes
    report = done.tally.report(
        options.window.start, (options.window.end - options.window.start).days,
        write_back=options.write_back, created=writes["created"],
        already_present=writes["existing"],
        sheets=SheetCounts(writes["sheets_created"], writes["sheets_updated"]),
        problems=[*source.problems(), *(done.stale[k] for k in sorted(done.stale))],
        http_requests=int(getattr(source, "request_count", 0)), timings=timings)
    if report.exit_code == EXIT_OK and ahead.failures:
        # the clinic day is fine, but some labs could not be ordered ahead: partial
        report = replace(report, exit_code=EXIT_PARTIAL)
    log.info("planned %d of %d appointments; %d further out for their pre-visit labs",
             report.visits.planned, report.visits.total, ahead.visits)
    return RunResult(day=day, bundles=bundles, report=report, labs_ahead=ahead,
                     failed=tuple(done.failed[k] for k in sorted(done.failed)),
                     bundle_count=bundle_count)


async def run_day(source: Source, ruleset: RuleSet, options: RunOptions, *,
                  on_progress: Progress | None = None) -> RunResult:
    """Plan both horizons from one read, keeping every plan and bundle in memory (the web
    app, tests; `run_to_folder` streams them to an output folder instead). Raises
    SourceError when nothing can be read."""
    sink = _MemorySink()
    timeline, done, timings = await _run(source, ruleset, options, sink, on_progress)
    day = DayPlan(generated_for=options.window.start,
                  days=(options.window.end - options.window.start).days,
                  plans=sink.horizon(Horizon.HUDDLE), ruleset=ruleset.describe(),
                  run_day=timeline.run_day, ahead=sink.horizon(Horizon.LABS_AHEAD))
    bundles = dict(sink.bundles[k] for k in sorted(sink.bundles))
    return _result(source, ruleset, options, timeline, done, timings, day, bundles,
                   len(bundles))


async def run_to_folder(source: Source, ruleset: RuleSet, options: RunOptions,
                        out_dir: Path, *, minutes_saved: Mapping[str, float],
                        on_progress: Progress | None = None
                        ) -> tuple[RunResult, dict[str, Path], list[Path]]:
    """`run_day` streamed into `out_dir`: each visit's outputs are spooled as it finishes
    (previsit.outputs), so memory does not grow with the day; then plan.json,
    run-report.json, transactions/, the sheets, visits.html and huddle.html are written as
    `write_outputs` and the CLI's sheets write them. The result holds no plan and no bundle.
    Returns it, the paths of `write_outputs` and those of the sheets. Raises SourceError
    when nothing can be read (nothing in `out_dir` is changed then)."""
    from previsit.outputs import FolderSink

    with FolderSink(out_dir, options.window.start, minutes_saved) as sink:
        timeline, done, timings = await _run(source, ruleset, options, sink, on_progress,
                                                render_for=options.window.start)
        day = DayPlan(generated_for=options.window.start,
                      days=(options.window.end - options.window.start).days, plans=(),
                      ruleset=ruleset.describe(), run_day=timeline.run_day)
        assembling = time.perf_counter()
        paths = {"plan": sink.write_plan(day), "transactions": sink.write_transactions(),
                 "report": out_dir / "run-report.json"}
        sheets = sink.write_sheets()
        timings["assembly_seconds"] = round(time.perf_counter() - assembling, 3)
        result = _result(source, ruleset, options, timeline, done, timings, day, {},
                         sink.transaction_count)
        write_text(paths["report"], dumps(result.report_json()))
    return result, paths, sheets


async def _store_sheet(write: Writer, plan: VisitPlan, render: Callable[[VisitPlan], str],
                       options: RunOptions, writes: Counter[str]) -> VisitPlan:
    """Store the visit's sheet as a DocumentReference (conditional update: one per visit,
    replaced on a re-run). A failure fails the visit: the team asked for the sheet in the EHR."""
    from previsit.documents import sheet_transaction

    bundle = sheet_transaction(plan, render(plan),
                               identifier_system=options.sheet_identifier_system,
                               as_of=plan.visit.day or options.window.start,
                               timezone=options.window.timezone)
    try:
        result = await write(bundle, f"sheet-{plan.visit.appointment_id}")
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
