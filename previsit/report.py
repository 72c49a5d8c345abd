"""The run report: what a run did, as typed values (the CLI's summary, run-report.json, tests).

`RunReport.to_json()` is the stable shape of run-report.json; everything else reads the
attributes. Counts only — the report never holds a patient's name; failures name the
appointment (ids appear in the JSON file for the integration engineer, not in INFO logs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from previsit.plan import DayPlan, Kind, ProposalOutcome, Status, VisitPlan
from previsit.sources import SourceProblem

EXIT_OK = 0  # every visit planned
EXIT_PARTIAL = 3  # some visits failed; the others were planned and written
EXIT_NOTHING = 4  # nothing could be done: configuration, auth, rules, server unreachable

# Input problems listed one by one; beyond these, the rest is counted per file. A folder
# holding a million duplicate ids must not make a report of a million lines.
MAX_LISTED_PROBLEMS = 200
MAX_SUMMARISED_FILES = 50


def exit_code_for(planned: int, failed: int) -> int:
    if failed == 0:
        return EXIT_OK
    return EXIT_PARTIAL if planned else EXIT_NOTHING


@dataclass(frozen=True)
class VisitCounts:
    total: int
    planned: int
    failed: int
    patients: int


@dataclass(frozen=True)
class ProposalCounts:
    """Proposals by outcome, and what the server did with the ones written.

    A proposal of a visit whose write-back failed (wholly, or the part that was not
    written) is `not_written`, not `proposed`: `proposed` counts what is on the server.
    """

    by_outcome: Mapping[ProposalOutcome, int]
    created: int = 0  # created on the server (or in the transaction file)
    already_present: int = 0  # a conditional create that matched (a run at the same time)
    not_written: int = 0  # to be proposed, but the write failed: a re-run writes them

    def __getitem__(self, outcome: ProposalOutcome) -> int:
        return self.by_outcome.get(outcome, 0)

    def to_json(self) -> dict[str, int]:
        return {**{o.value: self[o] for o in ProposalOutcome},
                "created": self.created, "already_present": self.already_present,
                "not_written": self.not_written}


@dataclass(frozen=True)
class SheetCounts:
    """Sheets stored on the server as DocumentReferences (--write-sheets)."""

    created: int = 0
    updated: int = 0


@dataclass(frozen=True)
class Failure:
    """A visit that could not be planned or written, and why."""

    appointment: str
    start: str | None  # ISO date-time in the clinic's zone
    reason: str
    # identifiers of the proposals a failed or partial write-back did not write
    not_written: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReport:
    date: date
    days: int
    write_back: bool
    visits: VisitCounts
    findings: Mapping[Status, int]
    actionable_by_kind: Mapping[Kind, int]
    proposals: ProposalCounts
    sheets_stored: SheetCounts
    failures: tuple[Failure, ...]
    source_problems: tuple[SourceProblem, ...]
    http_requests: int
    exit_code: int
    # Seconds per stage ("records_seconds", ...; see run._Progress.seconds): they vary run
    # to run, so tests compare everything but these.
    timings: Mapping[str, float] = field(default_factory=dict)
    # Every input problem seen, also those source_problems only counts (see _capped).
    source_problem_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "days": self.days,
            "write_back": self.write_back,
            "visits": {"total": self.visits.total, "planned": self.visits.planned,
                       "failed": self.visits.failed, "patients": self.visits.patients},
            "findings": {s.value: n for s, n in sorted(self.findings.items())},
            "actionable_by_kind": {k.value: n for k, n in
                                   sorted(self.actionable_by_kind.items())},
            "proposals": self.proposals.to_json(),
            "sheets_stored": {"created": self.sheets_stored.created,
                              "updated": self.sheets_stored.updated},
            "failures": [{"appointment": f.appointment, "start": f.start, "reason": f.reason,
                          "not_written": list(f.not_written)} for f in self.failures],
            "source_problems": [{"where": p.where, "message": p.message}
                                for p in self.source_problems],
            "http_requests": self.http_requests,
            "timings": dict(self.timings),
            "exit_code": self.exit_code,
        }


class Tally:
    """The report's counts, added up one visit at a time as the run plans them (in any
    order: `failures` are put in the day's order by `report`), holding no plan."""

    def __init__(self) -> None:
        self.statuses: Counter[Status] = Counter()
        self.actionable: Counter[Kind] = Counter()
        self.outcomes: Counter[ProposalOutcome] = Counter()
        self.unwritten = 0
        self.visits = 0
        self.patients: set[str] = set()
        self._failures: list[tuple[int, Failure]] = []

    def add(self, plan: VisitPlan, not_written: Collection[str] = (), *,
            position: int | None = None) -> None:
        """One visit of the huddle horizon; `position`: its place in the day (default: after
        the visits added so far); `not_written`: the identifiers of its proposals its
        write-back did not write."""
        if plan.failed:
            self._failures.append((self.visits if position is None else position, Failure(
                plan.visit.appointment_id,
                plan.visit.start.isoformat() if plan.visit.start else None, plan.failed,
                tuple(sorted(not_written)))))
        self.visits += 1
        self.patients.add(plan.visit.patient_id)
        for f in plan.findings:
            self.statuses[f.status] += 1
            if f.status.actionable:
                self.actionable[f.kind] += 1
        for p in plan.proposals:
            if p.outcome == ProposalOutcome.PROPOSED and p.identifier in not_written:
                self.unwritten += 1
            else:
                self.outcomes[p.outcome] += 1

    def report(self, generated_for: date, days: int, *, write_back: bool, created: int,
               already_present: int, sheets: SheetCounts, problems: Iterable[SourceProblem],
               http_requests: int, timings: Mapping[str, float]) -> RunReport:
        failures = tuple(f for _, f in sorted(self._failures, key=lambda pf: pf[0]))
        failed = len(failures)
        planned = self.visits - failed
        seen = list(problems)
        return RunReport(
            date=generated_for, days=days, write_back=write_back,
            visits=VisitCounts(self.visits, planned, failed, len(self.patients)),
            findings=dict(self.statuses), actionable_by_kind=dict(self.actionable),
            proposals=ProposalCounts(dict(self.outcomes), created, already_present,
                                     self.unwritten),
            sheets_stored=sheets,
            failures=failures, source_problems=_capped(seen),
            http_requests=http_requests, timings=timings,
            exit_code=exit_code_for(planned, failed), source_problem_count=len(seen))


def build_report(day: DayPlan, *, write_back: bool, created: int, already_present: int,
                 sheets: SheetCounts, problems: Iterable[SourceProblem], http_requests: int,
                 timings: Mapping[str, float],
                 not_written: Mapping[str, Collection[str]] | None = None) -> RunReport:
    """The report of a finished run: counts from the plans, and what the writes did.

    `not_written`: per appointment, the identifiers of the proposals its write-back did not
    write (all of them when it failed, the rest when it was partly written)."""
    tally = Tally()
    for plan in day.plans:
        tally.add(plan, (not_written or {}).get(plan.visit.appointment_id, ()))
    return tally.report(day.generated_for, day.days, write_back=write_back, created=created,
                        already_present=already_present, sheets=sheets, problems=problems,
                        http_requests=http_requests, timings=timings)


def _capped(problems: list[SourceProblem]) -> tuple[SourceProblem, ...]:
    """The first MAX_LISTED_PROBLEMS problems, then one line per file for the rest (the
    files with most first), then one line for the files beyond those."""
    if len(problems) <= MAX_LISTED_PROBLEMS:
        return tuple(problems)
    rest = Counter(_file_of(p.where) for p in problems[MAX_LISTED_PROBLEMS:])
    ranked = sorted(rest.items(), key=lambda kv: (-kv[1], kv[0]))
    summary = [SourceProblem(where, f"{count:,} more problem{'s' if count != 1 else ''} here, "
                             f"not listed (only the first {MAX_LISTED_PROBLEMS} of a run are)")
               for where, count in ranked[:MAX_SUMMARISED_FILES]]
    beyond = ranked[MAX_SUMMARISED_FILES:]
    if beyond:
        summary.append(SourceProblem(
            f"{len(beyond):,} more files", f"{sum(n for _, n in beyond):,} more problems, "
            "not listed"))
    return (*problems[:MAX_LISTED_PROBLEMS], *summary)


def _file_of(where: str) -> str:
    """"folder/day.json entry[12]" -> "folder/day.json" (a line of NDJSON likewise)."""
    return re.sub(r" (?:entry\[\d+\]|line \d+)$", "", where)
