"""Planning a patient's visits: in the run's process, or in a pool of worker processes.

What a run does for one patient between reading the record and writing back is CPU work
only: evaluate each visit, apply declines, build its proposals and, when the run writes an
output folder, render the visit's outputs (`outputs.render_visit`). `plan_patient` does
that, purely, for all of one patient's visits in order (a later visit relies on what the
earlier one proposed). A `Planner` runs it either in this process (a small day, the web
app, tests) or in a process pool (`RunOptions.processes`), so that a night of thousands
of visits uses every core while the reads stay asynchronous in the run's process.

What crosses to a worker is the patient's record (a `PatientRecord` pickles in about a
millisecond, far less than planning it), or, from a source of local files, only how to read
it (`RecordLoader`: the worker reads and builds the record itself, so that this work is
spread over the cores too), and small per-visit jobs; the rule set and the
settings go once, when the pool starts. What comes back is each visit's plan, its
transaction Bundle and its rendered text: never the record. It comes back in a file
(previsit.answers), the pool's pipe carrying only its name, so that a worker killed while
answering cannot leave the pool waiting for the rest of an answer forever.

Failure boundaries stay as in-process: an exception planning one visit fails that visit
(`plan_patient` catches it); a worker process that dies (killed, out of memory, a crash
in C) fails only the patient it was planning: the pool is replaced, and each patient that
was in flight is planned again alone in a fresh process, where the one that kills its
process again is failed with a reason that says so.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import date
from multiprocessing import forkserver
from typing import Any, Protocol

from previsit import answers
from previsit import timeline as tl
from previsit.errors import ProposalError, SourceError
from previsit.evaluate import Settings, evaluate
from previsit.jsonio import collector_paused
from previsit.outputs import Rendered, render_visit
from previsit.plan import Horizon, ProposalOutcome, Visit, VisitPlan
from previsit.proposals import SameDay, plan_proposals
from previsit.record import PatientRecord
from previsit.ruleset import RuleSet
from previsit.suppressions import Decline, apply_declines

log = logging.getLogger("previsit.run")

# A day with fewer visits is planned in the run's process when the pool size is left to
# previsit (RunOptions.processes None): starting workers costs more than they would save.
POOL_MIN_VISITS = 200

# What a patient's earlier visit in this run settled, so that a later visit neither draws
# the same lab twice nor re-proposes what a clinician declined.
_HANDLED_HERE = frozenset({ProposalOutcome.PROPOSED, ProposalOutcome.ALREADY_WRITTEN,
                           ProposalOutcome.ALREADY_OPEN, ProposalOutcome.DECLINED,
                           ProposalOutcome.DONE})


@dataclass(frozen=True)
class PlanContext:
    """What planning any visit of the run needs: sent to each worker once."""

    ruleset: RuleSet
    settings: Settings
    identifier_system: str
    write_back: bool
    timeline: tl.Timeline
    visits: int  # of the day: logs say "appointment 12 of 340"
    render_for: date | None = None  # render each visit's outputs for this day's folder


@dataclass(frozen=True)
class VisitJob:
    """One visit of the patient, with what the run's process knows of it."""

    position: int  # in the day (appointment start, then id)
    visit: Visit
    horizon: Horizon
    same_day: SameDay
    declined: Mapping[str, Decline] | None = None  # RunOptions.declines(visit)


@dataclass(frozen=True)
class VisitDone:
    """One visit planned, before its write-back: the plan, its transaction Bundle, and its
    outputs rendered from this plan (when the run writes a folder)."""

    position: int
    plan: VisitPlan
    bundle: dict[str, Any] | None = None
    rendered: Rendered | None = None


class RecordLoader(Protocol):
    """How a worker reads one patient's record itself (picklable, small): a source that
    reads local files offers one (`BundleSource.record_loader`), so that the reading and
    building of records is spread over the pool too instead of queuing in the run's
    process."""

    patient_id: str

    def load(self) -> PatientRecord: ...


def failed_plan(visit: Visit, reason: str) -> VisitPlan:
    return VisitPlan(visit=visit, patient_name=None, patient_age=None, patient_sex=None,
                     patient_mrn=None, findings=(), failed=reason)


def unexpected(exc: BaseException) -> str:
    """The reason for a failure nobody foresaw: its kind, never its message (which may
    quote a chart's values); the traceback is logged at DEBUG."""
    return (f"unexpected {type(exc).__name__} (a bug, or data previsit cannot read; details "
            "with --verbose)")


def plan_patient(record: PatientRecord, jobs: Sequence[VisitJob], ctx: PlanContext
                 ) -> list[VisitDone]:
    """Every visit of one patient, in order. Pure; an exception fails its visit only."""
    proposed_for: list[tuple[str, str]] = []
    done = []
    for job in jobs:
        try:
            planned = _plan_visit(record, job, ctx, proposed_for)
        except Exception as exc:  # the per-visit boundary: this visit only
            log.warning("appointment %d of %d could not be planned: unexpected %s",
                        job.position + 1, ctx.visits, type(exc).__name__)
            log.debug("appointment %s", job.visit.appointment_id, exc_info=True)
            planned = VisitDone(job.position, failed_plan(
                job.visit, f"could not be planned: {unexpected(exc)}"))
        if ctx.render_for is not None:
            planned = replace(planned, rendered=render_visit(
                planned.plan, planned.bundle, job.horizon, ctx.render_for))
        done.append(planned)
    return done


def read_and_plan(what: PatientRecord | RecordLoader, jobs: Sequence[VisitJob],
                  ctx: PlanContext) -> list[VisitDone] | str:
    """`plan_patient`, reading the record first when given its loader: the visits planned,
    or the reason the record could not be read (every visit of the patient fails with it)."""
    if isinstance(what, PatientRecord):
        return plan_patient(what, jobs, ctx)
    try:
        record = what.load()
    except SourceError as exc:
        return f"record could not be read: {exc}"
    except Exception as exc:  # the per-patient boundary: this patient only
        log.debug("record %s", what.patient_id, exc_info=True)
        return f"record could not be read: {unexpected(exc)}"
    return plan_patient(record, jobs, ctx)


def _plan_visit(record: PatientRecord, job: VisitJob, ctx: PlanContext,
                proposed_for: list[tuple[str, str]]) -> VisitDone:
    """One visit: evaluate, apply declines, propose. `proposed_for`: what the patient's
    earlier visits settled, extended with what this one does."""
    visit, horizon = job.visit, job.horizon
    plan = evaluate(record, ctx.ruleset, visit, ctx.settings)
    if job.declined is not None:
        plan = apply_declines(plan, job.declined)
    try:
        proposals = plan_proposals(
            plan, record, identifier_system=ctx.identifier_system,
            authored=ctx.timeline.run_day, already_this_run=tuple(proposed_for),
            same_day=job.same_day, dating=tl.dating(plan, ctx.timeline, job.same_day),
            labs_only=horizon == Horizon.LABS_AHEAD)
    except ProposalError as exc:
        return VisitDone(job.position, replace(
            plan, failed=f"proposals could not be built: {exc}"))
    proposed_for.extend((p.resource_type, p.code) for p in proposals.summaries
                        if p.outcome in _HANDLED_HERE)
    summaries = proposals.summaries
    if not ctx.write_back:  # a dry run: say so on the sheet and in plan.json
        summaries = tuple(replace(p, outcome=ProposalOutcome.DRY_RUN)
                          if p.outcome == ProposalOutcome.PROPOSED else p
                          for p in summaries)
    plan = replace(plan, proposals=summaries)
    if horizon == Horizon.HUDDLE:
        plan = replace(plan, labs=tl.lab_progress(plan, record, ctx.ruleset,
                                                  ctx.identifier_system, ctx.settings))
    return VisitDone(job.position, plan, proposals.bundle)


# --- where plan_patient runs ---------------------------------------------------------------

_WORKER_CONTEXT: PlanContext | None = None

# How workers start. Not "fork": a worker forked from a run that holds a large heap (a
# folder source keeps the whole folder) copies much of it, page by page, as its own
# allocations land in the parent's half-free pages (measured: +280 MB a worker at 1,000
# Synthea patients). A fork server starts once, small, with previsit imported, and forks
# each worker from itself; the rule set is pickled to each worker once (under 1 MB).
START_METHOD = "forkserver"


_WORKER_ANSWERS: str | None = None  # where the worker puts its answers (previsit.answers)


def _start_worker(ctx: PlanContext, answers_folder: str) -> None:
    global _WORKER_CONTEXT, _WORKER_ANSWERS
    # What the worker starts with (previsit, the rule set) lives as long as it does: frozen,
    # the collector never walks it again (nor copies a page shared with the fork server).
    gc.freeze()
    _WORKER_CONTEXT = ctx
    _WORKER_ANSWERS = answers_folder


def _in_worker(what: PatientRecord | RecordLoader, jobs: Sequence[VisitJob]) -> str:
    """`read_and_plan` in a worker; its answer handed over in a file (previsit.answers):
    the file's path."""
    assert _WORKER_CONTEXT is not None and _WORKER_ANSWERS is not None, \
        "the worker was started without its context"
    # The collector rests while one patient is read and planned: nearly everything made
    # then is dropped when the patient is done, and what it would have walked meanwhile is
    # the patient's parsed files and record, again and again (measured: 10 % of a worker's
    # time on Synthea). A cycle left behind is collected once the patient is done.
    with collector_paused():
        done = read_and_plan(what, jobs, _WORKER_CONTEXT)
    return answers.put(done, _WORKER_ANSWERS)


def pool_size(requested: int | None, visits: int) -> int:
    """Worker processes for a day of `visits`: `requested` (0 or 1: none, plan in the run's
    process); None: one per core when the day is large enough to gain from them."""
    if requested is not None:
        return requested if requested > 1 else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return cores if cores > 1 and visits >= POOL_MIN_VISITS else 0


def pool_context() -> multiprocessing.context.BaseContext:
    """How pool workers start: START_METHOD where the platform has it, with previsit
    imported once by the fork server."""
    method = START_METHOD if START_METHOD in multiprocessing.get_all_start_methods() \
        else None
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["previsit.workers"])
    return context


def warm_up(requested: int | None) -> bool:
    """Start the fork server now, while the day is being read, when the day may be planned
    in a pool (`requested` as for pool_size): its import of previsit, half a second, then
    runs on another core beside the read instead of after it. A day that turns out small
    and is planned in this process has started one idle process. Whether it was started."""
    if pool_size(requested, POOL_MIN_VISITS) == 0 or \
            pool_context().get_start_method() != "forkserver":
        return False
    forkserver.ensure_running()
    return True


class Planner:
    """Runs `plan_patient` in this process (`processes` 0) or in a pool of that many worker
    processes. Use as an async context manager: the pool is shut down on leaving."""

    def __init__(self, ctx: PlanContext, processes: int) -> None:
        self.ctx = ctx
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._generation = 0  # which pool a broken future came from
        self._answers: str | None = None  # the workers' answers folder (previsit.answers)

    async def __aenter__(self) -> Planner:
        if self.processes:
            self._answers = answers.folder()
            self._pool = self._new_pool(self.processes)
            log.info("planning in %d worker processes", self.processes)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._answers is not None:
            answers.remove(self._answers)
            self._answers = None

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        assert self._answers is not None, "a pool is made only inside the context"
        return ProcessPoolExecutor(workers, mp_context=pool_context(),
                                   initializer=_start_worker,
                                   initargs=(self.ctx, self._answers))

    async def _run(self, pool: ProcessPoolExecutor, record: PatientRecord | RecordLoader,
                   jobs: Sequence[VisitJob]) -> list[VisitDone] | str:
        path = await asyncio.get_running_loop().run_in_executor(
            pool, _in_worker, record, jobs)
        done: list[VisitDone] | str = answers.take(path)
        return done

    @property
    def pooled(self) -> bool:
        return self._pool is not None

    async def plan(self, record: PatientRecord | RecordLoader, jobs: Sequence[VisitJob]
                   ) -> list[VisitDone] | str:
        """The patient's visits planned, or why the record (given by its loader) could
        not be read."""
        if self._pool is None:
            return read_and_plan(record, jobs, self.ctx)
        pool, generation = self._pool, self._generation
        try:
            return await self._run(pool, record, jobs)
        except BrokenProcessPool:
            # A worker died: every patient in flight in that pool lands here. Replace the
            # pool (once), then plan this patient again alone, so that only a patient who
            # kills a process again is failed.
            if generation == self._generation:
                self._generation += 1
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool(self.processes)
                log.warning("a worker process died; planning the patients it held again, "
                            "one at a time")
            return await self._alone(record, jobs)

    async def _alone(self, record: PatientRecord | RecordLoader, jobs: Sequence[VisitJob]
                     ) -> list[VisitDone] | str:
        single = self._new_pool(1)
        try:
            return await self._run(single, record, jobs)
        except BrokenProcessPool:
            log.warning("planning a patient ended its worker process: its %d visit(s) "
                        "failed", len(jobs))
            reason = ("could not be planned: the worker process planning this patient "
                      "died (killed, out of memory, or a crash)")
            return [VisitDone(job.position, failed_plan(job.visit, reason)) for job in jobs]
        finally:
            single.shutdown(wait=True)

