"""Rule-level flags (`flags:` in a rule file): what the schema accepts and where the shipped
library uses them (lung cancer screening needs a shared decision before LDCT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import (
    SNOMED,
    finding,
    observation,
    patient,
    procedure,
    shipped_rules,
    tiny_rules,
)

from previsit.errors import RuleError
from previsit.plan import Status
from previsit.ruleset import load_ruleset

LUNG = "lung-cancer-screening"
SMOKER = [observation("72166-2", 10, value_code=(SNOMED, "449868002")),
          observation("8664-5", 10, 30, "{pack-years}")]


def _with_flags(folder: Path, flags: Any, **changes: Any) -> Path:
    tiny_rules(folder)
    rule = yaml.safe_load((folder / "fit.yaml").read_text())
    rule.update(flags=flags, **changes)
    (folder / "fit.yaml").write_text(yaml.safe_dump(rule))
    return folder


def test_shared_decision_is_a_valid_rule_flag(tmp_path: Path) -> None:
    rules = load_ruleset(_with_flags(tmp_path, ["shared-decision"]))
    assert rules.get("fit").flags == ("shared-decision",)


def test_an_unknown_flag_names_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"fit\.yaml: flags\[0\]: Input should be "
                                        r"'shared-decision'"):
        load_ruleset(_with_flags(tmp_path, ["shared-decison"]))


def test_flags_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"fit\.yaml: flags"):
        load_ruleset(_with_flags(tmp_path, "shared-decision"))


def test_a_renewal_rule_cannot_declare_flags(tmp_path: Path) -> None:
    folder = _with_flags(tmp_path, ["shared-decision"], kind="renewal", requirements=[],
                         renewal={"controlled": "https://example.org/fhir/ValueSet/fit"})
    with pytest.raises(RuleError, match="a renewal rule cannot declare flags"):
        load_ruleset(folder)


def test_only_lung_screening_declares_shared_decision() -> None:
    declared = {r.id: r.flags for r in shipped_rules().rules if r.flags}
    assert declared == {LUNG: ("shared-decision",)}


YEAR = 365  # 2025-12-01, one year before the visit (2026-12-01)


@pytest.mark.parametrize(("ldct_days_ago", "status", "flagged"), [
    (None, Status.DUE, True),
    (YEAR, Status.OVERDUE, True),  # LDCT exactly a year ago: ran out on the visit date
    (YEAR - 1, Status.DUE_SOON, True),
    (YEAR - 61, Status.SATISFIED, False),  # good beyond the 60-day due-soon window
])
def test_lung_screening_asks_for_a_shared_decision_when_proposed(
        ldct_days_ago: int | None, status: Status, flagged: bool) -> None:
    ldct = [procedure("16334891000119106", ldct_days_ago)] if ldct_days_ago is not None else []
    f = finding(LUNG, patient(60, "male"), *SMOKER, *ldct)
    assert f.status == status
    assert ("shared-decision" in f.flags) is flagged
    assert f.needs_physician is flagged
    assert f.flags == (("physician-review", "shared-decision") if flagged else ())


@pytest.mark.parametrize(("age", "days", "status"), [
    (50, 1, Status.NOT_APPLICABLE),  # 50 tomorrow
    (50, 0, Status.DUE),
])
def test_lung_flag_follows_applicability(age: int, days: int, status: Status) -> None:
    f = finding(LUNG, patient(age, "male", days=days), *SMOKER)
    assert f.status == status
    assert ("shared-decision" in f.flags) is (status == Status.DUE)


def test_excluded_lung_screening_is_not_flagged() -> None:
    hospice = observation("45755-6", 30, value_code=(SNOMED, "373066001"))
    f = finding(LUNG, patient(60, "male"), *SMOKER, hospice)
    assert (f.status, f.flags) == (Status.EXCLUDED, ())
