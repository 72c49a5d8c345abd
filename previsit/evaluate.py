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

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
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
from previsit.record import (
    Dispense,
    Immunization,
    MedicationOrder,
    MedicationUse,
    Observation,
    PatientRecord,
    Procedure,
    with_plausible_birth_date,
)
from previsit.ruleset import EvidenceSpec, OrderSpec, PositiveSpec, Requirement, Rule, RuleSet

__all__ = ["EvaluationContext", "Settings", "evaluate", "evaluate_rule", "run_out_date"]

FOREVER = date.max


# --- requirements and their evidence ---------------------------------------------------

# Doses given up to 4 days before a minimum interval still count (CDC General Best Practice
# Guidelines, Table 3-1 footnote); the grace is for judging past doses, never for scheduling.
GRACE = timedelta(days=4)

# How a lab writes a positive qualitative result as text (FIT "POSITIVE", FIT-DNA
# "Positive", "Detected", "+").
_POSITIVE_TEXT = re.compile(r"^\s*(pos(itive)?|detected|abnormal|\+)(\W|$)", re.IGNORECASE)


def _items(ctx: EvaluationContext, ev: EvidenceSpec
           ) -> list[Observation | Procedure | Immunization]:
    vs = ctx.vs(ev.valueset)
    items: list[Any]
    if ev.resource_kind == "observation":
        items = [o for o in ctx.observations.matching(vs)
                 if ctx.usable(o, needs_value=ev.value_required)]
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


def _series(items: list[Any], min_interval: Duration | None) -> tuple[list[Any], list[Any]]:
    """The doses of a series that count, and those given too soon after the dose before
    (which must be repeated). Two records on one day are one dose."""
    valid: list[Any] = []
    early: list[Any] = []
    for item in items:
        if valid and item.day == valid[-1].day:
            continue
        if valid and min_interval is not None and \
                item.day < min_interval.after(valid[-1].day) - GRACE:
            early.append(item)
            continue
        valid.append(item)
    return valid, early


def _not_counted(ctx: EvaluationContext, ev: EvidenceSpec) -> str | None:
    """Why the latest result in the set was not counted, when it has no value or cannot be
    believed ("the HbA1c of 2026-11-20 has no value: not counted"); else None."""
    if ev.resource_kind != "observation":
        return None
    latest = max((o for o in ctx.observations.matching(ctx.vs(ev.valueset))
                  if o.status in DONE_OBSERVATION and o.day <= ctx.day),
                 key=lambda o: o.day, default=None)
    if latest is None:
        return None
    if latest.ref in ctx.implausible:
        return (f"the {ev.label} of {fmt(latest.day)} ({latest.value_text()}) is implausible: "
                "not counted, check this value")
    if ev.value_required and not latest.has_value:
        why = f" ({latest.absent_reason})" if latest.absent_reason else ""
        return f"the {ev.label} of {fmt(latest.day)} has no value{why}: not counted"
    return None


def valid_through(ctx: EvaluationContext, ev: EvidenceSpec) -> tuple[date | None, list[Any], str]:
    """Until when this evidence satisfies the requirement (exclusive), what decided it,
    and how to say so. (None, [], ...) when there is nothing on record."""
    items: list[Any] = _items(ctx, ev)
    early: list[Any] = []
    if ev.count > 1 or ev.min_interval is not None:
        items, early = _series(items, ev.min_interval)
    too_soon = "".join(f"; the dose of {fmt(i.day)} was too soon after the one before "
                       f"(minimum {ev.min_interval.words()}) and does not count"
                       for i in early if ev.min_interval is not None)
    if len(items) < ev.count:
        if items:
            return None, [*items, *early][-1:], (f"{len(items)} of {ev.count} {ev.label} "
                                                 f"doses on record{too_soon}")
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
        described = f"{ev.label} ({len(items)} doses, last"
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
    order: OrderSpec | None = None  # what to propose when actionable
    not_before: date | None = None  # actionable, but the dose is not allowed before this


def _positive(ctx: EvaluationContext, obs: Observation, spec: PositiveSpec) -> bool:
    if obs.value_concept is not None and ctx.vs(spec.values).matches(obs.value_concept):
        return True
    if ctx.vs(spec.interpretations).matches(obs.interpretation):
        return True
    return bool(obs.value_string and _POSITIVE_TEXT.match(obs.value_string))


def _pending_follow_up(ctx: EvaluationContext, req: Requirement
                       ) -> tuple[Observation, EvidenceSpec, PositiveSpec] | None:
    """The latest positive result (within its look-back) of a test that needs a follow-up,
    when no follow-up procedure was done on or after it. Any positive counts, not only the
    latest result: a negative FIT after a positive one does not replace the colonoscopy."""
    pending: tuple[Observation, EvidenceSpec, PositiveSpec] | None = None
    for ev in req.evidence:
        spec = ev.if_positive
        if spec is None:
            continue
        since = ev.lookback.before(ctx.day) if isinstance(ev.lookback, Duration) else date.min
        for item in _items(ctx, ev):
            if isinstance(item, Observation) and item.day > since and \
                    _positive(ctx, item, spec) and (pending is None or item.day > pending[0].day):
                pending = (item, ev, spec)
    if pending is None:
        return None
    positive, _, spec = pending
    done = [p for p in ctx.procedures.matching(ctx.vs(spec.follow_up))
            if p.status == "completed" and positive.day <= p.day <= ctx.day]
    return None if done else pending


def _not_before(ctx: EvaluationContext, req: Requirement) -> tuple[date, str] | None:
    """The earliest day the next dose may be given, when that is after the visit, and why:
    the minimum interval after an earlier dose (no grace: CDC schedules without it), or the
    start of the next influenza season."""
    earliest: tuple[date, str] | None = None
    for interval in req.min_intervals:
        doses = [i.day for i in ctx.immunizations.matching(ctx.vs(interval.after))
                 if i.status == "completed" and i.day <= ctx.day]
        if not doses:
            continue
        gap = interval.min_interval
        if interval.shorter is not None and interval.shorter.when.evaluate(ctx).value:
            gap = interval.shorter.min_interval
        allowed = gap.after(max(doses))
        if earliest is None or allowed > earliest[0]:
            earliest = (allowed, f"at least {gap.words()} after {interval.label} on "
                                 f"{fmt(max(doses))}")
    settings = ctx.settings
    if req.in_season and settings.season_last_month < ctx.day.month < \
            settings.season_start_month:
        start = date(ctx.day.year, settings.season_start_month, 1)
        if earliest is None or start > earliest[0]:
            earliest = (start, "when next season's vaccine is offered")
    return earliest if earliest is not None and earliest[0] > ctx.day else None


def requirement_status(ctx: EvaluationContext, req: Requirement) -> RequirementResult:
    pending = _pending_follow_up(ctx, req)
    if pending is not None:
        positive, ev, spec = pending
        return RequirementResult(
            Status.DUE, None, f"positive {ev.label} on {fmt(positive.day)} "
            f"({positive.value_text() or positive.value_string or 'flagged positive'}): "
            f"needs a follow-up "
            f"{spec.label}; a repeat {ev.label} does not replace it",
            (positive,), (FindingFlag.POSITIVE_RESULT,), spec.order)
    best: tuple[date, list[Any], str] | None = None
    partial: list[str] = []
    partial_items: list[Any] = []
    flags: list[FindingFlag] = []
    uncounted = [why for ev in req.evidence if (why := _not_counted(ctx, ev))]
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
        text = "; ".join([*partial, *uncounted] if partial else
                         [f"no {labels} on record", *uncounted])
        result = RequirementResult(Status.DUE, None, text, tuple(partial_items), tuple(flags),
                                   req.order)
        return _when_allowed(ctx, req, result)
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
    if status.actionable:
        text = "; ".join([text, *uncounted])
    result = RequirementResult(status, through, text, tuple(items), tuple(flags), req.order)
    return _when_allowed(ctx, req, result) if status.actionable else result


def _when_allowed(ctx: EvaluationContext, req: Requirement,
                  result: RequirementResult) -> RequirementResult:
    """A dose that is due but not allowed yet at the visit is due-soon with its date and
    no order: proposing it would have it given too early."""
    allowed = _not_before(ctx, req)
    if allowed is None:
        return result
    day, why = allowed
    return replace(result, status=Status.DUE_SOON, order=None, not_before=day,
                   text=f"{result.text}; not before {fmt(day)} ({why})")


def _order(rule: Rule, spec: OrderSpec | None) -> Order | None:
    if spec is None:
        return None
    return Order(system=spec.system, code=spec.code, display=spec.display,
                 category=OrderCategory(spec.category), role=spec.role or rule.role,
                 before_visit=spec.before_visit, lead_days=spec.lead_days,
                 draw_within_days=spec.draw_within_days)


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
    for met in results:
        order = _order(rule, met.order) if met.status.actionable else None
        # Two requirements may propose the same thing (Td/Tdap booster and the
        # once-in-a-lifetime Tdap): one order, the first requirement's.
        if order and all((o.system, o.code) != (order.system, order.code) for o in orders):
            orders.append(order)
    flags = [flag for met in results for flag in met.flags]
    due_dates = [r.through for r in results if r.through and r.through != FOREVER]
    status = max((r.status for r in results), key=lambda s: s.severity)
    if FindingFlag.POSITIVE_RESULT in flags:
        # the follow-up is the physician's: the finding is theirs, not the standing order's
        base["role"] = Role.PHYSICIAN
    if base["role"] == Role.PHYSICIAN and status.actionable:
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
    not_before = [r.not_before for r in results if r.not_before and r.status == status]
    return Finding(status=status, explanation="; ".join(texts),
                   evidence=(*applies.evidence, *decided), orders=tuple(orders),
                   due_date=min(due_dates) if due_dates else None,
                   flags=tuple(dict.fromkeys(flags)),
                   not_before=max(not_before) if not_before else None, **base)


# --- renewals ------------------------------------------------------------------------------


def run_out_date(order: MedicationOrder, dispenses: Iterable[Dispense] = ()) -> date | None:
    """When an active prescription runs out. None when it cannot be computed.

    From the prescription alone: the earliest of its validity end and authoredOn + supply ×
    (repeats + 1). When the pharmacy's dispenses of it are known they are the better
    evidence (a refill collected late lasts longer than the arithmetic says): the last
    dispense's supply, then each fill left — while the prescription is still valid to fill.
    """
    candidates = []
    if order.validity_end:
        candidates.append(order.validity_end)
    if order.authored_on and order.supply_days is not None:
        fills = (order.repeats or 0) + 1
        candidates.append(Duration(order.supply_days * fills, "d").after(order.authored_on))
    prescribed = min(candidates) if candidates else None
    filled = [d for d in dispenses if d.completed and d.days_supply]
    if not filled:
        return prescribed
    last = max(filled, key=lambda d: d.handed_over or date.min)
    assert last.handed_over is not None and last.days_supply is not None
    runs_to = last.handed_over + timedelta(days=last.days_supply)
    if order.repeats is None:
        return max(runs_to, prescribed) if prescribed else runs_to
    supply = timedelta(days=order.supply_days or last.days_supply)
    for _ in range(order.repeats + 1 - len(filled)):
        if order.validity_end is not None and runs_to > order.validity_end:
            break  # the prescription can no longer be filled
        runs_to += supply
    return runs_to


def _same_drug(a: Concept, b: Concept) -> bool:
    keys = {c.key() for c in a.codings}
    return bool(keys & {c.key() for c in b.codings}) if keys else \
        a.label().lower() == b.label().lower()


def _dispenses_of(record: PatientRecord, order: MedicationOrder) -> list[Dispense]:
    """The dispenses of this prescription: those naming it, else those of the same drug
    handed over since it was written."""
    named = [d for d in record.dispenses if any(
        ref == order.ref or ref.endswith(f"/{order.ref}") for ref in d.prescription)]
    if named:
        return named
    return [d for d in record.dispenses if not d.prescription and
            _same_drug(order.medication, d.medication) and order.authored_on is not None
            and d.handed_over is not None and d.handed_over >= order.authored_on]


def _stopped(record: PatientRecord, order: MedicationOrder, day: date) -> MedicationUse | None:
    """A medication statement saying the patient stopped the drug after it was ordered."""
    for use in record.statements:
        if use.stopped and use.day is not None and use.day <= day and \
                (order.authored_on is None or use.day >= order.authored_on) and \
                _same_drug(order.medication, use.medication):
            return use
    return None


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


def _group_words(ctx: EvaluationContext, url: str, concept: Concept) -> str:
    """Why a drug is in a grouped set, in a few words: "Schedule II", "Anticoagulant";
    a code-less group (DEA-exempted products) adds a note. "" for a drug matched by name."""
    groups = ctx.vs(url).groups_of(concept)
    named = [g.display.split(" (")[0] for g in groups if g.code]
    words = named[0] if named else ""
    if any(not g.code for g in groups):
        words += " (exempted products exist)"
    return words.strip()


# Courses of therapy (MedicationRequest.courseOfTherapyType) that are never renewed for a
# year at an annual visit: a short course ends; a seasonal one is reviewed before its season.
_NOT_RENEWED = {"acute": "a short (acute) course, not a long-term medicine: not renewed",
                "seasonal": "seasonal therapy: reviewed before its season, not renewed for "
                            "12 months"}


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
        is_high_risk = not is_controlled and spec.high_risk is not None and \
            ctx.medication_matches(spec.high_risk, spec.high_risk_names, med.medication)
        role = spec.controlled_role if is_controlled else \
            spec.high_risk_role if is_high_risk else rule.role
        common: dict[str, Any] = {**base, "title": f"Renew {name}", "role": role,
                                  "evidence": reason, "medication_ref": med.ref}
        stopped = _stopped(ctx.record, med, ctx.day)
        not_renewed = _NOT_RENEWED.get(med.course) or (stopped and (
            f"the patient stopped it ({stopped.status} on {fmt(stopped.day)}, medication "
            "statement): not renewed; reconcile the medication list"))
        if not_renewed:
            out.append(Finding(status=Status.NOT_APPLICABLE,
                               explanation=f"{name}: {not_renewed}", **common))
            continue
        dispenses = _dispenses_of(ctx.record, med)
        runs_out = run_out_date(med, dispenses)
        if runs_out is None:
            out.append(Finding(status=Status.UNKNOWN, explanation=(
                f"{name}: cannot tell when it runs out (no validity period, or no "
                "authored date and supply duration)"), **common))
            continue
        filled = _dispensed(med, dispenses, runs_out)
        if runs_out >= limit:
            out.append(Finding(status=Status.SATISFIED, due_date=runs_out, explanation=(
                f"{name}: runs until {fmt(runs_out)}{filled}, beyond {horizon.words()} after "
                "the visit"), **common))
            continue
        status = Status.OVERDUE if runs_out <= ctx.day else Status.DUE
        verb = "ran out" if runs_out <= ctx.day else "runs out"
        text = f"{name}: {verb} {fmt(runs_out)}{filled}"
        flags: tuple[FindingFlag, ...] = ()
        if is_controlled:
            schedule = _group_words(ctx, spec.controlled, med.medication)
            text += (f"; controlled substance{f' ({schedule})' if schedule else ''}: physician "
                     "review, not a 12-month renewal")
            # Only a renewal that is due asks the physician for anything: a controlled
            # prescription that runs beyond the horizon (or whose run-out is unknown) is
            # not flagged.
            flags = (FindingFlag.CONTROLLED_SUBSTANCE, FindingFlag.PHYSICIAN_REVIEW)
        elif is_high_risk:
            assert spec.high_risk is not None
            category = _group_words(ctx, spec.high_risk, med.medication)
            text += (f"; high-risk medicine{f' ({category})' if category else ''}: the "
                     f"physician renews it for {spec.renew_for.words()}, even with its "
                     "monitoring current")
            flags = (FindingFlag.HIGH_RISK, FindingFlag.PHYSICIAN_REVIEW)
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
        out.append(Finding(status=status, due_date=runs_out, explanation=text,
                           orders=order_list, flags=flags, **common))
    return out


def _dispensed(order: MedicationOrder, dispenses: list[Dispense], runs_out: date) -> str:
    """What the dispenses say, when they decided the run-out date."""
    filled = [d for d in dispenses if d.completed and d.days_supply]
    if not filled:
        return ""
    last = max(filled, key=lambda d: d.handed_over or date.min)
    text = f" (last dispensed {fmt(last.handed_over)}, {last.days_supply} days' supply"
    prescribed = run_out_date(order)
    if prescribed is not None and abs((prescribed - runs_out).days) > 30:
        text += f"; the prescription alone would run out {fmt(prescribed)}"
    return text + ")"


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
    patient = record.patient
    if patient.deceased:
        # A stale booking: no plan and no order, ever; the run lists it as an input problem.
        when = f" on {fmt(patient.deceased_on)}" if patient.deceased_on else ""
        return VisitPlan(visit=visit, patient_name=patient.name, patient_age=None,
                         patient_sex=patient.sex, patient_mrn=patient.mrn, findings=(),
                         not_planned=f"the patient is recorded as deceased{when}: the booking "
                                     "was not planned and no order was written; cancel it")
    # A birth date after the visit or beyond any human age is a data issue, not an age.
    record = with_plausible_birth_date(record, day)
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
    return VisitPlan(visit=visit, patient_name=patient.name, patient_age=ctx.age,
                     patient_sex=patient.sex, patient_mrn=patient.mrn,
                     findings=tuple(findings),
                     issues=tuple(f"{i.resource}: {i.message}" for i in record.issues),
                     checks=tuple(sorted(ctx.implausible.values())))
