"""The rule library as data: the YAML schema, the loader and its error messages.

A rule says who it applies to (`applies_when`), what excludes them (`excluded_when`),
what satisfies it and for how long (`requirements`, each a list of alternative
`evidence` with its own look-back) and what to order when it is not satisfied. Renewal
rules (`kind: renewal`) carry a `renewal` block instead of requirements. The schema is
checked strictly (unknown fields are errors) so a typo names its file and field instead
of silently switching a rule off. See rules/README.md for the authoring guide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from previsit.codes import ValueSet, ValueSetRegistry
from previsit.criteria import Criterion, parse_criteria, parse_criterion
from previsit.errors import RuleError, ValueSetError
from previsit.files import read_text
from previsit.intervals import Duration
from previsit.plan import Kind, Role
from previsit.ruleschema import (
    DurationField,
    LookbackField,
    OptionalDuration,
    OptionalValueSetUrl,
    Range,
    Strict,
    ValueSetUrl,
    valueset_urls,
)
from previsit.shipped import shipped_dir


class Exclusion(Strict):
    reason: str
    when: Criterion

    _c = field_validator("when", mode="before")(parse_criterion)


# --- requirements ------------------------------------------------------------------------


class ValueLookback(Strict):
    """A shorter look-back when the latest result is outside the goal (HbA1c ≥ 7 %)."""

    value: Range
    lookback: DurationField
    note: str | None = None


class OrderSpec(Strict):
    system: str
    code: str
    display: str
    category: Literal["laboratory", "imaging", "procedure", "immunization", "counselling"]
    # A pre-visit lab: ordered ahead and drawn between the day it is ordered and
    # visit - lead_days, so that the result (the lab's turnaround) is in at the visit.
    before_visit: bool = False
    lead_days: int = Field(default=0, ge=0)
    # A point-of-care or same-day lab (INR): drawn no earlier than visit - draw_within_days,
    # however far ahead it is ordered.
    draw_within_days: int | None = Field(default=None, ge=0)
    role: Role | None = None  # who does it, when not the rule's role

    @model_validator(mode="after")
    def _window(self) -> OrderSpec:
        if self.draw_within_days is not None and self.draw_within_days < self.lead_days:
            raise ValueError("draw_within_days must be at least lead_days")
        return self


class PositiveSpec(Strict):
    """A positive screening result does not satisfy: it needs a follow-up test (a positive
    FIT needs a colonoscopy, USMSTF 2017), which the physician orders."""

    # A result is positive when its value is in `values`, an interpretation flag is in
    # `interpretations`, or its text reads positive ("POSITIVE", "Detected", "+").
    values: ValueSetUrl = "https://previsit.dev/fhir/ValueSet/positive-result"
    interpretations: ValueSetUrl = "https://previsit.dev/fhir/ValueSet/positive-interpretation"
    follow_up: ValueSetUrl  # a completed Procedure in this set, on or after the result
    label: str  # how the sheet names the follow-up ("colonoscopy")
    order: OrderSpec


class EvidenceSpec(Strict):
    """One way of satisfying a requirement: a kind of resource in a value set, recently."""

    observation: OptionalValueSetUrl = None
    procedure: OptionalValueSetUrl = None
    immunization: OptionalValueSetUrl = None
    label: str
    lookback: LookbackField
    count: int = 1  # distinct dates needed (vaccine series)
    min_age: float | None = None  # age on the date of the evidence (HPV from 30)
    if_value: ValueLookback | None = None
    review_if: Range | None = None  # the latest value outside this range: physician review
    unit: str | None = None
    # Observations count only with a value (CMS122, CMS130: "result is not null"); an
    # imaging study filed as an Observation without one says `value_required: false`.
    value_required: bool = True
    # Series doses closer than this to the dose before (less the ACIP 4-day grace) are
    # invalid and do not count (CDC General Best Practice Guidelines, Table 3-1).
    min_interval: OptionalDuration = None
    if_positive: PositiveSpec | None = None
    with_: tuple[EvidenceSpec, ...] = Field(default=(), alias="with")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> EvidenceSpec:
        given = [k for k in ("observation", "procedure", "immunization") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("evidence needs exactly one of observation, procedure, immunization")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        return self

    @property
    def resource_kind(self) -> str:
        return next(k for k in ("observation", "procedure", "immunization") if getattr(self, k))

    @property
    def valueset(self) -> str:
        return str(getattr(self, self.resource_kind))


class ShorterInterval(Strict):
    when: Criterion
    min_interval: DurationField

    _c = field_validator("when", mode="before")(parse_criterion)


class DoseInterval(Strict):
    """The next dose is allowed only this long after the last dose in the set (ACIP
    minimum intervals): before that the requirement is due-soon with the date, no order."""

    after: ValueSetUrl  # immunizations
    label: str  # how the explanation names that dose ("PCV13")
    min_interval: DurationField
    shorter: ShorterInterval | None = None  # e.g. 8 weeks when immunocompromised


class Requirement(Strict):
    id: str
    label: str
    evidence: tuple[EvidenceSpec, ...] = Field(min_length=1)
    order: OrderSpec | None = None
    # A narrower due-soon window for short intervals (INR every 4 weeks): with the clinic's
    # 60-day default a 4-week test could never be satisfied. The narrower of this and the
    # clinic's window applies.
    due_soon: OptionalDuration = None
    min_intervals: tuple[DoseInterval, ...] = ()
    # Only offered in the influenza season (from Settings.season_start_month through
    # season_last_month): out of season the requirement is due-soon from the next start.
    in_season: bool = False


class RenewalSpec(Strict):
    horizon: DurationField = Duration(90, "d")
    renew_for: DurationField = Duration(12, "mo")
    controlled: ValueSetUrl  # controlled substances (grouped by DEA schedule)
    controlled_names: tuple[str, ...] = ()
    controlled_role: Role = Role.PHYSICIAN
    # High-risk medicines (grouped by category): renewed by the physician even when their
    # monitoring is current, never under a protocol.
    high_risk: OptionalValueSetUrl = None
    high_risk_names: tuple[str, ...] = ()
    high_risk_role: Role = Role.PHYSICIAN


class Citation(Strict):
    source: str
    url: str | None = None


# Flags a rule may declare for its findings (the engine adds the others itself:
# physician-review, abnormal, controlled-substance). The sheets know each by name.
RuleFlag = Literal["shared-decision"]


class Rule(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    kind: Kind
    role: Role
    citation: Citation | tuple[Citation, ...]
    measure: str | None = None
    differences: str | None = None  # deliberate differences from the measure, for auditors
    applies_when: tuple[Criterion, ...] = ()
    excluded_when: tuple[Exclusion, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    renewal: RenewalSpec | None = None
    # Attached (with physician-review) to the finding when it is due, overdue or due-soon.
    flags: tuple[RuleFlag, ...] = ()
    enabled: bool = True

    _c = field_validator("applies_when", mode="before")(lambda v: parse_criteria(v))

    @model_validator(mode="after")
    def _shape(self) -> Rule:
        if self.kind == Kind.RENEWAL:
            if self.renewal is None:
                raise ValueError("a renewal rule needs a renewal block")
            if self.flags:
                raise ValueError("a renewal rule cannot declare flags (controlled substances "
                                 "are flagged by the renewal block)")
        elif not self.requirements:
            raise ValueError(f"a {self.kind.value} rule needs at least one requirement")
        return self

    @property
    def citations(self) -> tuple[Citation, ...]:
        return self.citation if isinstance(self.citation, tuple) else (self.citation,)

    def valueset_urls(self) -> Iterator[str]:
        return valueset_urls(self)


for _model in (Exclusion, EvidenceSpec, ShorterInterval, Rule):
    _model.model_rebuild()


# --- loading -----------------------------------------------------------------------------


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-wrap") or \
                str(part).startswith(("function-", "tagged-union", "union[")) or \
                part in ("Duration", "literal['ever','season']"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _explain(path: Path, exc: ValidationError) -> RuleError:
    lines = []
    seen = set()
    for err in exc.errors():
        loc = _format_loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see rules/README.md for the fields)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        if (loc, msg) in seen:
            continue
        seen.add((loc, msg))
        lines.append(f"{path}: {loc}: {msg}")
    return RuleError("\n".join(lines))


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    valuesets: ValueSetRegistry
    sources: tuple[str, ...] = ()  # folders the rules and value sets came from
    disabled: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # rule id -> file

    def get(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    @property
    def active(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled and r.id not in self.disabled)

    def valueset(self, url: str) -> ValueSet:
        return self.valuesets.get(url)

    def describe(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "rules": [r.id for r in self.active],
                "disabled": sorted({*self.disabled, *(r.id for r in self.rules if not r.enabled)})}


def default_rules_dir() -> Path:
    """The rule library shipped with previsit (package data in a wheel, rules/ in a checkout)."""
    return shipped_dir("rules")


def load_rule_file(path: Path) -> Rule:
    text = read_text(path, RuleError, "the rule file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RuleError(f"{path}: a rule file holds one mapping (id:, title:, kind:, ...)")
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, exc) from None


def load_ruleset(rules_dir: Path | None = None, *, extra_valuesets: Iterable[Path] = (),
                 disabled: Iterable[str] = ()) -> RuleSet:
    """Load every *.yaml rule in a folder and the ValueSets in its valuesets/ subfolder.

    `extra_valuesets` are folders of ValueSet JSON (fresh VSAC expansions, say) that
    replace the shipped ones with the same canonical URL. Every problem in every file is
    collected and raised together, so one run of `previsit rules validate` shows them all.
    """
    folder = rules_dir or default_rules_dir()
    if not folder.is_dir():
        raise RuleError(f"{folder}: rule folder does not exist")
    errors: list[str] = []
    registry = ValueSetRegistry()
    for vs_folder in (folder / "valuesets", *extra_valuesets):
        if vs_folder.is_dir():
            try:
                registry.load_folder(vs_folder)
            except ValueSetError as exc:
                errors.append(str(exc))
        elif vs_folder != folder / "valuesets":
            errors.append(f"{vs_folder}: value-set folder does not exist")
    rules: list[Rule] = []
    files: dict[str, str] = {}
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not paths:
        errors.append(f"{folder}: no rule files (*.yaml) found")
    for path in paths:
        try:
            rule = load_rule_file(path)
        except RuleError as exc:
            errors.append(str(exc))
            continue
        if rule.id in files:
            errors.append(f"{path}: id: {rule.id!r} is already used by {files[rule.id]}")
            continue
        files[rule.id] = str(path)
        for url in rule.valueset_urls():
            if url not in registry:
                errors.append(f"{path}: value set {url} is not in {folder / 'valuesets'} "
                              "(or any extra value-set folder)")
        rules.append(rule)
    disabled = tuple(disabled)
    unknown = [d for d in disabled if d not in files]
    if unknown and not errors:
        errors.append(f"disabled rules not found in {folder}: {', '.join(unknown)} "
                      f"(known: {', '.join(sorted(files))})")
    if errors:
        raise RuleError("\n".join(errors))
    return RuleSet(rules=tuple(rules), valuesets=registry,
                   sources=(str(folder), *map(str, extra_valuesets)), disabled=disabled,
                   files=files)
