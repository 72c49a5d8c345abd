"""Rate limits: every way a server says "wait", and one pause for the whole source.

Medplum answers a spent quota with 429, the IETF RateLimit field and its limiter's JSON
(`_msBeforeNext`), and no Retry-After; inside a batch or transaction-response the entry
answers 429 with the limiter's JSON in the OperationOutcome's diagnostics. Each is honoured;
all requests of a source pause together until the quota resets; the pauses of a run are
bounded by `source.max_wait_seconds`.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from typing import Any

import httpx
import pytest
from builders import json_response, patient
from http_harness import BASE, NOW, Harness, run, searchset

from previsit.errors import SourceError
from previsit.sources import VisitWindow
from previsit.sources.throttle import (
    Quota,
    Throttle,
    WaitBudgetSpent,
    limiter_wait,
    quotas,
    server_wait,
    spent_quota_wait,
)

WINDOW = VisitWindow(date(2026, 12, 1), date(2026, 12, 2), timezone="America/Chicago")
MEDPLUM_SPENT = {"_remainingPoints": 0, "_msBeforeNext": 51223, "_consumedPoints": 50005,
                 "_isFirstInDuration": False, "limit": 50000}


def headers(*pairs: tuple[str, str]) -> httpx.Headers:
    return httpx.Headers(list(pairs))


def too_many(body: Any = None, *pairs: tuple[str, str]) -> httpx.Response:
    return httpx.Response(429, headers=[("Content-Type", "application/json"), *pairs],
                          content=json.dumps(body or {}).encode())


def throttled_entry(body: dict[str, Any]) -> dict[str, Any]:
    """A 429 entry as Medplum writes it inside a batch/transaction-response."""
    return {"response": {"status": "429", "outcome": {
        "resourceType": "OperationOutcome", "id": "too-many-requests",
        "issue": [{"severity": "error", "code": "throttled",
                   "details": {"text": "Too Many Requests"},
                   "diagnostics": json.dumps(body)}]}}}


# --- reading what the server says ----------------------------------------------------------


def test_ratelimit_items_give_each_policy_its_remaining_and_reset() -> None:
    found = quotas(headers(("RateLimit", '"requests";r=59998;t=60'),
                           ("RateLimit", '"fhirInteractions";r=0;t=44')))
    assert found == [Quota("requests", 59998.0, 60.0), Quota("fhirInteractions", 0.0, 44.0)]
    # the same two items on one line, as a proxy may join them
    assert quotas(headers(("RateLimit", '"requests";r=59998;t=60, "fhirInteractions";r=0;t=44'))
                  ) == found


def test_a_spent_quota_waits_until_its_reset() -> None:
    spent = headers(("RateLimit", '"requests";r=59998;t=60, "fhirInteractions";r=0;t=44'))
    assert spent_quota_wait(spent) == 44.0
    assert spent_quota_wait(headers(("RateLimit", '"requests";r=1;t=60'))) is None
    assert spent_quota_wait(headers()) is None


def test_a_spent_quota_without_a_reset_waits_its_policy_window() -> None:
    spent = headers(("RateLimit", '"daily";r=0'), ("RateLimit-Policy",
                                                   '"burst";q=100;w=1, "daily";q=1000;w=86400'))
    assert spent_quota_wait(spent) == 86400.0


def test_the_older_separate_fields_and_the_draft_07_dictionary_are_read_too() -> None:
    assert spent_quota_wait(headers(("RateLimit-Limit", "100"), ("RateLimit-Remaining", "0"),
                                    ("RateLimit-Reset", "30"))) == 30.0
    assert spent_quota_wait(headers(("RateLimit", "limit=100, remaining=0, reset=12"))) == 12.0


def test_medplums_limiter_body_and_the_same_json_inside_an_entry_outcome() -> None:
    assert limiter_wait(json.dumps(MEDPLUM_SPENT).encode()) == 51.223
    assert limiter_wait(throttled_entry(MEDPLUM_SPENT)["response"]["outcome"]) == 51.223
    assert limiter_wait({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "throttled", "diagnostics": "{not json"}]}) is None
    assert limiter_wait(b"<html>busy</html>") is None


def test_retry_after_comes_first_then_the_ratelimit_field_then_the_limiter_body() -> None:
    both = too_many(MEDPLUM_SPENT, ("Retry-After", "5"),
                    ("RateLimit", '"fhirInteractions";r=0;t=44'))
    assert server_wait(both, NOW) == 5.0
    assert server_wait(too_many(MEDPLUM_SPENT, ("RateLimit", '"fhirInteractions";r=0;t=44')),
                       NOW) == 44.0
    assert server_wait(too_many(MEDPLUM_SPENT), NOW) == 51.223
    assert server_wait(too_many({"message": "slow down"}), NOW) is None


# --- the throttle ----------------------------------------------------------------------------


def test_the_throttle_waits_once_for_everyone_and_counts_the_time_once() -> None:
    clock = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)
        clock[0] = max(clock[0], 30.0)  # every sleeper wakes at the deadline

    throttle = Throttle(100, sleep=sleep, clock=lambda: clock[0])
    throttle.pause(30, "test")

    async def many() -> None:
        await asyncio.gather(*(throttle.ready() for _ in range(5)))

    run(many())
    assert slept == [30.0] * 5  # all five waited for the same deadline
    assert throttle.waited == 30.0  # counted once
    assert throttle.pauses == 1


def test_a_pause_beyond_the_budget_is_refused_and_nothing_waits() -> None:
    throttle = Throttle(60, clock=lambda: 0.0)
    throttle.pause(40, "first")
    with pytest.raises(WaitBudgetSpent, match=r"wait 61 s.*60 of 60 s; source\.max_wait"):
        throttle.pause(61, "second")
    assert throttle.paused_for == 40.0


def test_a_shorter_pause_does_not_shorten_a_longer_one() -> None:
    throttle = Throttle(600, clock=lambda: 0.0)
    throttle.pause(50, "a")
    throttle.pause(10, "b")
    assert throttle.paused_for == 50.0


# --- the HTTP source ---------------------------------------------------------------------------


def test_medplums_429_with_only_the_ratelimit_field_waits_for_the_reset() -> None:
    # The failure: five attempts in 8 s of backoff while the window needed 44 s.
    h = Harness()
    route = h.router.get("/Appointment").mock(side_effect=[
        too_many(MEDPLUM_SPENT | {"_msBeforeNext": 44000},
                 ("RateLimit", '"requests";r=59990;t=44, "fhirInteractions";r=0;t=44')),
        json_response(searchset())])
    run(h.source.appointments(WINDOW))
    assert route.call_count == 2
    assert h.sleeps == [44.0]


def test_medplums_429_with_only_the_limiter_body_waits_ms_before_next() -> None:
    h = Harness()
    h.router.get("/Appointment").mock(side_effect=[too_many(MEDPLUM_SPENT),
                                                   json_response(searchset())])
    run(h.source.appointments(WINDOW))
    assert h.sleeps == [51.223]


def test_a_rate_limit_longer_than_one_requests_budget_is_still_waited_for() -> None:
    # max_retry_seconds bounds backoff on errors; a rate limit is bounded by the run's budget.
    h = Harness(retry={"max_retry_seconds": 10, "max_attempts": 2})
    h.router.get("/Appointment").mock(side_effect=[
        too_many(None, ("RateLimit", '"fhirInteractions";r=0;t=44')),
        too_many(None, ("RateLimit", '"fhirInteractions";r=0;t=30')),
        json_response(searchset())])
    run(h.source.appointments(WINDOW))
    assert h.sleeps == [44.0, 30.0]


def test_the_runs_waiting_budget_bounds_the_pauses() -> None:
    h = Harness(retry={"max_wait_seconds": 60})
    route = h.router.get("/Appointment").mock(return_value=too_many(
        None, ("RateLimit", '"fhirInteractions";r=0;t=44')))
    with pytest.raises(SourceError) as caught:
        run(h.source.appointments(WINDOW))
    assert route.call_count == 2 and h.sleeps == [44.0]
    assert "source.max_wait_seconds" in str(caught.value)
    assert "wait 44 s" in str(caught.value)


def test_an_answer_saying_the_quota_is_spent_pauses_the_next_request() -> None:
    h = Harness()
    h.router.get("/Appointment").mock(return_value=json_response(
        searchset(), RateLimit='"fhirInteractions";r=0;t=20'))
    run(h.source.appointments(WINDOW))
    assert h.sleeps == []  # the answer itself is fine
    run(h.source.appointments(WINDOW))
    assert h.sleeps == [20.0]  # the next request waits instead of being refused


def test_all_requests_pause_together_when_the_quota_is_spent() -> None:
    # Eight records read at once; the quota is spent until t=30. Each task backing off on its
    # own would keep asking (and be refused) during the window; one shared pause asks
    # nothing until it resets.
    h = Harness(concurrency=8, use_batch=False)
    h.capability(batch=False)
    refused: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if h.elapsed < 30:
            refused.append(h.elapsed)
            return too_many(MEDPLUM_SPENT | {"_msBeforeNext": int((30 - h.elapsed) * 1000)},
                            ("RateLimit", f'"fhirInteractions";r=0;t={30 - h.elapsed:.0f}'))
        kind, _, pid = request.url.path.removeprefix("/fhir/R4/").partition("/")
        return json_response(patient(pid=pid) if kind == "Patient" else searchset())

    h.router.route().mock(side_effect=answer)

    async def day() -> list[str]:
        records = await asyncio.gather(*(h.source.patient_record(f"p{i}") for i in range(8)))
        return [r.patient.id for r in records]

    assert run(day()) == [f"p{i}" for i in range(8)]
    assert refused and all(at == 0.0 for at in refused)  # nothing asked during the pause
    assert len(refused) <= 8  # only the requests already in flight
    assert h.source.throttle.pauses == 1
    assert h.elapsed == 30.0


def test_a_throttled_entry_in_a_record_batch_pauses_before_it_is_asked_again() -> None:
    h = Harness()
    h.capability()
    entries = [{"response": {"status": "200 OK"}, "resource": patient(pid="p1")}]
    entries += [throttled_entry(MEDPLUM_SPENT) for _ in range(9)]
    h.router.post(BASE).mock(return_value=json_response(
        {"resourceType": "Bundle", "type": "batch-response", "entry": entries}))
    searches = h.router.get(path__regex=r"/(Condition|MedicationRequest|Observation|Procedure|"
                                        r"Immunization|ServiceRequest|Encounter|"
                                        r"MedicationDispense|MedicationStatement)$").mock(
        return_value=json_response(searchset()))
    record = run(h.source.patient_record("p1"))
    assert record.patient.id == "p1"
    assert searches.call_count == 9
    assert h.sleeps == [51.223]  # one pause, then the nine searches


def test_a_non_conditional_write_is_not_sent_again_after_a_429_but_the_source_pauses() -> None:
    h = Harness()
    route = h.router.post(BASE).mock(return_value=too_many(
        None, ("RateLimit", '"fhirInteractions";r=0;t=30')))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "ServiceRequest"},
         "request": {"method": "POST", "url": "ServiceRequest"}}]}
    with pytest.raises(SourceError, match="429"):
        run(h.source.write_transaction(bundle, key="a1"))
    assert route.call_count == 1 and h.sleeps == []
    assert h.source.throttle.paused_for == 30.0  # the next request waits
