"""Pure evaluation: PatientRecord + RuleSet + visit → VisitPlan. No I/O, no clock.

Statuses (see plan.Status): a requirement with no qualifying evidence on record is
`due`; one whose evidence ran out on or before the visit date is `overdue`; one that runs
out within the due-soon window after the visit is `due-soon` (do it now rather than
bring the patient back); otherwise `satisfied`. Evidence dated d with look-back L is good
through the day before d + L: a 1-year test done 364 days before the visit still counts,
one done 365 days before does not. Criteria with a look-back (a BMI in the last 2 years,
an exclusion in the last year) use the same convention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Generic, TypeVar

from previsit.codes import Concept, ValueSet
from previsit.intervals import Duration, age_on, influenza_season_start
from previsit.plan import Evidence as EvidenceRef
from previsit.plan import (
    Finding,
    FindingFlag,
    Kind,
    Order,
    OrderCategory,
    Role,
    Status,
    Visit,
    VisitPlan,
)
from previsit.record import Immunization, MedicationOrder, Observation, PatientRecord, Procedure
from previsit.ruleset import (
    AgeCriterion,
    AllCriterion,
    AnyCriterion,
    ConditionCriterion,
    Criterion,
    Evidence,
    MedicationCriterion,
    NotCriterion,
    ObservationCriterion,
    ProcedureCriterion,
    Requirement,
    Rule,
    RuleSet,
    ServiceRequestCriterion,
    SexCriterion,
)

FOREVER = date.max
_DONE_OBSERVATION = frozenset({"final", "amended", "corrected"})
# An order that stands or was carried out (QI-Core "isInterventionOrder": status active or
# completed, intent order); drafts, proposals (ours included) and revoked orders do not.
_ORDER_STATUSES = frozenset({"active", "completed"})
_ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order",
                            "instance-order"})


@dataclass(frozen=True)
class Settings:
    """What a clinic may tune without touching rules (config: [planning])."""

    due_soon: Duration = Duration(60, "d")
    renewal_horizon: Duration | None = None  # overrides the renewal rule's horizon
    season_start_month: int = 8  # influenza seasons start in August (CDC)


@dataclass
class _Truth:
    """Three-valued result of a criterion, with what decided it."""

    value: bool | None
    reason: str = ""
    evidence: list[EvidenceRef] = field(default_factory=list)


def _join(separator: str, parts: Iterable[_Truth]) -> str:
    """The parts' reasons as one clause, each said once: two alternatives with the same
    label (warfarin by clinical-drug set or by ingredient) both read "not on warfarin"."""
    return separator.join(dict.fromkeys(p.reason for p in parts if p.reason))


def fmt(day: date | None) -> str:
    return day.isoformat() if day else "an unknown date"


T = TypeVar("T")


class _CodeIndex(Generic[T]):
    """Items by (system, code), so a value-set lookup is a set intersection instead of a
    scan of every result (a real record holds thousands; bench/ measures the difference).
    Lookups return items in their original order."""

    def __init__(self, items: Sequence[T], concept: Callable[[T], Concept]) -> None:
        self._items = items
        self._positions: dict[tuple[str, str], list[int]] = {}
        for position, item in enumerate(items):
            for coding in concept(item).codings:
                self._positions.setdefault(coding.key(), []).append(position)
        self._cache: dict[str, list[T]] = {}

    def matching(self, vs: ValueSet) -> list[T]:
        found = self._cache.get(vs.url)
        if found is None:
            keys = self._positions.keys()
            common = (keys & vs.codes) if len(keys) < len(vs.codes) else \
                [k for k in vs.codes if k in self._positions]
            positions = sorted({p for key in common for p in self._positions[key]})
            found = self._cache[vs.url] = [self._items[p] for p in positions]
        return found


class _Context:
    """One patient on one visit date: the evaluation of criteria and evidence."""

    def __init__(self, record: PatientRecord, ruleset: RuleSet, visit_day: date,
                 settings: Settings) -> None:
        self.record = record
        self.ruleset = ruleset
        self.day = visit_day
        self.settings = settings
        birth = record.patient.birth_date
        self.age = age_on(birth, visit_day) if birth else None
        self.observations = _CodeIndex(record.observations, lambda o: o.code)
        self.procedures = _CodeIndex(record.procedures, lambda p: p.code)
        self.conditions = _CodeIndex(record.conditions, lambda c: c.code)
        self.immunizations = _CodeIndex(record.immunizations, lambda i: i.vaccine)
        self.service_requests = _CodeIndex(
            [r for r in record.requests if r.resource_type == "ServiceRequest"],
            lambda r: r.code)

    def vs(self, url: str) -> ValueSet:
        return self.ruleset.valueset(url)

    # --- criteria -----------------------------------------------------------------

    def criterion(self, c: Criterion) -> _Truth:
        if isinstance(c, AgeCriterion):
            wanted = f"ages {c.age.describe()}"
            if self.age is None:
                return _Truth(None, f"no birth date on record, so cannot tell whether {wanted} "
                                    "applies")
            ok = c.age.contains(self.age)
            return _Truth(ok, f"{wanted}; patient is {self.age}")
        if isinstance(c, SexCriterion):
            sex = self.record.patient.sex
            if sex not in ("female", "male"):
                return _Truth(None, f"sex is {'not recorded' if not sex else repr(sex)}, so "
                                    f"cannot tell whether this {c.sex}-specific rule applies")
            return _Truth(sex == c.sex, f"{c.sex} patients; patient is {sex}")
        if isinstance(c, ConditionCriterion):
            return self._condition(c)
        if isinstance(c, ProcedureCriterion):
            vs = self.vs(c.procedure)
            since = c.lookback.before(self.day) if c.lookback else date.min
            hits = [p for p in self.procedures.matching(vs) if p.status == "completed"
                    and since < p.day <= self.day]
            label = c.label or vs.title
            if not hits:
                return _Truth(False, f"no {label} on record")
            last = max(hits, key=lambda p: p.day)
            return _Truth(True, f"{last.code.label()} on {fmt(last.day)}",
                          [EvidenceRef(last.ref, last.day, f"{last.code.label()}", "reason")])
        if isinstance(c, ServiceRequestCriterion):
            return self._service_request(c)
        if isinstance(c, MedicationCriterion):
            return self._medication(c)
        if isinstance(c, ObservationCriterion):
            return self._observation_criterion(c)
        if isinstance(c, AllCriterion):
            return self._all([self.criterion(x) for x in c.all])
        if isinstance(c, AnyCriterion):
            return self._any([self.criterion(x) for x in c.any])
        if isinstance(c, NotCriterion):
            inner = self.criterion(c.not_)
            return _Truth(None if inner.value is None else not inner.value, inner.reason, [])
        raise TypeError(f"unknown criterion {c!r}")

    @staticmethod
    def _all(parts: Sequence[_Truth]) -> _Truth:
        false = [p for p in parts if p.value is False]
        if false:
            return _Truth(False, false[0].reason)
        unknown = [p for p in parts if p.value is None]
        if unknown:
            return _Truth(None, _join("; ", unknown))
        return _Truth(True, _join("; ", parts), [e for p in parts for e in p.evidence])

    @staticmethod
    def _any(parts: Sequence[_Truth]) -> _Truth:
        true = [p for p in parts if p.value is True]
        if true:
            return _Truth(True, true[0].reason, true[0].evidence)
        unknown = [p for p in parts if p.value is None]
        if unknown:
            return _Truth(None, _join("; ", unknown))
        return _Truth(False, _join(" and ", parts))

    def _condition(self, c: ConditionCriterion) -> _Truth:
        vs = self.vs(c.condition)
        since = c.lookback.before(self.day) if c.lookback else date.min
        hits = []
        for cond in self.conditions.matching(vs):
            if cond.refuted:
                continue
            first = cond.first_known
            if first and first > self.day:
                continue
            if c.status == "active" and not (cond.active or
                                             (cond.abatement and cond.abatement > self.day)):
                continue
            if c.lookback:
                # ever-recorded within a window: the condition's time must touch the window.
                # A resolved/inactive condition without an abatement date ended, as far as
                # we know, when it was recorded (an old Z51.5 palliative-care diagnosis must
                # not exclude a patient forever).
                end = cond.abatement or (self.day if cond.active
                                         else cond.first_known or self.day)
                if end <= since:
                    continue
            hits.append(cond)
        label = c.label or vs.title
        if not hits:
            return _Truth(False, f"no {'active ' if c.status == 'active' else ''}{label}")
        cond = hits[0]
        return _Truth(True, cond.code.label(),
                      [EvidenceRef(cond.ref, cond.first_known, cond.code.label(), "reason")])

    def _service_request(self, c: ServiceRequestCriterion) -> _Truth:
        vs = self.vs(c.service_request)
        since = c.lookback.before(self.day) if c.lookback else date.min
        hits = [r for r in self.service_requests.matching(vs)
                if r.status in _ORDER_STATUSES and r.intent in _ORDER_INTENTS
                and r.authored_on is not None and since < r.authored_on <= self.day]
        label = c.label or vs.title
        if not hits:
            return _Truth(False, f"no {label} on record")
        last = max(hits, key=lambda r: r.authored_on or date.min)
        text = f"{last.code.label()} ordered {fmt(last.authored_on)}"
        return _Truth(True, text, [EvidenceRef(last.ref, last.authored_on, text, "reason")])

    def medication_matches(self, c: MedicationCriterion, concept: Concept) -> bool:
        if self.vs(c.medication).matches(concept):
            return True
        if c.names:
            words = concept.words()
            return any(name in words for name in c.names)
        return False

    def _medication(self, c: MedicationCriterion) -> _Truth:
        label = c.label or self.vs(c.medication).title
        matching = [m for m in self.record.medications
                    if self.medication_matches(c, m.medication)]
        active = [m for m in matching if m.active
                  and (m.authored_on is None or m.authored_on <= self.day)]
        if not active:
            return _Truth(False, f"not on {label}")
        evidence = [EvidenceRef(m.ref, m.authored_on, m.medication.label(), "reason")
                    for m in active]
        if c.min_duration is None:
            return _Truth(True, f"on {active[0].medication.label()}", evidence)
        start = therapy_start(matching, self.day)
        if start is None:
            return _Truth(None, f"on {active[0].medication.label()} but no start date on "
                                f"record, so cannot tell whether for {c.min_duration.words()}")
        threshold = c.min_duration.before(self.day)
        if start <= threshold:
            return _Truth(True, f"on {active[0].medication.label()} since {fmt(start)}",
                          evidence)
        return _Truth(False, f"on {active[0].medication.label()} only since {fmt(start)} "
                             f"(less than {c.min_duration.words()})")

    def latest_observation(self, url: str, lookback: Duration | None) -> Observation | None:
        vs = self.vs(url)
        since = lookback.before(self.day) if lookback else date.min
        best: Observation | None = None
        for obs in self.observations.matching(vs):
            if obs.status in _DONE_OBSERVATION and since < obs.day <= self.day \
                    and (best is None or obs.day > best.day):
                best = obs
        return best

    def _observation_criterion(self, c: ObservationCriterion) -> _Truth:
        label = c.label or self.vs(c.observation).title
        obs = self.latest_observation(c.observation, c.lookback)
        missing_value: bool | None = None if c.missing == "unknown" else False
        if obs is None:
            within = f" in the last {c.lookback.words()}" if c.lookback else " on record"
            return _Truth(missing_value, f"no {label}{within}" +
                          (", so cannot decide" if missing_value is None else ""))
        ev = [EvidenceRef(obs.ref, obs.day, f"{label} {describe_value(obs)}", "reason")]
        if c.value is not None:
            if obs.value_quantity is None:
                return _Truth(missing_value, f"{label} on {fmt(obs.day)} has no numeric value")
            ok = c.value.contains(obs.value_quantity.value)
            return _Truth(ok, f"{label} {obs.value_quantity} on {fmt(obs.day)}", ev)
        if c.value_in is not None:
            if obs.value_concept is None:
                return _Truth(missing_value, f"{label} on {fmt(obs.day)} has no coded value")
            ok = self.vs(c.value_in).matches(obs.value_concept)
            return _Truth(ok, f"{label}: {obs.value_concept.label()} on {fmt(obs.day)}", ev)
        if c.value_date_within is not None:
            if obs.value_date is None:
                return _Truth(missing_value, f"{label} on {fmt(obs.day)} has no date value")
            ok = obs.value_date >= c.value_date_within.before(self.day)
            return _Truth(ok, f"{label} {fmt(obs.value_date)}", ev)
        return _Truth(True, f"{label} on {fmt(obs.day)}", ev)

    # --- evidence -----------------------------------------------------------------

    def _items(self, ev: Evidence) -> list[Observation | Procedure | Immunization]:
        vs = self.vs(ev.valueset)
        items: list[Any]
        if ev.resource_kind == "observation":
            items = [o for o in self.observations.matching(vs)
                     if o.status in _DONE_OBSERVATION]
        elif ev.resource_kind == "procedure":
            items = [p for p in self.procedures.matching(vs) if p.status == "completed"]
        else:
            # not-done and entered-in-error immunizations never satisfy a rule
            items = [i for i in self.immunizations.matching(vs) if i.status == "completed"]
        birth = self.record.patient.birth_date
        out = []
        for item in items:
            if item.day > self.day:
                continue
            if ev.min_age is not None and (birth is None or age_on(birth, item.day) < ev.min_age):
                continue
            out.append(item)
        out.sort(key=lambda i: i.day)
        return out

    def valid_through(self, ev: Evidence) -> tuple[date | None, list[Any], str]:
        """Until when this evidence satisfies the requirement (exclusive), what decided it,
        and how to say so. (None, [], ...) when there is nothing on record."""
        items = self._items(ev)
        distinct_days = sorted({i.day for i in items})
        if len(distinct_days) < ev.count:
            if items:
                return None, items[-1:], (f"{len(distinct_days)} of {ev.count} {ev.label} "
                                          f"doses on record")
            return None, [], f"no {ev.label} on record"
        last = items[-1]
        lookback = ev.lookback
        note = ""
        if ev.if_value and isinstance(last, Observation) and last.value_quantity is not None \
                and ev.if_value.value.contains(last.value_quantity.value):
            lookback = ev.if_value.lookback
            note = ev.if_value.note or f"while {ev.if_value.value.describe(ev.unit or '')}"
        if lookback == "ever":
            through = FOREVER
        elif lookback == "season":
            season = influenza_season_start(last.day, self.settings.season_start_month)
            through = date(season.year + 1, season.month, season.day)
        else:
            assert isinstance(lookback, Duration)
            through = lookback.after(last.day)
        described = f"{ev.label} {describe_value(last)}".rstrip() if isinstance(
            last, Observation) else ev.label
        if ev.count > 1:
            described = f"{ev.label} ({len(distinct_days)} doses, last"
            text = f"{described} {fmt(last.day)})"
        else:
            text = f"{described} on {fmt(last.day)}"
        period = ("every season" if lookback == "season" else "once" if lookback == "ever"
                  else f"every {lookback.words()}" if isinstance(lookback, Duration) else "")
        if note:
            period = f"{period} {note}"
        text = f"{text} ({period})" if period else text
        decided = items[-ev.count:] if ev.count > 1 else [last]
        for other in ev.with_:
            other_through, other_items, other_text = self.valid_through(other)
            if other_through is None:
                return None, decided + other_items, f"{text}, but {other_text}"
            through = min(through, other_through)
            decided += other_items
            text = f"{text} and {other_text}"
        return through, decided, text

    def requirement(self, req: Requirement) -> tuple[Status, date | None, str, list[Any],
                                                   list[FindingFlag]]:
        best: tuple[date, list[Any], str] | None = None
        partial: list[str] = []
        partial_items: list[Any] = []
        flags: list[FindingFlag] = []
        for ev in req.evidence:
            through, items, text = self.valid_through(ev)
            if through is None:
                if items:
                    partial.append(text)
                    partial_items += items
                continue
            if best is None or through > best[0]:
                best = (through, items, text)
            if ev.review_if and items and isinstance(items[-1], Observation):
                value = items[-1].value_quantity
                if value is not None and not ev.review_if.contains(value.value):
                    flags.append(FindingFlag.ABNORMAL)
        if best is None:
            labels = " or ".join(dict.fromkeys(e.label for e in req.evidence))
            text = "; ".join(partial) if partial else f"no {labels} on record"
            return Status.DUE, None, text, partial_items, flags
        through, items, text = best
        window = self.settings.due_soon
        if req.due_soon is not None and req.due_soon.after(self.day) < window.after(self.day):
            window = req.due_soon
        window_end = window.after(self.day)
        if through <= self.day:
            return Status.OVERDUE, through, f"last {text}; due since {fmt(through)}", items, \
                flags
        if through <= window_end:
            return Status.DUE_SOON, through, (f"last {text}; falls due {fmt(through)}, within "
                                              f"{window.words()} of the visit"), \
                items, flags
        due = "" if through == FOREVER else f"; next due {fmt(through)}"
        return Status.SATISFIED, through, f"{text}{due}", items, flags


# Orders of a chronic drug are renewed at least yearly; a longer gap between two orders
# means the drug was stopped and restarted, and therapy counts from the restart.
_MAX_RENEWAL_GAP = timedelta(days=400)


def therapy_start(orders: Iterable[MedicationOrder], day: date) -> date | None:
    """When the current, continuous course of a drug (class) began.

    Continuous use is read from the chain of orders ending at the latest one: refills and
    renewals appear as new orders with later dates; a gap of more than ~13 months breaks
    the chain. None when no order has a date.
    """
    dates = sorted({m.authored_on for m in orders if m.authored_on and m.authored_on <= day
                    and m.status not in ("entered-in-error", "cancelled", "draft")},
                   reverse=True)
    if not dates:
        return None
    start = dates[0]
    for earlier in dates[1:]:
        if start - earlier > _MAX_RENEWAL_GAP:
            break
        start = earlier
    return start


def describe_value(obs: Observation) -> str:
    if obs.value_quantity is not None:
        return str(obs.value_quantity)
    if obs.value_concept is not None:
        return obs.value_concept.label()
    return ""


def _order(rule: Rule, req: Requirement) -> Order | None:
    if req.order is None:
        return None
    spec = req.order
    return Order(system=spec.system, code=spec.code, display=spec.display,
                 category=OrderCategory(spec.category), role=spec.role or rule.role,
                 before_visit=spec.before_visit, lead_days=spec.lead_days)


def _citation(rule: Rule) -> str:
    return "; ".join(c.source for c in rule.citations)


def evaluate_rule(ctx: _Context, rule: Rule) -> Finding:
    base: dict[str, Any] = {"rule_id": rule.id, "title": rule.title, "kind": rule.kind,
                            "role": rule.role, "measure": rule.measure,
                            "citation": _citation(rule)}
    applies = ctx._all([ctx.criterion(c) for c in rule.applies_when])
    if applies.value is False:
        return Finding(status=Status.NOT_APPLICABLE,
                       explanation=f"not applicable: {applies.reason}",
                       **base)
    # An exclusion on record decides even when applicability cannot be (a known diabetic
    # with no BMI on record is excluded from diabetes screening, not "unknown").
    for exclusion in rule.excluded_when:
        result = ctx.criterion(exclusion.when)
        if result.value:
            what = f" ({result.reason})" if result.reason else ""
            return Finding(status=Status.EXCLUDED, explanation=f"excluded: {exclusion.reason}"
                           f"{what}", evidence=tuple(result.evidence), **base)
    if applies.value is None:
        return Finding(status=Status.UNKNOWN, explanation=applies.reason, **base)
    reasons = list(applies.evidence)
    statuses: list[Status] = []
    texts: list[str] = []
    results: list[EvidenceRef] = []
    orders: list[Order] = []
    flags: list[FindingFlag] = []
    due_dates: list[date] = []
    for req in rule.requirements:
        status, through, text, items, req_flags = ctx.requirement(req)
        statuses.append(status)
        flags += req_flags
        prefix = f"{req.label}: " if len(rule.requirements) > 1 else ""
        texts.append(prefix + text)
        for item in items:
            label = getattr(item, "code", None) or getattr(item, "vaccine", None)
            summary = label.label() if isinstance(label, Concept) else req.label
            if isinstance(item, Observation) and describe_value(item):
                summary = f"{summary} {describe_value(item)}"
            results.append(EvidenceRef(item.ref, item.day, summary, "result"))
        if status.actionable:
            order = _order(rule, req)
            # Two requirements may propose the same thing (Td/Tdap booster and the
            # once-in-a-lifetime Tdap): one order, the first requirement's.
            if order and all((o.system, o.code) != (order.system, order.code)
                             for o in orders):
                orders.append(order)
        if through and through != FOREVER:
            due_dates.append(through)
    status = max(statuses, key=lambda s: s.severity)
    if rule.role == Role.PHYSICIAN and status.actionable:
        flags.append(FindingFlag.PHYSICIAN_REVIEW)
    if FindingFlag.ABNORMAL in flags:
        flags.append(FindingFlag.PHYSICIAN_REVIEW)
    if status.actionable and rule.flags:
        # What the rule declares (shared decision-making for lung screening) matters when
        # the test is proposed; a clinician leads that conversation.
        flags += [FindingFlag.PHYSICIAN_REVIEW, *map(FindingFlag, rule.flags)]
    return Finding(status=status, explanation="; ".join(texts),
                   evidence=tuple(reasons + results), orders=tuple(orders),
                   due_date=min(due_dates) if due_dates else None,
                   flags=tuple(dict.fromkeys(flags)), **base)


# --- renewals ------------------------------------------------------------------------------


def run_out_date(order: MedicationOrder) -> date | None:
    """When an active prescription runs out: the earliest of its validity end and
    authoredOn + supply × (repeats + 1). None when neither can be computed."""
    candidates = []
    if order.validity_end:
        candidates.append(order.validity_end)
    if order.authored_on and order.supply_days is not None:
        fills = (order.repeats or 0) + 1
        candidates.append(Duration(order.supply_days * fills, "d").after(order.authored_on))
    return min(candidates) if candidates else None


def _current_orders(record: PatientRecord, day: date) -> list[MedicationOrder]:
    """Active orders, one per drug (the latest authored), on or before the visit."""
    latest: dict[Any, MedicationOrder] = {}
    for med in record.medications:
        if not med.active or (med.authored_on and med.authored_on > day):
            continue
        codes = med.medication.codings
        key: Any = (frozenset(c.key() for c in codes) if codes
                    else med.medication.label().lower())
        held = latest.get(key)
        if held is None or (med.authored_on or date.min) > (held.authored_on or date.min):
            latest[key] = med
    return sorted(latest.values(), key=lambda m: m.medication.label().lower())


def evaluate_renewals(ctx: _Context, rule: Rule, findings: Iterable[Finding]) -> list[Finding]:
    assert rule.renewal is not None
    spec = rule.renewal
    horizon = ctx.settings.renewal_horizon or spec.horizon
    base: dict[str, Any] = {"rule_id": rule.id, "title": rule.title, "kind": Kind.RENEWAL,
                            "measure": rule.measure, "citation": _citation(rule)}
    controlled = MedicationCriterion(medication=spec.controlled, names=spec.controlled_names)
    # Labs that monitor a drug name the drug's order as a reason: link them to the renewal.
    monitoring: dict[str, list[str]] = {}
    for f in findings:
        if f.kind == Kind.LAB and f.status.actionable:
            for ev in f.evidence:
                if ev.purpose == "reason" and ev.reference.startswith("MedicationRequest/"):
                    monitoring.setdefault(ev.reference, []).extend(o.display for o in f.orders)
    orders = _current_orders(ctx.record, ctx.day)
    if not orders:
        return [Finding(status=Status.NOT_APPLICABLE, role=rule.role,
                        explanation="no active prescriptions on record", **base)]
    out = []
    limit = horizon.after(ctx.day)
    for med in orders:
        name = med.medication.label()
        reason = (EvidenceRef(med.ref, med.authored_on, name, "reason"),)
        is_controlled = ctx.medication_matches(controlled, med.medication)
        role = spec.controlled_role if is_controlled else rule.role
        runs_out = run_out_date(med)
        common: dict[str, Any] = {**base, "title": f"Renew {name}", "role": role,
                                  "evidence": reason, "medication_ref": med.ref}
        if runs_out is None:
            out.append(Finding(status=Status.UNKNOWN, explanation=(
                f"{name}: cannot tell when it runs out (no validity period, or no "
                "authored date and supply duration)"), **common))
            continue
        if runs_out >= limit:
            out.append(Finding(status=Status.SATISFIED, due_date=runs_out, explanation=(
                f"{name}: runs until {fmt(runs_out)}, beyond {horizon.words()} after the visit"),
                **common))
            continue
        status = Status.OVERDUE if runs_out <= ctx.day else Status.DUE
        verb = "ran out" if runs_out <= ctx.day else "runs out"
        text = f"{name}: {verb} {fmt(runs_out)}"
        if is_controlled:
            text += "; controlled substance: physician review, not a 12-month renewal"
        else:
            text += f"; renew for {spec.renew_for.words()}"
        labs = monitoring.get(med.ref)
        if labs:
            text += f"; renew after the {', '.join(dict.fromkeys(labs))} drawn before the visit"
        order_list: tuple[Order, ...] = ()
        code = next(iter(med.medication.codings), None)
        if not is_controlled:
            order_list = (Order(system=code.system if code else "", code=code.code if code else "",
                                display=name, category=OrderCategory.MEDICATION, role=role,
                                before_visit=False),)
        # Only a renewal that is due asks the physician for anything: a controlled
        # prescription that runs beyond the horizon (or whose run-out is unknown) is not
        # flagged.
        flags = (FindingFlag.CONTROLLED_SUBSTANCE, FindingFlag.PHYSICIAN_REVIEW) \
            if is_controlled else ()
        out.append(Finding(status=status, due_date=runs_out, explanation=text,
                           orders=order_list, flags=flags, **common))
    return out


def evaluate(record: PatientRecord, ruleset: RuleSet, visit: Visit | date | datetime,
             settings: Settings | None = None) -> VisitPlan:
    """Every active rule's finding for one visit. Pure: the same input gives the same plan."""
    settings = settings or Settings()
    if isinstance(visit, datetime):
        visit = Visit(appointment_id="", patient_id=record.patient.id, start=visit,
                      status="booked")
    elif isinstance(visit, date):
        visit = Visit(appointment_id="", patient_id=record.patient.id,
                      start=datetime.combine(visit, time(0)), status="booked")
    day = visit.day
    if day is None:
        raise ValueError(f"appointment {visit.appointment_id} has no start date")
    ctx = _Context(record, ruleset, day, settings)
    findings: list[Finding] = []
    renewal_rules = []
    for rule in ruleset.active:
        if rule.kind == Kind.RENEWAL:
            renewal_rules.append(rule)
        else:
            findings.append(evaluate_rule(ctx, rule))
    for rule in renewal_rules:
        findings.extend(evaluate_renewals(ctx, rule, findings))
    patient = record.patient
    return VisitPlan(visit=visit, patient_name=patient.name, patient_age=ctx.age,
                     patient_sex=patient.sex, patient_mrn=patient.mrn,
                     findings=tuple(findings),
                     issues=tuple(f"{i.resource}: {i.message}" for i in record.issues))
