"""Merging shards: the day's one output from the folders of `previsit run --shard K/N`.

`merge_shards` reads every shard's plan.json, run-report.json and shard.json, checks that
they are the N shards of one day (each index once, one date, one rule library, one
write-back mode, every patient in the shard its id hashes to) and builds what a single run
of the whole day would have written:

- plan.json: every visit, in the order a single run plans them (start, then appointment id);
- run-report.json: counts recomputed from the merged plans by `build_report` (so they, the
  failures and the exit code are the single run's), server counts (created, already
  present, sheets, HTTP requests) summed, input problems concatenated in shard order with
  repeats dropped (every shard reads the day's whole appointment list, so a problem with an
  appointment is reported by each), and per stage the slowest shard's seconds;
- transactions/: the shards' files, copied byte for byte.

The CLI renders the sheets from the merged DayPlan with the same code a run uses, so they
are byte-identical too. Nothing here talks to a server: merging twice gives the same bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from previsit.appointments import sort_visits
from previsit.errors import PrevisitError
from previsit.filenames import safe_part
from previsit.jsonio import JsonError, dumps, loads
from previsit.plan import DayPlan, VisitPlan
from previsit.report import RunReport, SheetCounts, build_report
from previsit.shards import Shard, read_marker, write_marker
from previsit.sources import SourceProblem

PLAN = "plan.json"
REPORT = "run-report.json"
TRANSACTIONS = "transactions"


class MergeError(PrevisitError, ValueError):
    """The folders are not the complete, consistent shards of one day; says which and why."""


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
    day: DayPlan
    report: RunReport
    transactions: tuple[Path, ...]  # every shard's transaction files, by file name
    shards: int


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
            timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()})
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
    for plan in day.plans:
        if not shard.holds(plan.visit.patient_id):
            raise MergeError(f"{folder}: appointment {plan.visit.appointment_id} belongs to "
                             f"another shard than {shard} (its patient hashes elsewhere): "
                             "the folder's plan and shard.json do not match")
    names = {f"{safe_part(p.visit.appointment_id)}.json" for p in day.plans}
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
    _same(shards, "the planned date", lambda s: (s.day.generated_for, s.day.days))
    _same(shards, "the rule library (plan.json ruleset)", lambda s: s.day.ruleset)
    _same(shards, "write-back (one shard wrote to the server, another did not)",
          lambda s: s.counts.write_back)
    by_appointment: dict[str, VisitPlan] = {}
    for s in shards:
        for plan in s.day.plans:
            if plan.visit.appointment_id in by_appointment:
                raise MergeError(f"appointment {plan.visit.appointment_id} is planned by "
                                 f"two shards (one of them is {s.folder})")
            by_appointment[plan.visit.appointment_id] = plan
    # A single run plans visits in this order (previsit.appointments.sort_visits).
    plans = tuple(by_appointment[v.appointment_id]
                  for v in sort_visits([p.visit for p in by_appointment.values()]))
    first = shards[0].day
    day = DayPlan(generated_for=first.generated_for, days=first.days, plans=plans,
                  ruleset=first.ruleset)
    counts = [s.counts for s in shards]
    stages = sorted({k for c in counts for k in c.timings})
    report = build_report(
        day, write_back=counts[0].write_back, created=sum(c.created for c in counts),
        already_present=sum(c.already_present for c in counts),
        sheets=SheetCounts(sum(c.sheets_created for c in counts),
                           sum(c.sheets_updated for c in counts)),
        problems=_unique(p for c in counts for p in c.problems),
        http_requests=sum(c.http_requests for c in counts),
        # Shards run side by side: a stage took as long as its slowest shard.
        timings={k: max(c.timings.get(k, 0.0) for c in counts) for k in stages})
    transactions = tuple(sorted((t for s in shards for t in s.transactions),
                                key=lambda t: t.name))
    return MergedDay(day, report, transactions, shards=len(shards))


def write_merged(merged: MergedDay, out_dir: Path) -> dict[str, Path]:
    """plan.json, run-report.json and transactions/ in `out_dir`, as a single run writes
    them (stale transaction files and a shard marker from an earlier run are removed);
    returns the paths. The sheets are the CLI's to render (previsit.cli.app)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tx_dir = out_dir / TRANSACTIONS
    tx_dir.mkdir(exist_ok=True)
    for stale in tx_dir.glob("*.json"):
        stale.unlink()
    paths = {"plan": out_dir / PLAN, "report": out_dir / REPORT, "transactions": tx_dir}
    paths["plan"].write_text(dumps(merged.day.to_json()), encoding="utf-8")
    paths["report"].write_text(dumps(merged.report.to_json()), encoding="utf-8")
    for source in merged.transactions:
        shutil.copyfile(source, tx_dir / source.name)
    write_marker(out_dir, None)
    return paths
