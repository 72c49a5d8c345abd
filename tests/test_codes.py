"""Value sets read from FHIR JSON, system aliases, concept labels and the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from previsit.codes import (
    LOINC,
    SNOMED,
    Coding,
    Concept,
    ValueSet,
    ValueSetRegistry,
    canonical_system,
    valueset_from_json,
)
from previsit.errors import ValueSetError

URL = "http://example.org/fhir/ValueSet/test"


def expansion(*contains: dict[str, Any], url: str = URL, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "expansion": {"contains": list(contains)},
            **extra}


def compose(*includes: dict[str, Any], url: str = URL, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "compose": {"include": list(includes)},
            **extra}


# --- reading ValueSet resources ------------------------------------------------------------


def test_expansion_reads_nested_contains_and_skips_abstract_groupers() -> None:
    vs = valueset_from_json(expansion(
        {"system": LOINC, "code": "4548-4", "display": "HbA1c"},
        {"abstract": True, "display": "Glucose tests", "contains": [
            {"system": LOINC, "code": "1558-6", "display": "Fasting glucose"},
            {"abstract": True, "contains": [{"system": SNOMED, "code": "271062006"}]},
        ]},
    ), source="a1c.json")
    assert vs.codes == {(LOINC, "4548-4"), (LOINC, "1558-6"), (SNOMED, "271062006")}
    assert vs.displays[(LOINC, "1558-6")] == "Fasting glucose"
    assert (SNOMED, "271062006") not in vs.displays
    assert vs.source == "a1c.json"


def test_expansion_is_preferred_over_compose() -> None:
    data = expansion({"system": LOINC, "code": "4548-4"})
    data["compose"] = {"include": [{"system": LOINC, "concept": [{"code": "1558-6"}]}]}
    assert valueset_from_json(data).codes == {(LOINC, "4548-4")}


def test_compose_include_concepts_are_read_when_there_is_no_expansion() -> None:
    vs = valueset_from_json(compose(
        {"system": LOINC, "concept": [{"code": "2823-3", "display": "Potassium"},
                                      {"code": "2160-0"}]},
        {"system": SNOMED, "concept": [{"code": "44054006"}]},
    ))
    assert vs.codes == {(LOINC, "2823-3"), (LOINC, "2160-0"), (SNOMED, "44054006")}
    assert vs.displays == {(LOINC, "2823-3"): "Potassium"}


def test_an_empty_expansion_falls_back_to_compose() -> None:
    data = compose({"system": LOINC, "concept": [{"code": "2823-3"}]})
    data["expansion"] = {"contains": []}
    assert valueset_from_json(data).codes == {(LOINC, "2823-3")}


def test_system_aliases_in_the_file_are_folded() -> None:
    vs = valueset_from_json(compose(
        {"system": "urn:oid:2.16.840.1.113883.6.1", "concept": [{"code": "2823-3"}]}))
    assert vs.codes == {(LOINC, "2823-3")}


@pytest.mark.parametrize("include", [
    {"system": SNOMED, "filter": [{"property": "concept", "op": "is-a", "value": "73211009"}]},
    {"valueSet": ["http://example.org/fhir/ValueSet/other"]},
])
def test_intensional_compose_is_refused_with_a_way_out(include: dict[str, Any]) -> None:
    with pytest.raises(ValueSetError) as caught:
        valueset_from_json(compose({"system": LOINC, "concept": [{"code": "2823-3"}]},
                                   include), source="rules/valuesets/x.json")
    message = str(caught.value)
    assert "rules/valuesets/x.json" in message
    assert URL in message
    assert "filters or nested value sets" in message
    assert "expansion" in message


@pytest.mark.parametrize("data", [
    {"resourceType": "ValueSet", "url": URL},
    {"resourceType": "ValueSet", "url": URL, "expansion": {"contains": []}},
    {"resourceType": "ValueSet", "url": URL, "compose": {"include": [{"system": LOINC}]}},
    expansion({"abstract": True, "display": "only a grouper"}),
])
def test_an_empty_value_set_is_refused(data: dict[str, Any]) -> None:
    # An empty set would silently switch a rule off.
    with pytest.raises(ValueSetError, match="has no codes"):
        valueset_from_json(data, source="empty.json")


def test_not_a_value_set_or_without_url_is_refused() -> None:
    with pytest.raises(ValueSetError, match="not a FHIR ValueSet"):
        valueset_from_json({"resourceType": "CodeSystem", "url": URL}, source="cs.json")
    with pytest.raises(ValueSetError, match="no canonical url"):
        valueset_from_json({"resourceType": "ValueSet",
                            "compose": {"include": [{"system": LOINC,
                                                     "concept": [{"code": "1"}]}]}})
    with pytest.raises(ValueSetError, match="not a FHIR ValueSet"):
        valueset_from_json(["not", "a", "dict"])


def test_title_falls_back_to_name_then_url() -> None:
    item = {"system": LOINC, "code": "2823-3"}
    assert valueset_from_json(expansion(item, title="Potassium", name="K")).title == "Potassium"
    assert valueset_from_json(expansion(item, name="PotassiumLab")).title == "PotassiumLab"
    assert valueset_from_json(expansion(item)).title == URL


# --- matching --------------------------------------------------------------------------------


def test_matches_folds_the_loinc_oid_on_the_coding_side() -> None:
    vs = valueset_from_json(expansion({"system": LOINC, "code": "4548-4"}))
    concept = Concept.from_json({"coding": [
        {"system": "urn:oid:2.16.840.1.113883.6.1", "code": "4548-4"}]})
    assert concept.codings[0].system == "http://loinc.org"
    assert vs.matches(concept)
    assert Coding(LOINC, "4548-4") in vs


def test_matches_needs_the_same_system_and_code() -> None:
    vs = valueset_from_json(expansion({"system": LOINC, "code": "4548-4"}))
    assert not vs.matches(Concept.from_json({"coding": [{"system": SNOMED, "code": "4548-4"}]}))
    assert not vs.matches(Concept.from_json({"coding": [{"system": LOINC, "code": "4549-2"}]}))
    assert not vs.matches(Concept.from_json({"text": "HbA1c"}))
    assert not vs.matches(Concept())
    assert "4548-4" not in vs  # only Codings are members


def test_any_coding_of_the_concept_may_match() -> None:
    vs = valueset_from_json(expansion({"system": LOINC, "code": "4548-4"}))
    concept = Concept.from_json({"coding": [
        {"system": "http://acme.example/lab", "code": "A1C"},
        {"system": LOINC, "code": "4548-4"}]})
    assert vs.matches(concept)


def test_canonical_system_folds_aliases_and_keeps_the_rest() -> None:
    assert canonical_system("urn:oid:2.16.840.1.113883.6.1") == LOINC
    assert canonical_system("http://loinc.org/") == LOINC
    assert canonical_system("urn:oid:2.16.840.1.113883.6.96") == SNOMED
    assert canonical_system("http://acme.example/lab") == "http://acme.example/lab"
    assert canonical_system(None) == ""


# --- Concept -------------------------------------------------------------------------------


def test_from_json_skips_codings_without_a_string_code() -> None:
    concept = Concept.from_json({"coding": [{"system": LOINC}, {"system": LOINC, "code": 42},
                                            "4548-4", {"system": LOINC, "code": "4548-4",
                                                       "display": 7}]})
    assert concept.codings == (Coding(LOINC, "4548-4", None),)


@pytest.mark.parametrize("value", ["4548-4", None, ["4548-4"], 12])
def test_from_json_of_a_non_object_is_an_empty_concept(value: object) -> None:
    assert Concept.from_json(value) == Concept()


@pytest.mark.parametrize(("data", "label"), [
    ({"text": "Hemoglobin A1c", "coding": [{"system": LOINC, "code": "4548-4",
                                            "display": "HbA1c"}]}, "Hemoglobin A1c"),
    ({"coding": [{"system": LOINC, "code": "4548-4"},
                 {"system": SNOMED, "code": "1", "display": "Second display"}]},
     "Second display"),
    ({"coding": [{"system": LOINC, "code": "4548-4"}, {"system": SNOMED, "code": "1"}]},
     "4548-4"),
    ({"text": ""}, "(uncoded)"),
    ({}, "(uncoded)"),
])
def test_label_falls_back_from_text_to_display_to_code(data: dict[str, Any],
                                                        label: str) -> None:
    assert Concept.from_json(data).label() == label


def test_words_are_lower_case_text_and_displays() -> None:
    concept = Concept.from_json({"text": "Zestril", "coding": [
        {"system": "x", "code": "1", "display": "Lisinopril 10 MG Oral Tablet"}]})
    assert concept.words() == "zestril lisinopril 10 mg oral tablet"


# --- registry --------------------------------------------------------------------------------


def write(folder: Path, name: str, data: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def test_a_later_folder_overrides_the_same_url(tmp_path: Path) -> None:
    shipped, clinic = tmp_path / "shipped", tmp_path / "clinic"
    write(shipped, "k.json", expansion({"system": LOINC, "code": "2823-3"}, title="Shipped"))
    write(shipped, "other.json", expansion({"system": LOINC, "code": "1"},
                                           url="http://example.org/fhir/ValueSet/other"))
    write(clinic, "fresh.json", expansion({"system": LOINC, "code": "6298-4"}, title="Fresh"))
    registry = ValueSetRegistry()
    assert len(registry.load_folder(shipped)) == 2
    registry.load_folder(clinic)
    assert len(registry) == 2
    vs = registry.get(URL)
    assert vs.title == "Fresh"
    assert vs.codes == {(LOINC, "6298-4")}
    assert vs.source.endswith("fresh.json")
    assert "http://example.org/fhir/ValueSet/other" in registry
    assert {v.url for v in registry} == {URL, "http://example.org/fhir/ValueSet/other"}


def test_registry_from_an_iterable_and_unknown_url() -> None:
    vs = ValueSet(url=URL, title="T", codes=frozenset({(LOINC, "1")}))
    registry = ValueSetRegistry([vs])
    assert registry.get(URL) is vs
    with pytest.raises(ValueSetError, match=r"no value set with url http://nowhere\.example/vs"):
        registry.get("http://nowhere.example/vs")


@pytest.mark.parametrize("text", [
    "{not json",
    '{"resourceType": "ValueSet", "version": ' + "9" * 5000 + "}",  # a ValueError, not a
    "[" * 100_000 + "]" * 100_000,                                  # JSONDecodeError
])
def test_load_folder_names_the_file_with_bad_json(tmp_path: Path, text: str) -> None:
    (tmp_path / "broken.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueSetError, match=r"broken\.json: cannot read JSON: not valid JSON"):
        ValueSetRegistry().load_folder(tmp_path)


def test_load_folder_names_the_file_with_an_unusable_set(tmp_path: Path) -> None:
    write(tmp_path, "filtered.json", compose({"system": SNOMED, "filter": [{}]}))
    with pytest.raises(ValueSetError, match=r"filtered\.json: .*filters or nested"):
        ValueSetRegistry().load_folder(tmp_path)


def test_concepts_from_the_same_json_are_made_once_and_shared() -> None:
    height = {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.1", "code": "8302-2",
                          "display": "Body Height"}], "text": "Body Height"}
    first = Concept.from_json(height)
    again = Concept.from_json(json.loads(json.dumps(height)))
    assert again is first
    assert first == Concept((Coding("http://loinc.org", "8302-2", "Body Height"),),
                            "Body Height")
    # another display is another concept
    assert Concept.from_json({**height, "text": "Height"}).text == "Height"
    assert Concept.from_json({"coding": []}) == Concept.from_json({}) == Concept()


@pytest.mark.parametrize("value,expected", [
    # fields that are not strings are read as before (a code that is not a string: no
    # coding; a display or text that is not one: none), and not shared
    ({"coding": [{"system": "http://loinc.org", "code": 8302}], "text": "h"},
     Concept((), "h")),
    ({"coding": [{"system": "http://loinc.org", "code": "1", "display": 2}], "text": 3},
     Concept((Coding("http://loinc.org", "1", None),), None)),
    ({"coding": [{"code": "1"}, "junk", {"code": "2", "system": None}]},
     Concept((Coding("", "1"), Coding("", "2")))),
    ({"coding": {"code": "1"}}, Concept()),
    ("not an object", Concept()),
])
def test_concepts_of_odd_json(value: Any, expected: Concept) -> None:
    assert Concept.from_json(value) == expected
    assert Concept.from_json(value) == expected
