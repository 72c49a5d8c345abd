"""validation: outputs validated with fhir.resources once per shape, never less."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest

from previsit.errors import ProposalError
from previsit.proposals import _validate
from previsit.validation import SHAPES, ShapeCache, shape


def order(pid: str = "p1", value: str = "pv-1", code: str = "4548-4",
          note: str = "A1c due: last 2025-01-02") -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
            "identifier": [{"system": "urn:previsit:proposal", "value": value}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code,
                                 "display": "Hemoglobin A1c"}], "text": "Hemoglobin A1c"},
            "subject": {"reference": f"Patient/{pid}"}, "authoredOn": "2026-12-01",
            "note": [{"text": note}]}


class Counting:
    """ServiceRequest, counting the validations actually run."""

    runs = 0

    @classmethod
    def model_validate(cls, obj: Any) -> Any:
        cls.runs += 1
        return ServiceRequest.model_validate(obj)


def test_the_first_of_a_shape_is_validated_an_identical_shape_is_not() -> None:
    cache = ShapeCache()
    Counting.runs = 0
    assert cache.validate(Counting, order()) is True
    # other ids, patient, dates and note text: the same shape
    other = order(pid="p2", value="pv-77", note="A1c due: never measured")
    other["authoredOn"] = "2026-12-02"
    assert cache.validate(Counting, other) is False
    assert Counting.runs == 1
    # another code (rule library values are part of the shape), an extra field, a second
    # note: each a new shape, validated
    assert cache.validate(Counting, order(code="2160-0")) is True
    assert cache.validate(Counting, {**order(), "priority": "routine"}) is True
    assert cache.validate(Counting, {**order(), "note": [
        {"text": "a b"}, {"text": "b c", "authorString": "x"}]}) is True
    assert Counting.runs == 4
    # two notes of the first shape: lists are collapsed to their items' shapes
    assert cache.validate(Counting, {**order(), "note": [{"text": "a b"}, {"text": "b c d"}]}) \
        is False
    assert Counting.runs == 4


def test_a_broken_shape_is_refused_every_time_it_is_met() -> None:
    cache = ShapeCache()
    cache.validate(ServiceRequest, order())
    broken = {**order(), "subject": "Patient/p1"}  # a string where a Reference belongs
    for _ in range(2):
        with pytest.raises(ValueError, match="subject"):
            cache.validate(ServiceRequest, broken)


@pytest.mark.parametrize("change", [
    {"authoredOn": ""},  # an empty string (FHIR dateTime, string: a character at least)
    {"code": {"coding": [{"system": "http://loinc.org", "code": "4548  -4"}]}},  # code
    {"subject": {"reference": "Patient/p1", "display": ""}},
])
def test_what_the_shape_keeps_is_enough_to_catch_a_broken_value(
        change: dict[str, Any]) -> None:
    cache = ShapeCache()
    cache.validate(ServiceRequest, order())
    cache.validate(ServiceRequest, {**order(), "subject": {"reference": "Patient/p1",
                                                           "display": "x"}})
    with pytest.raises(ValueError):
        cache.validate(ServiceRequest, {**order(), **change})


def test_a_broken_proposal_is_a_proposal_error_after_valid_ones() -> None:
    SHAPES.clear()
    _validate(order())
    _validate(order(pid="p9", value="pv-9"))
    with pytest.raises(ProposalError, match="ServiceRequest proposal does not validate"):
        _validate({**order(), "occurrenceDateTime": "2026-13-45"})
    with pytest.raises(ProposalError, match="status=draft, intent=proposal"):
        _validate({**order(), "status": "active"})


def test_a_bundle_is_validated_once_per_shape_of_its_entries() -> None:
    cache = ShapeCache()
    entry = {"fullUrl": "urn:uuid:0e4f3c62-6b1c-5d6e-8f00-6f2b0b1a0c11", "resource": order(),
             "request": {"method": "POST", "url": "ServiceRequest",
                         "ifNoneExist": "identifier=urn:previsit:proposal|pv-1"}}
    one = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert cache.validate(Bundle, one) is True
    three = copy.deepcopy(one)
    three["entry"] = [entry, entry, entry]
    assert cache.validate(Bundle, three) is False
    wrong = copy.deepcopy(one)
    del wrong["entry"][0]["request"]["url"]  # Bundle.entry.request.url is 1..1
    with pytest.raises(ValueError):
        cache.validate(Bundle, wrong)


def test_the_cache_is_bounded_oldest_first() -> None:
    cache = ShapeCache(size=2)
    first, second, third = order(), order(code="2160-0"), order(code="2093-3")
    assert [cache.validate(ServiceRequest, r) for r in (first, second, third)] == \
        [True, True, True]
    assert cache.validate(ServiceRequest, third) is False
    assert cache.validate(ServiceRequest, first) is True  # forgotten: validated again


def test_shapes_tell_numbers_signs_and_strings_apart() -> None:
    assert shape({"n": 1}) == shape({"n": 7}) != shape({"n": 0}) != shape({"n": -1})
    assert shape({"n": 1}) != shape({"n": 1.0}) != shape({"n": True})
    assert shape({"s": "a b"}) == shape({"s": "c d"}) != shape({"s": "cd"})
    assert shape({"s": "a"}) != shape({"s": " a"}) != shape({"s": ""})
    assert shape({"code": "a"}) != shape({"code": "b"})
