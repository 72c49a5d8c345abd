"""A run whose write-back fails, wholly or in part: the visit is failed with exactly what is
missing, and its proposals that are not on the server are not counted as `proposed`.

The sample day through the bundle source, with the writes of chosen visits failing the way
the HTTP source reports them: WriteError when nothing was written, a partial WriteResult
(`missing`, `problem`) when a later part of a visit's transaction failed.
"""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import shipped_rules

from previsit.errors import WriteError
from previsit.plan import ProposalOutcome
from previsit.report import EXIT_OK, EXIT_PARTIAL
from previsit.run import RunOptions, RunResult, run_day
from previsit.sources import VisitWindow, WriteResult
from previsit.sources.bundles import BundleSource

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_bundles"
WINDOW = VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 2), timezone="America/Chicago")
BEGAY = "appt-1201-1130-begay"  # 13 proposals
WHITEHORSE = "appt-1201-1000-whitehorse"  # 12 proposals


class Failing(BundleSource):
    """Writes of `partial` visits stop after `written` entries; of `broken` ones, at once."""

    def __init__(self, *, partial: tuple[str, ...] = (), broken: tuple[str, ...] = (),
                 written: int = 8) -> None:
        super().__init__(SAMPLE)
        self.partial, self.broken, self.written = partial, broken, written

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        if key in self.broken:
            raise WriteError(key, f"writing the transaction for {key}: HTTP 403 Forbidden")
        result = await super().write_transaction(bundle, key=key)
        if key not in self.partial:
            return result
        missing = tuple(e["fullUrl"] for e in bundle["entry"][self.written:])
        return WriteResult(created=result.created[:self.written], missing=missing,
                           problem=f"writing the transaction for {key} (entries 9-13 of 13): "
                                   "HTTP 429 Too Many Requests")


def plan_day(source: BundleSource) -> RunResult:
    return asyncio.run(run_day(source, shipped_rules(), RunOptions(window=WINDOW,
                                                                   write_back=True)))


@pytest.fixture(scope="module")
def complete() -> RunResult:
    return plan_day(BundleSource(SAMPLE))


def proposed(result: RunResult, appointment: str) -> list[Any]:
    plan = next(p for p in result.day.plans if p.visit.appointment_id == appointment)
    return [p for p in plan.proposals if p.outcome == ProposalOutcome.PROPOSED]


def test_a_failed_write_counts_its_proposals_as_not_written(complete: RunResult) -> None:
    result = plan_day(Failing(broken=(BEGAY,)))
    assert complete.exit_code == EXIT_OK and result.exit_code == EXIT_PARTIAL
    before = complete.report.proposals
    after = result.report.proposals
    assert len(proposed(result, BEGAY)) == 13
    assert after[ProposalOutcome.PROPOSED] == before[ProposalOutcome.PROPOSED] - 13
    assert after.not_written == 13 and before.not_written == 0
    (failure,) = result.report.failures
    assert failure.appointment == BEGAY
    assert failure.reason.startswith("write-back failed: writing the transaction for")
    assert sorted(failure.not_written) == sorted(p.identifier for p in proposed(result, BEGAY))
    assert result.report.to_json()["proposals"]["not_written"] == 13


def test_a_partly_written_visit_says_exactly_what_is_missing(complete: RunResult) -> None:
    result = plan_day(Failing(partial=(BEGAY,), written=8))
    assert result.exit_code == EXIT_PARTIAL
    (failure,) = result.report.failures
    lacking = [p for p in proposed(result, BEGAY)][8:]
    assert len(lacking) == 5
    assert sorted(failure.not_written) == sorted(p.identifier for p in lacking)
    assert failure.reason.startswith("write-back partly done: 8 of 13 proposals written; "
                                     "not written: ")
    for p in lacking:
        assert f"{p.display} ({p.resource_type})" in failure.reason
    assert "HTTP 429 Too Many Requests" in failure.reason
    assert failure.reason.endswith("a re-run writes only what is missing")
    counts = result.report.proposals
    assert counts.not_written == 5
    assert counts[ProposalOutcome.PROPOSED] == \
        complete.report.proposals[ProposalOutcome.PROPOSED] - 5
    assert result.report.visits.failed == 1


def test_written_parts_of_a_partial_write_are_counted_as_created(complete: RunResult) -> None:
    result = plan_day(Failing(partial=(BEGAY, WHITEHORSE), written=8))
    assert result.report.proposals.created == complete.report.proposals.created - 5 - 4
    assert {f.appointment for f in result.report.failures} == {BEGAY, WHITEHORSE}
