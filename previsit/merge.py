"""Merging shards: the day's one output from the folders of `previsit run --shard K/N`.

`merge_shards` reads every shard's plan.json, run-report.json and shard.json, checks that
they are the N shards of one day (each index once, one date, one rule library, one
write-back mode, every patient in the shard its id hashes to) and builds what a single run
of the whole day would have written:

- plan.json: every visit of both horizons (the clinic day, and the days further out whose
  pre-visit labs were ordered), in the order a single run plans them (start, then id);
- run-report.json: counts recomputed from the merged plans by `build_report` and
  `timeline.labs_ahead` (so they, the failures and the exit code are the single run's),
  server counts (created, already present, sheets, HTTP requests) summed, input problems
  concatenated in shard order with repeats dropped (every shard reads the day's whole
  appointment list, so a problem with an appointment is reported by each) and the bookings
  not planned listed after them in plan order, as a run lists them; per stage the slowest
  shard's seconds;
- transactions/: the shards' files, copied byte for byte.

The CLI renders the sheets from the merged DayPlan with the same code a run uses, so they
are byte-identical too. Nothing here talks to a server: merging twice gives the same bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from previsit import timeline as tl
from previsit.appointments import sort_visits
from previsit.errors import MergeError
from previsit.filenames import safe_part
from previsit.jsonio import JsonError, loads
from previsit.plan import DayPlan, VisitPlan
from previsit.report import EXIT_OK, EXIT_PARTIAL, SheetCounts, build_report
from previsit.run import RunResult, write_outputs
from previsit.shards import Shard, read_marker, write_marker
from previsit.sources import SourceProblem, VisitWindow

PLAN = "plan.json"
REPORT = "run-report.json"
TRANSACTIONS = "transactions"


@dataclass(frozen=True)
class ShardCounts:
    """What a shard's run-report.json says that its plans cannot: what the server did."""

    write_back: bool
    created: int
    already_present: int
    sheets_created: int
    sheets_updated: int
    http_requests: int
    problems: tuple[SourceProblem, ...]
    timings: Mapping[str, float]
    not_written: Mapping[str, tuple[str, ...]]  # appointment -> proposal identifiers
    ahead: tuple[str, str] | None  # the labs-ahead horizon's [start, end) days


@dataclass(frozen=True)
class ShardOutput:
    """One shard's output folder, read and checked."""

    folder: Path
    shard: Shard
    day: DayPlan
    counts: ShardCounts
    transactions: tuple[Path, ...]


@dataclass(frozen=True)
class MergedDay:
    result: RunResult  # the day as a single run would have returned it (without bundles)
    transactions: tuple[Path, ...]  # every shard's transaction files, by file name
    shards: int

    @property
    def day(self) -> DayPlan:
        return self.result.day


def _json(path: Path) -> Any:
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"{path.parent}: no {path.name} — did this shard finish? (a run "
                         "that could plan nothing writes no outputs; its exit code says "
                         "why)") from None
    except (OSError, UnicodeDecodeError, JsonError) as exc:
        raise MergeError(f"{path}: cannot be read ({exc})") from None


def _counts(path: Path) -> ShardCounts:
    data = _json(path)
    try:
        proposals, sheets = data["proposals"], data["sheets_stored"]
        return ShardCounts(
            write_back=bool(data["write_back"]), created=int(proposals["created"]),
            already_present=int(proposals["already_present"]),
            sheets_created=int(sheets["created"]), sheets_updated=int(sheets["updated"]),
            http_requests=int(data["http_requests"]),
            problems=tuple(SourceProblem(str(p["where"]), str(p["message"]))
                           for p in data["source_problems"]),
            timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()},
            not_written={str(f["appointment"]): tuple(map(str, f.get("not_written") or ()))
                         for f in data["failures"]},
            ahead=(str(data["labs_ahead"]["start"]), str(data["labs_ahead"]["end"]))
            if data.get("labs_ahead") else None)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MergeError(f"{path}: not a previsit run report ({type(exc).__name__}: "
                         f"{exc})") from None


def read_shard(folder: Path) -> ShardOutput:
    """One shard's outputs; MergeError when something is missing or unreadable."""
    try:
        shard = read_marker(folder)
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    if shard is None:
        raise MergeError(f"{folder}: no shard.json — not the output of `previsit run "
                         "--shard K/N`")
    try:
        day = DayPlan.from_json(_json(folder / PLAN))
    except (KeyError, TypeError, ValueError) as exc:
        raise MergeError(f"{folder / PLAN}: not a usable plan.json ({exc})") from None
    for plan in (*day.plans, *day.ahead):
        if not shard.holds(plan.visit.patient_id):
            raise MergeError(f"{folder}: appointment {plan.visit.appointment_id} belongs to "
                             f"another shard than {shard} (its patient hashes elsewhere): "
                             "the folder's plan and shard.json do not match")
    names = {f"{safe_part(p.visit.appointment_id)}.json" for p in (*day.plans, *day.ahead)}
    transactions = tuple(sorted((folder / TRANSACTIONS).glob("*.json")))
    strays = [t.name for t in transactions if t.name not in names]
    if strays:
        raise MergeError(f"{folder / TRANSACTIONS}: {strays[0]} is not the transaction of a "
                         "visit this shard planned")
    return ShardOutput(folder, shard, day, _counts(folder / REPORT), transactions)


def _same(shards: Sequence[ShardOutput], what: str, value: Any) -> None:
    first = value(shards[0])
    for other in shards[1:]:
        if value(other) != first:
            raise MergeError(f"{other.folder} and {shards[0].folder} differ in {what}: they "
                             "are not shards of the same run")


def _complete(shards: Sequence[ShardOutput]) -> None:
    _same(shards, "the number of shards", lambda s: s.shard.count)
    seen: dict[int, Path] = {}
    for s in shards:
        if s.shard.index in seen:
            raise MergeError(f"shard {s.shard} appears twice: {seen[s.shard.index]} and "
                             f"{s.folder}")
        seen[s.shard.index] = s.folder
    count = shards[0].shard.count
    missing = [str(Shard(k, count)) for k in range(1, count + 1) if k not in seen]
    if missing:
        raise MergeError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"missing: give all {count} output folders")


def _unique(problems: Iterable[SourceProblem]) -> tuple[SourceProblem, ...]:
    """In order of first appearance, each (where, message) once."""
    kept = dict.fromkeys((p.where, p.message) for p in problems)
    return tuple(SourceProblem(where, message) for where, message in kept)


def _in_run_order(plans: Iterable[VisitPlan]) -> tuple[VisitPlan, ...]:
    """Plans in the order a single run plans visits (previsit.appointments.sort_visits)."""
    by_appointment = {p.visit.appointment_id: p for p in plans}
    return tuple(by_appointment[v.appointment_id]
                 for v in sort_visits([p.visit for p in by_appointment.values()]))


def _not_planned(day: DayPlan) -> list[SourceProblem]:
    """The bookings a run did not plan (a deceased patient's), as run.run_day reports them:
    after the source's problems, in plan order."""
    return [SourceProblem(f"Appointment/{p.visit.appointment_id}", p.not_planned,
                          p.visit.patient_id)
            for p in (*day.plans, *day.ahead) if p.not_planned]


def _labs_ahead(day: DayPlan, window: tuple[str, str] | None) -> tl.LabsAhead | None:
    """The labs-ahead horizon's summary, by the run's own function over the merged plans."""
    if window is None or day.run_day is None:
        return None
    start, end = date.fromisoformat(window[0]), date.fromisoformat(window[1])
    timeline = tl.Timeline(run_day=day.run_day,
                           huddle=VisitWindow(start=day.generated_for, end=start),
                           labs_ahead_days=(end - day.run_day).days - 1)
    return tl.labs_ahead(timeline, day.ahead)


def merge_shards(folders: Sequence[Path], out_dir: Path | None = None) -> MergedDay:
    """The day planned by the shards in `folders` (each index 1..N exactly once)."""
    if not folders:
        raise MergeError("no shard output folders given")
    if out_dir is not None:
        target = out_dir.resolve()
        for folder in folders:
            if folder.resolve() == target:
                raise MergeError(f"--out {out_dir} is one of the shards' folders: merge "
                                 "into a folder of its own")
    shards = sorted((read_shard(f) for f in folders), key=lambda s: s.shard.index)
    _complete(shards)
    _same(shards, "the planned date", lambda s: (s.day.generated_for, s.day.days,
                                                 s.day.run_day, s.counts.ahead))
    _same(shards, "the rule library (plan.json ruleset)", lambda s: s.day.ruleset)
    _same(shards, "write-back (one shard wrote to the server, another did not)",
          lambda s: s.counts.write_back)
    seen: dict[str, Path] = {}
    for s in shards:
        for plan in (*s.day.plans, *s.day.ahead):
            if plan.visit.appointment_id in seen:
                raise MergeError(f"appointment {plan.visit.appointment_id} is planned by "
                                 f"two shards ({seen[plan.visit.appointment_id]} and "
                                 f"{s.folder})")
            seen[plan.visit.appointment_id] = s.folder
    first = shards[0].day
    day = DayPlan(generated_for=first.generated_for, days=first.days,
                  plans=_in_run_order(p for s in shards for p in s.day.plans),
                  ruleset=first.ruleset, run_day=first.run_day,
                  ahead=_in_run_order(p for s in shards for p in s.day.ahead))
    counts = [s.counts for s in shards]
    stale = _not_planned(day)
    known = {(p.where, p.message) for p in stale}
    stages = sorted({k for c in counts for k in c.timings})
    report = build_report(
        day, write_back=counts[0].write_back, created=sum(c.created for c in counts),
        already_present=sum(c.already_present for c in counts),
        not_written={a: ids for c in counts for a, ids in c.not_written.items() if ids},
        sheets=SheetCounts(sum(c.sheets_created for c in counts),
                           sum(c.sheets_updated for c in counts)),
        problems=[*_unique(p for c in counts for p in c.problems
                           if (p.where, p.message) not in known), *stale],
        http_requests=sum(c.http_requests for c in counts),
        # Shards run side by side: a stage took as long as its slowest shard.
        timings={k: max(c.timings.get(k, 0.0) for c in counts) for k in stages})
    ahead = _labs_ahead(day, counts[0].ahead)
    if report.exit_code == EXIT_OK and ahead is not None and ahead.failures:
        # as run.run_day: the clinic day is fine, but some labs could not be ordered ahead
        report = replace(report, exit_code=EXIT_PARTIAL)
    transactions = tuple(sorted((t for s in shards for t in s.transactions),
                                key=lambda t: t.name))
    return MergedDay(RunResult(day=day, bundles={}, report=report, labs_ahead=ahead),
                     transactions, shards=len(shards))


def write_merged(merged: MergedDay, out_dir: Path) -> dict[str, Path]:
    """plan.json, run-report.json and transactions/ in `out_dir`, as a single run writes
    them (with run.write_outputs: stale transaction files are removed; so is a shard marker
    from an earlier run); returns the paths. The sheets are the CLI's to render."""
    paths = write_outputs(merged.result, out_dir)
    for source in merged.transactions:
        shutil.copyfile(source, paths["transactions"] / source.name)
    write_marker(out_dir, None)
    return paths
