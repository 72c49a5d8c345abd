"""The run report: input problems listed up to a cap, the rest counted per file."""

from __future__ import annotations

from datetime import date

from previsit.plan import DayPlan
from previsit.report import MAX_LISTED_PROBLEMS, SheetCounts, build_report
from previsit.sources import SourceProblem

DAY = DayPlan(generated_for=date(2026, 12, 1), days=1, plans=())


def report(problems: list[SourceProblem]) -> list[tuple[str, str]]:
    built = build_report(DAY, write_back=False, created=0, already_present=0,
                         sheets=SheetCounts(), problems=problems, http_requests=0, timings={})
    assert built.source_problem_count == len(problems)
    listed = built.to_json()["source_problems"]
    return [(p["where"], p["message"]) for p in listed]


def test_a_few_problems_are_all_listed() -> None:
    problems = [SourceProblem(f"d/a.json entry[{i}]", "Observation/x also appears")
                for i in range(MAX_LISTED_PROBLEMS)]
    assert len(report(problems)) == MAX_LISTED_PROBLEMS == 200


def test_beyond_the_cap_the_rest_is_counted_per_file() -> None:
    problems = [SourceProblem(f"d/dups.json entry[{i}]", "Observation/o1 also appears in "
                              "d/a.json entry[0]; the first one is used")
                for i in range(100_000)]
    problems += [SourceProblem("d/obs.ndjson line 7", "not valid JSON"),
                 SourceProblem("d/obs.ndjson line 9", "not valid JSON"),
                 SourceProblem("d/other.json", "not a FHIR resource")]
    listed = report(problems)
    assert len(listed) == 203
    assert listed[199] == ("d/dups.json entry[199]", "Observation/o1 also appears in "
                           "d/a.json entry[0]; the first one is used")
    assert listed[200:] == [
        ("d/dups.json", "99,800 more problems here, not listed (only the first 200 of a run "
                        "are)"),
        ("d/obs.ndjson", "2 more problems here, not listed (only the first 200 of a run are)"),
        ("d/other.json", "1 more problem here, not listed (only the first 200 of a run are)")]


def test_beyond_fifty_files_the_rest_is_one_line() -> None:
    problems = [SourceProblem("d/first.json", "x")] * 200 + \
        [SourceProblem(f"d/f{i:03d}.json", "bad") for i in range(60)]
    listed = report(problems)
    assert len(listed) == 200 + 50 + 1
    assert listed[-1] == ("10 more files", "10 more problems, not listed")
