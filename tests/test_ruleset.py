"""The rule loader: a broken rule file fails with the file, the field and what was expected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from previsit.cli.app import app
from typer.testing import CliRunner

from previsit.errors import RuleError
from previsit.ruleset import default_rules_dir, load_ruleset

VS_URL = "https://example.org/fhir/ValueSet/fit"

GOOD = {
    "id": "fit-screening", "title": "FIT", "kind": "screening", "role": "medical-assistant",
    "citation": {"source": "USPSTF 2021"},
    "applies_when": [{"age": {"min": 45, "max": 75}}],
    "requirements": [{"id": "fit", "label": "FIT", "evidence": [
        {"observation": VS_URL, "label": "FIT", "lookback": "1y"}]}],
}


def _folder(tmp_path: Path, *rules: dict[str, object]) -> Path:
    (tmp_path / "valuesets").mkdir(parents=True, exist_ok=True)
    (tmp_path / "valuesets" / "fit.json").write_text(json.dumps({
        "resourceType": "ValueSet", "url": VS_URL, "title": "FIT",
        "compose": {"include": [{"system": "http://loinc.org",
                                 "concept": [{"code": "29771-3"}]}]}}))
    for rule in rules:
        (tmp_path / f"{rule['id']}.yaml").write_text(yaml.safe_dump(rule))
    return tmp_path


def test_good_folder_loads(tmp_path: Path) -> None:
    ruleset = load_ruleset(_folder(tmp_path, GOOD))
    assert [r.id for r in ruleset.active] == ["fit-screening"]
    assert VS_URL in ruleset.valuesets


def test_misspelt_field_names_file_and_field(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(GOOD))
    bad["requirements"][0]["evidence"][0]["lookbak"] = bad["requirements"][0]["evidence"][0].pop(
        "lookback")
    with pytest.raises(RuleError) as err:
        load_ruleset(_folder(tmp_path, bad))
    message = str(err.value)
    assert "fit-screening.yaml" in message
    assert "requirements[0].evidence[0].lookbak: unknown field" in message
    assert "requirements[0].evidence[0].lookback: required field is missing" in message


def test_bad_duration_says_what_is_expected(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(GOOD))
    bad["requirements"][0]["evidence"][0]["lookback"] = "one year"
    with pytest.raises(RuleError, match=r"lookback.*write a whole number followed by y, mo"):
        load_ruleset(_folder(tmp_path, bad))


def test_misspelt_criterion_key_in_nested_any(tmp_path: Path) -> None:
    bad = {**GOOD, "applies_when": [{"any": [{"sex": "female"}, {"condtion": VS_URL}]}]}
    with pytest.raises(RuleError, match="a criterion needs exactly one of age, sex"):
        load_ruleset(_folder(tmp_path, bad))


def test_unknown_value_set_is_named(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(GOOD))
    bad["requirements"][0]["evidence"][0]["observation"] = "https://example.org/ValueSet/nope"
    with pytest.raises(RuleError, match=r"value set https://example.org/ValueSet/nope is not in"):
        load_ruleset(_folder(tmp_path, bad))


def test_duplicate_ids_and_every_error_reported_together(tmp_path: Path) -> None:
    folder = _folder(tmp_path, GOOD)
    (folder / "copy.yaml").write_text(yaml.safe_dump(GOOD))
    (folder / "broken.yaml").write_text("id: [unclosed")
    with pytest.raises(RuleError) as err:
        load_ruleset(folder)
    message = str(err.value)
    # files load in name order: copy.yaml first, so fit-screening.yaml is the duplicate
    assert "fit-screening.yaml: id: 'fit-screening' is already used by" in message
    assert message.rstrip().endswith("copy.yaml")
    assert "broken.yaml: not valid YAML" in message


def test_disabling_rules_by_configuration(tmp_path: Path) -> None:
    other = {**GOOD, "id": "other"}
    ruleset = load_ruleset(_folder(tmp_path, GOOD, other), disabled=["other"])
    assert [r.id for r in ruleset.active] == ["fit-screening"]
    with pytest.raises(RuleError, match=r"disabled rules not found.*typo-rule"):
        load_ruleset(_folder(tmp_path, GOOD), disabled=["typo-rule"])


def test_extra_value_set_folder_replaces_by_url(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "rules", GOOD)
    fresh = tmp_path / "vsac"
    fresh.mkdir()
    (fresh / "fit-2026.json").write_text(json.dumps({
        "resourceType": "ValueSet", "url": VS_URL, "title": "FIT (fresh VSAC)",
        "expansion": {"contains": [{"system": "http://loinc.org", "code": "57905-2"}]}}))
    ruleset = load_ruleset(folder, extra_valuesets=[fresh])
    assert ruleset.valueset(VS_URL).codes == frozenset({("http://loinc.org", "57905-2")})


def test_renewal_rule_needs_renewal_block(tmp_path: Path) -> None:
    bad = {**GOOD, "id": "renew", "kind": "renewal", "requirements": []}
    with pytest.raises(RuleError, match="a renewal rule needs a renewal block"):
        load_ruleset(_folder(tmp_path, bad))


def test_shipped_library_loads_and_every_rule_cites_a_source() -> None:
    ruleset = load_ruleset(default_rules_dir())
    assert len(ruleset.rules) >= 26
    for rule in ruleset.rules:
        assert rule.citations and all(c.source for c in rule.citations), rule.id
        assert rule.differences, f"{rule.id}: document differences from the guideline/measure"


def test_cli_validate_names_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), folder)
    target = folder / "colorectal-cancer-screening.yaml"
    target.write_text(target.read_text().replace("applies_when:", "applies_wen:", 1))
    result = CliRunner().invoke(app, ["rules", "validate", str(folder)])
    assert result.exit_code == 4
    assert "colorectal-cancer-screening.yaml: applies_wen: unknown field" in result.output


def test_cli_validate_and_list_on_shipped_library() -> None:
    runner = CliRunner()
    validated = runner.invoke(app, ["rules", "validate"])
    assert validated.exit_code == 0, validated.output
    assert validated.output.startswith("ok: ")
    listed = runner.invoke(app, ["rules", "list"])
    assert "colorectal-cancer-screening" in listed.output
    assert "CMS130" in listed.output
