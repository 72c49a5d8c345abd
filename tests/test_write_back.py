"""Write-back against a server's limits: transactions of the size it accepts, a smaller size
learned from its refusal, references across parts, per-entry retries, transient conflicts,
and a partial write that says exactly what is missing.

Medplum refuses a transaction holding a conditional create with more than 8 entries (400
"Transaction requires strict isolation but has too many entries"); 3 visits of the sample
day have 10-13 proposals. Sleeps are injected (tests/http_harness.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from builders import json_response
from http_harness import BASE, Harness, outcome, run

from previsit.errors import WriteError
from previsit.sources.transactions import (
    is_transient_conflict,
    rewrite_references,
    smaller_size,
)

STRICT = "Transaction requires strict isolation but has too many entries"
MISMATCH = "Resource ID did not match resolved ID"


def proposal(n: int, *, conditional: bool = True, **fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": "ServiceRequest"}
    if conditional:
        request["ifNoneExist"] = f"identifier=urn:previsit:proposal|pv-{n}"
    return {"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{n:012d}",
            "resource": {"resourceType": "ServiceRequest", **fields}, "request": request}


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def sent(request: httpx.Request) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(request.content)["entry"]
    return entries


def numbers(request: httpx.Request) -> list[int]:
    return [int(e["fullUrl"].rsplit("-", 1)[1]) for e in sent(request)]


def created(*ns: int, status: str = "201 Created") -> httpx.Response:
    return json_response({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": status, "location": f"ServiceRequest/sr{n}/_history/1"}}
        for n in ns]})


class Server:
    """A transaction endpoint that accepts at most `limit` entries (Medplum's refusal
    above), and answers each entry 201 with id sr<n>."""

    def __init__(self, harness: Harness, limit: int = 1000) -> None:
        self.limit = limit
        self.parts: list[list[int]] = []
        harness.router.post(BASE).mock(side_effect=self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ns = numbers(request)
        if len(ns) > self.limit:
            return json_response({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "details": {"text": STRICT}}]}, 400)
        self.parts.append(ns)
        return created(*ns)


def test_a_visit_larger_than_the_limit_is_written_in_parts_of_that_size() -> None:
    h = Harness(max_transaction_entries=8)
    server = Server(h, limit=8)
    result = run(h.source.write_transaction(transaction(*map(proposal, range(1, 14))),
                                            key="a1"))
    assert server.parts == [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13]]
    assert result.created == tuple(f"ServiceRequest/sr{n}" for n in range(1, 14))
    assert result.complete and result.missing == ()


def test_the_default_size_is_safe_for_medplum() -> None:
    h = Harness()
    server = Server(h, limit=8)
    run(h.source.write_transaction(transaction(*map(proposal, range(1, 11))), key="a1"))
    assert [len(p) for p in server.parts] == [8, 2]


def test_a_smaller_limit_is_learned_from_the_refusal_and_kept() -> None:
    h = Harness(max_transaction_entries=20)
    server = Server(h, limit=4)
    first = run(h.source.write_transaction(transaction(*map(proposal, range(1, 13))),
                                           key="a1"))
    assert len(first.created) == 12
    # 12 refused, 6 refused, 3 taken
    assert server.parts == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert h.source.transaction_limit == 3
    server.parts.clear()
    run(h.source.write_transaction(transaction(*map(proposal, range(20, 27))), key="a2"))
    assert server.parts == [[20, 21, 22], [23, 24, 25], [26]]  # no refusal this time


def test_a_limit_the_server_states_is_used_at_once() -> None:
    h = Harness(max_transaction_entries=50)
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        ns = numbers(request)
        calls.append(len(ns))
        if len(ns) > 10:
            return json_response(outcome(f"Bundle contains {len(ns)} entries, which exceeds "
                                         "the maximum of 10"), 400)
        return created(*ns)

    h.router.post(BASE).mock(side_effect=answer)
    run(h.source.write_transaction(transaction(*map(proposal, range(1, 31))), key="a1"))
    assert calls == [30, 10, 10, 10]


def test_a_single_entry_refused_as_too_large_is_a_failure_not_a_loop() -> None:
    h = Harness(max_transaction_entries=1)
    h.router.post(BASE).mock(return_value=json_response(outcome(STRICT), 400))
    with pytest.raises(WriteError, match="too many entries"):
        run(h.source.write_transaction(transaction(proposal(1)), key="a1"))


def test_a_part_failing_after_others_were_written_is_a_partial_write_naming_the_rest() -> None:
    h = Harness(max_transaction_entries=4)
    h.router.post(BASE).mock(side_effect=[
        created(1, 2, 3, 4),
        json_response(outcome("ServiceRequest.code: unknown code"), 422)])
    result = run(h.source.write_transaction(transaction(*map(proposal, range(1, 11))),
                                            key="a1"))
    assert result.created == ("ServiceRequest/sr1", "ServiceRequest/sr2",
                              "ServiceRequest/sr3", "ServiceRequest/sr4")
    assert not result.complete
    assert result.missing == tuple(f"urn:uuid:00000000-0000-0000-0000-{n:012d}"
                                   for n in range(5, 11))
    assert result.problem is not None
    assert "HTTP 422" in result.problem and "unknown code" in result.problem


def test_nothing_written_is_a_write_error() -> None:
    h = Harness(max_transaction_entries=4)
    h.router.post(BASE).mock(return_value=json_response(outcome("no"), 422))
    with pytest.raises(WriteError, match="HTTP 422") as caught:
        run(h.source.write_transaction(transaction(*map(proposal, range(1, 11))), key="a1"))
    assert caught.value.key == "a1"


def test_references_to_entries_of_an_earlier_part_name_what_the_server_made_of_them() -> None:
    h = Harness(max_transaction_entries=2)
    server = Server(h)
    patient_url = "urn:uuid:00000000-0000-0000-0000-000000000001"
    entries = [proposal(1), proposal(2, subject={"reference": patient_url}),
               proposal(3, subject={"reference": patient_url},
                        basedOn=[{"reference": "urn:uuid:00000000-0000-0000-0000-000000000002"}],
                        note=[{"text": patient_url}])]
    captured: list[httpx.Request] = []
    original = server.__call__

    def spy(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return original(request)

    h.router.post(BASE).mock(side_effect=spy)
    run(h.source.write_transaction(transaction(*entries), key="upload"))
    first, second = (sent(r) for r in captured)
    # within one part the fullUrl stays (the server resolves it in the transaction)
    assert first[1]["resource"]["subject"] == {"reference": patient_url}
    # in a later part it is the resource the server made
    assert second[0]["resource"]["subject"] == {"reference": "ServiceRequest/sr1"}
    assert second[0]["resource"]["basedOn"] == [{"reference": "ServiceRequest/sr2"}]
    assert second[0]["resource"]["note"] == [{"text": patient_url}]  # text is not a reference


def test_a_reference_to_a_later_part_is_refused_before_anything_is_sent() -> None:
    h = Harness(max_transaction_entries=1)
    route = h.router.post(BASE).mock(return_value=created(1))
    later = "urn:uuid:00000000-0000-0000-0000-000000000002"
    with pytest.raises(WriteError, match="refers to an entry written later"):
        run(h.source.write_transaction(transaction(
            proposal(1, basedOn=[{"reference": later}]), proposal(2)), key="upload"))
    assert route.call_count == 0


def test_throttled_entries_of_a_non_atomic_transaction_are_sent_again_alone() -> None:
    # Medplum without atomic transactions: the Bundle answers 200, each entry its own status;
    # the entry that spent the quota and those after it answer 429.
    h = Harness()
    limiter = {"_remainingPoints": 0, "_msBeforeNext": 12000, "_consumedPoints": 50100,
               "_isFirstInDuration": False, "limit": 50000}
    throttled = {"status": "429", "outcome": {
        "resourceType": "OperationOutcome", "id": "too-many-requests",
        "issue": [{"severity": "error", "code": "throttled",
                   "details": {"text": "Too Many Requests"}, "diagnostics": json.dumps(limiter)}]}}
    route = h.router.post(BASE).mock(side_effect=[
        json_response({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": "ServiceRequest/sr1"}},
            {"response": throttled}, {"response": throttled}]}),
        created(2, 3)])
    result = run(h.source.write_transaction(transaction(*map(proposal, (1, 2, 3))), key="a1"))
    assert numbers(route.calls[1].request) == [2, 3]
    assert result.created == ("ServiceRequest/sr1", "ServiceRequest/sr2", "ServiceRequest/sr3")
    assert h.sleeps == [12.0]


def test_an_unavailable_entry_is_sent_again_after_a_backoff() -> None:
    h = Harness()
    route = h.router.post(BASE).mock(side_effect=[
        json_response({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "503", "outcome": outcome("busy", "transient")}},
            {"response": {"status": "200 OK", "location": "ServiceRequest/sr2"}}]}),
        created(1)])
    result = run(h.source.write_transaction(transaction(proposal(1), proposal(2)), key="a1"))
    assert numbers(route.calls[1].request) == [1]
    assert result.created == ("ServiceRequest/sr1",) and result.existing == ("ServiceRequest/sr2",)
    assert len(h.sleeps) == 1 and 0.5 <= h.sleeps[0] <= 1.0


def test_a_throttled_entry_of_a_non_conditional_write_is_not_sent_again() -> None:
    h = Harness()
    h.router.post(BASE).mock(return_value=json_response(
        {"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "429", "outcome": outcome("slow", "throttled")}}]}))
    with pytest.raises(WriteError, match="429"):
        run(h.source.write_transaction(transaction(proposal(1, conditional=False)), key="a1"))


def sheet_update() -> dict[str, Any]:
    return transaction({"resource": {"resourceType": "DocumentReference"}, "request": {
        "method": "PUT", "url": "DocumentReference?identifier=urn:previsit:sheet|pv-sheet-1"}})


def test_a_transient_conflict_of_a_conditional_write_is_retried() -> None:
    # Two runs at once: Medplum's own retry of the other run's update surfaces as 400.
    h = Harness()
    route = h.router.post(BASE).mock(side_effect=[
        json_response({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "invalid", "details": {"text": MISMATCH},
            "expression": ["DocumentReference.id"]}]}, 400),
        json_response({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "200 OK", "location": "DocumentReference/d1"}}]})])
    result = run(h.source.write_transaction(sheet_update(), key="sheet-a1"))
    assert route.call_count == 2 and result.existing == ("DocumentReference/d1",)
    assert len(h.sleeps) == 1


def test_a_conflict_that_does_not_go_away_fails_after_the_attempts() -> None:
    h = Harness(retry={"max_attempts": 3})
    route = h.router.post(BASE).mock(return_value=json_response(outcome(MISMATCH), 400))
    with pytest.raises(WriteError, match=MISMATCH):
        run(h.source.write_transaction(sheet_update(), key="sheet-a1"))
    assert route.call_count == 3


def test_a_conflict_of_a_non_conditional_write_is_not_retried() -> None:
    h = Harness()
    route = h.router.post(BASE).mock(return_value=json_response(outcome("conflict"), 409))
    with pytest.raises(WriteError, match="409"):
        run(h.source.write_transaction(transaction(proposal(1, conditional=False)), key="a1"))
    assert route.call_count == 1


# --- the pure pieces -----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "text", "size", "expected"), [
    (400, STRICT, 8, 4),
    (400, "Transaction contains more update operations than allowed", 60, 30),
    (413, "Payload Too Large", 8, 4),
    (400, "Bundle contains 30 entries, which exceeds the maximum of 10", 30, 10),
    (400, STRICT, 1, None),  # nothing smaller to try
    (400, "ServiceRequest.code: unknown code", 8, None),  # not about size
    (422, "the maximum of 10 entries is exceeded", 30, 10),
    (500, STRICT, 8, None),
])
def test_size_refusals(status: int, text: str, size: int, expected: int | None) -> None:
    assert smaller_size(status, outcome(text), size) == expected


@pytest.mark.parametrize(("status", "body", "expected"), [
    (400, outcome(MISMATCH), True),
    (409, outcome("version conflict"), True),
    (409, None, True),
    (400, outcome("invalid code"), False),
    (412, outcome("matched 2 resources"), False),  # HAPI: an ambiguous conditional create
])
def test_transient_conflicts(status: int, body: Any, expected: bool) -> None:
    assert is_transient_conflict(status, body) is expected


def test_rewrite_references_touches_only_reference_values() -> None:
    resource = {"subject": {"reference": "urn:uuid:a", "display": "urn:uuid:a"},
                "contained": [{"performer": [{"reference": "urn:uuid:b"}]}],
                "identifier": [{"value": "urn:uuid:a"}]}
    assert rewrite_references(resource, {"urn:uuid:a": "Patient/1", "urn:uuid:b": "X/2"}) == {
        "subject": {"reference": "Patient/1", "display": "urn:uuid:a"},
        "contained": [{"performer": [{"reference": "X/2"}]}],
        "identifier": [{"value": "urn:uuid:a"}]}
