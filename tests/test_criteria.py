"""Criteria: the registry, three-valued logic, undecidability and value-set discovery.

The behaviour of each criterion type on real records is tested through rules in
test_evaluate.py and tests/rules/; here: what makes the set of criteria open (a new type is
one registered class, and the loader, the value-set check and evaluation pick it up).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from builders import VISIT, coding, patient, record

from previsit.context import EvaluationContext, Settings, Truth
from previsit.criteria import (
    CRITERIA,
    AgeCriterion,
    AllCriterion,
    AnyCriterion,
    Criterion,
    MedicationCriterion,
    NotCriterion,
    ObservationCriterion,
    all_of,
    any_of,
    criterion,
    parse_criterion,
)
from previsit.errors import RuleError
from previsit.evaluate import evaluate
from previsit.plan import Status
from previsit.ruleschema import ValueSetUrl, valueset_urls
from previsit.ruleset import load_ruleset


def test_every_key_of_a_rule_file_is_registered() -> None:
    assert sorted(CRITERIA) == ["age", "all", "any", "condition", "encounter", "medication",
                                "not", "observation", "procedure", "service_request", "sex"]


def test_a_criterion_is_parsed_by_its_key() -> None:
    parsed = parse_criterion({"all": [{"age": {"min": 45}}, {"not": {"sex": "male"}}]})
    assert isinstance(parsed, AllCriterion)
    assert isinstance(parsed.all[0], AgeCriterion)
    assert isinstance(parsed.all[1], NotCriterion)


@pytest.mark.parametrize("value", [{"age": {"min": 1}, "sex": "male"}, {}, ["age"]])
def test_a_criterion_needs_exactly_one_key(value: object) -> None:
    with pytest.raises(ValueError, match="a criterion"):
        parse_criterion(value)


@pytest.mark.parametrize(("parts", "expected"), [
    ((True, True), True), ((True, None), None), ((None, False), False), ((False, True), False),
])
def test_all_of_is_false_first_then_unknown(parts: tuple[bool | None, ...],
                                            expected: bool | None) -> None:
    assert all_of([Truth(p, str(p)) for p in parts]).value is expected


@pytest.mark.parametrize(("parts", "expected"), [
    ((False, False), False), ((False, None), None), ((None, True), True), ((True, False), True),
])
def test_any_of_is_true_first_then_unknown(parts: tuple[bool | None, ...],
                                           expected: bool | None) -> None:
    assert any_of([Truth(p, str(p)) for p in parts]).value is expected


@pytest.mark.parametrize(("raw", "undecidable"), [
    ({"age": {"min": 45}}, True),
    ({"sex": "female"}, True),
    ({"condition": "https://x/vs"}, False),
    ({"observation": "https://x/vs", "missing": "unknown"}, True),
    ({"observation": "https://x/vs"}, False),
    ({"medication": "https://x/vs"}, False),
    ({"medication": "https://x/vs", "min_duration": "6mo"}, True),
    ({"any": [{"condition": "https://x/vs"}, {"not": {"age": {"max": 3}}}]}, True),
    ({"all": [{"condition": "https://x/vs"}, {"procedure": "https://x/vs"}]}, False),
    ({"encounter": "https://x/vs", "discharge": "https://x/d", "period": "ends"}, False),
])
def test_which_criteria_missing_data_can_make_unknown(raw: dict[str, object],
                                                      undecidable: bool) -> None:
    assert parse_criterion(raw).undecidable is undecidable


def test_value_set_urls_are_found_in_nested_criteria_by_their_type() -> None:
    parsed = parse_criterion({"any": [
        {"observation": "https://x/obs", "value_in": "https://x/answers"},
        {"not": {"medication": "https://x/meds", "names": ["https://not-a-set"]}},
    ]})
    assert list(valueset_urls(parsed)) == ["https://x/obs", "https://x/answers",
                                           "https://x/meds"]
    stay = parse_criterion({"encounter": "https://x/inpatient", "discharge": "https://x/hospice",
                            "period": "ends", "lookback": "1y"})
    assert list(valueset_urls(stay)) == ["https://x/inpatient", "https://x/hospice"]


# --- an open set: a new criterion type is one registered class ---------------------------------


@pytest.fixture
def pregnancy_criterion() -> Iterator[type[Criterion]]:
    """A criterion type the library does not have: "pregnant" (an active condition in a set,
    decided as unknown for a patient whose sex is not recorded)."""

    @criterion("pregnant")
    class PregnantCriterion(Criterion):
        pregnant: ValueSetUrl
        key: ClassVar[str]

        def evaluate(self, ctx: EvaluationContext) -> Truth:
            if ctx.record.patient.sex is None:
                return Truth(None, "sex not recorded")
            found = ctx.conditions.matching(ctx.vs(self.pregnant))
            return Truth(bool(found), "pregnant" if found else "not pregnant")

    try:
        yield PregnantCriterion
    finally:
        del CRITERIA["pregnant"]


def _folder_with(tmp_path: Path, criterion_yaml: str, valueset_url: str) -> Path:
    (tmp_path / "valuesets").mkdir()
    (tmp_path / "valuesets" / "pregnancy.json").write_text(json.dumps({
        "resourceType": "ValueSet", "url": "https://example.org/vs/pregnancy",
        "compose": {"include": [{"system": "http://snomed.info/sct",
                                 "concept": [{"code": "77386006"}]}]}}))
    (tmp_path / "hcv.yaml").write_text(
        "id: hcv\ntitle: HCV\nkind: screening\nrole: medical-assistant\n"
        "citation: {source: test}\n"
        f"applies_when: [{criterion_yaml}]\n"
        "requirements:\n  - id: hcv\n    label: HCV antibody\n    evidence:\n"
        f"      - {{observation: '{valueset_url}', label: HCV, lookback: ever}}\n")
    return tmp_path


def test_a_registered_criterion_type_is_loaded_checked_and_evaluated(
        tmp_path: Path, pregnancy_criterion: type[Criterion]) -> None:
    rules = load_ruleset(_folder_with(tmp_path, "{pregnant: 'https://example.org/vs/pregnancy'}",
                                      "https://example.org/vs/pregnancy"))
    assert isinstance(rules.get("hcv").applies_when[0], pregnancy_criterion)
    pregnant = record(patient(age=30), {
        "resourceType": "Condition", "id": "c1", "code": coding("http://snomed.info/sct",
                                                                "77386006"),
        "subject": {"reference": "Patient/p1"}})
    assert evaluate(pregnant, rules, VISIT).findings[0].status == Status.DUE
    not_pregnant = record(patient(age=30))
    assert evaluate(not_pregnant, rules, VISIT).findings[0].status == Status.NOT_APPLICABLE
    unknown_sex = record(patient(age=30, sex=None))
    assert evaluate(unknown_sex, rules, VISIT).findings[0].status == Status.UNKNOWN


def test_a_new_criterion_types_value_set_is_checked_by_the_loader(
        tmp_path: Path, pregnancy_criterion: type[Criterion]) -> None:
    folder = _folder_with(tmp_path, "{pregnant: 'https://example.org/vs/missing'}",
                          "https://example.org/vs/pregnancy")
    with pytest.raises(RuleError, match=r"value set https://example\.org/vs/missing is not in"):
        load_ruleset(folder)


def test_an_unregistered_key_is_refused_by_name(tmp_path: Path) -> None:
    folder = _folder_with(tmp_path, "{pregnant: 'https://example.org/vs/pregnancy'}",
                          "https://example.org/vs/pregnancy")
    with pytest.raises(RuleError, match="a criterion needs exactly one of age, sex"):
        load_ruleset(folder)


def test_a_criterion_evaluates_against_the_context_alone() -> None:
    ctx = EvaluationContext(record(patient(age=50)), load_ruleset(
        Path(__file__).parent / "fixtures" / "engine_rules").valuesets, VISIT, Settings())
    assert AgeCriterion.model_validate({"age": {"min": 45, "max": 75}}).evaluate(ctx) == \
        Truth(True, "ages 45–75; patient is 50")
    assert MedicationCriterion.model_validate(
        {"medication": "http://example.org/fhir/ValueSet/ace-inhibitor"}).evaluate(ctx).value \
        is False
    smoker = ObservationCriterion.model_validate(
        {"observation": "http://example.org/fhir/ValueSet/smoking-status", "missing": "unknown"})
    assert smoker.evaluate(ctx).value is None
    assert AnyCriterion.model_validate({"any": [{"sex": "male"}, {"age": {"min": 40}}]}
                                       ).evaluate(ctx).value is True
