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

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from previsit.codes import Concept
from previsit.context import DONE_OBSERVATION, EvaluationContext, Settings, fmt
from previsit.criteria import all_of
from previsit.intervals import Duration, age_on, influenza_season_start
from previsit.plan import (
    EvidenceRef,
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
from previsit.ruleset import EvidenceSpec, Requirement, Rule, RuleSet

__all__ = ["EvaluationContext", "Settings", "evaluate", "evaluate_rule", "run_out_date"]

FOREVER = date.max


# --- requirements and their evidence ---------------------------------------------------

def _items(ctx: EvaluationContext, ev: EvidenceSpec
           ) -> list[Observation | Procedure | Immunization]:
    vs = ctx.vs(ev.valueset)
    items: list[Any]
    if ev.resource_kind == "observation":
        items = [o for o in ctx.observations.matching(vs)
                 if o.status in DONE_OBSERVATION]
    elif ev.resource_kind == "procedure":
        items = [p for p in ctx.procedures.matching(vs) if p.status == "completed"]
    else:
        # not-done and entered-in-error immunizations never satisfy a rule
        items = [i for i in ctx.immunizations.matching(vs) if i.status == "completed"]
    birth = ctx.record.patient.birth_date
    out = []
    for item in items:
        if item.day > ctx.day:
            continue
        if ev.min_age is not None and (birth is None or age_on(birth, item.day) < ev.min_age):
            continue
        out.append(item)
    out.sort(key=lambda i: i.day)
    return out

def valid_through(ctx: EvaluationContext, ev: EvidenceSpec) -> tuple[date | None, list[Any], str]:
    """Until when this evidence satisfies the requirement (exclusive), what decided it,
    and how to say so. (None, [], ...) when there is nothing on record."""
    items = _items(ctx, ev)
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
        season = influenza_season_start(last.day, ctx.settings.season_start_month)
        through = date(season.year + 1, season.month, season.day)
    else:
        assert isinstance(lookback, Duration)
        through = lookback.after(last.day)
    described = f"{ev.label} {last.value_text()}".rstrip() if isinstance(
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
        other_through, other_items, other_text = valid_through(ctx, other)
        if other_through is None:
            return None, decided + other_items, f"{text}, but {other_text}"
        through = min(through, other_through)
        decided += other_items
        text = f"{text} and {other_text}"
    return through, decided, text

@dataclass(frozen=True)
class RequirementResult:
    """One requirement of a rule for one visit."""

    status: Status
    through: date | None  # until when the best evidence satisfies it (exclusive)
    text: str
    items: tuple[Any, ...]  # the resources that decided it
    flags: tuple[FindingFlag, ...]


def requirement_status(ctx: EvaluationContext, req: Requirement) -> RequirementResult:
    best: tuple[date, list[Any], str] | None = None
    partial: list[str] = []
    partial_items: list[Any] = []
    flags: list[FindingFlag] = []
    for ev in req.evidence:
        through, items, text = valid_through(ctx, ev)
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
        return RequirementResult(Status.DUE, None, text, tuple(partial_items), tuple(flags))
    through, items, text = best
    window = ctx.settings.due_soon
    if req.due_soon is not None and req.due_soon.after(ctx.day) < window.after(ctx.day):
        window = req.due_soon
    if through <= ctx.day:
        status, text = Status.OVERDUE, f"last {text}; due since {fmt(through)}"
    elif through <= window.after(ctx.day):
        status, text = Status.DUE_SOON, (f"last {text}; falls due {fmt(through)}, within "
                                         f"{window.words()} of the visit")
    else:
        due = "" if through == FOREVER else f"; next due {fmt(through)}"
        status, text = Status.SATISFIED, f"{text}{due}"
    return RequirementResult(status, through, text, tuple(items), tuple(flags))


def _order(rule: Rule, req: Requirement) -> Order | None:
    if req.order is None:
        return None
    spec = req.order
    return Order(system=spec.system, code=spec.code, display=spec.display,
                 category=OrderCategory(spec.category), role=spec.role or rule.role,
                 before_visit=spec.before_visit, lead_days=spec.lead_days)


def _cited(item: Observation | Procedure | Immunization, req: Requirement) -> EvidenceRef:
    """A resource that decided a requirement, as the sheet cites it ("HbA1c 8.4 %")."""
    label = getattr(item, "code", None) or getattr(item, "vaccine", None)
    summary = label.label() if isinstance(label, Concept) else req.label
    if isinstance(item, Observation) and item.value_text():
        summary = f"{summary} {item.value_text()}"
    return EvidenceRef(item.ref, item.day, summary, "result")


def _citation(rule: Rule) -> str:
    return "; ".join(c.source for c in rule.citations)


def evaluate_rule(ctx: EvaluationContext, rule: Rule) -> Finding:
    base: dict[str, Any] = {"rule_id": rule.id, "title": rule.title, "kind": rule.kind,
                            "role": rule.role, "measure": rule.measure,
                            "citation": _citation(rule)}
    applies = all_of([c.evaluate(ctx) for c in rule.applies_when])
    if applies.value is False:
        return Finding(status=Status.NOT_APPLICABLE,
                       explanation=f"not applicable: {applies.reason}",
                       **base)
    # An exclusion on record decides even when applicability cannot be (a known diabetic
    # with no BMI on record is excluded from diabetes screening, not "unknown").
    for exclusion in rule.excluded_when:
        excluded = exclusion.when.evaluate(ctx)
        if excluded.value:
            what = f" ({excluded.reason})" if excluded.reason else ""
            return Finding(status=Status.EXCLUDED, explanation=f"excluded: {exclusion.reason}"
                           f"{what}", evidence=tuple(excluded.evidence), **base)
    if applies.value is None:
        return Finding(status=Status.UNKNOWN, explanation=applies.reason, **base)
    results = [requirement_status(ctx, req) for req in rule.requirements]
    prefixed = len(rule.requirements) > 1
    orders: list[Order] = []
    for req, met in zip(rule.requirements, results, strict=True):
        order = _order(rule, req) if met.status.actionable else None
        # Two requirements may propose the same thing (Td/Tdap booster and the
        # once-in-a-lifetime Tdap): one order, the first requirement's.
        if order and all((o.system, o.code) != (order.system, order.code) for o in orders):
            orders.append(order)
    flags = [flag for met in results for flag in met.flags]
    due_dates = [r.through for r in results if r.through and r.through != FOREVER]
    status = max((r.status for r in results), key=lambda s: s.severity)
    if rule.role == Role.PHYSICIAN and status.actionable:
        flags.append(FindingFlag.PHYSICIAN_REVIEW)
    if FindingFlag.ABNORMAL in flags:
        flags.append(FindingFlag.PHYSICIAN_REVIEW)
    if status.actionable and rule.flags:
        # What the rule declares (shared decision-making for lung screening) matters when
        # the test is proposed; a clinician leads that conversation.
        flags += [FindingFlag.PHYSICIAN_REVIEW, *map(FindingFlag, rule.flags)]
    texts = [f"{req.label}: {r.text}" if prefixed else r.text
             for req, r in zip(rule.requirements, results, strict=True)]
    decided = [_cited(item, req) for req, r in zip(rule.requirements, results, strict=True)
               for item in r.items]
    return Finding(status=status, explanation="; ".join(texts),
                   evidence=(*applies.evidence, *decided), orders=tuple(orders),
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


def evaluate_renewals(ctx: EvaluationContext, rule: Rule, findings: Iterable[Finding]
                      ) -> list[Finding]:
    assert rule.renewal is not None
    spec = rule.renewal
    horizon = ctx.settings.renewal_horizon or spec.horizon
    base: dict[str, Any] = {"rule_id": rule.id, "title": rule.title, "kind": Kind.RENEWAL,
                            "measure": rule.measure, "citation": _citation(rule)}
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
        is_controlled = ctx.medication_matches(spec.controlled, spec.controlled_names,
                                               med.medication)
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
    ctx = EvaluationContext(record, ruleset.valuesets, day, settings)
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
