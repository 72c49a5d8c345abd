"""The sample clinic day (sample_bundles/) is a real day, and it exercises every rule.

sample_bundles/ is what `previsit` runs on with no server, what the sheets are shown
with and what a reviewer reads to judge the rules. These tests keep it honest while the
rule library changes: the day is loaded through BundleSource exactly as a run loads it,
every booked visit is evaluated with the shipped rules, and every rule must produce every
outcome it can produce. Outcomes a rule cannot produce are listed in IMPOSSIBLE with the
reason, and the reason is checked against the rule, so a rule that gains an exclusion (or
loses its age limit) fails here until the sample day shows the new outcome.

When a coverage test fails, its message prints the matrix: rules down, outcomes across,
the number of visits with each outcome, `-` for impossible and `!!` for a gap. Close a gap
in sample_bundles/generate.py (see sample_bundles/README.md) and regenerate.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from previsit.evaluate import evaluate
from previsit.plan import Finding, FindingFlag, Role, Status, Visit, VisitPlan
from previsit.proposals import plan_proposals
from previsit.record import PatientRecord
from previsit.ruleset import Rule, RuleSet, load_ruleset
from previsit.sources import BOOKED_STATUSES, SourceProblem, VisitWindow

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_bundles"
CLINIC_DAY = date(2026, 12, 1)
TIMEZONE = "America/Chicago"

# --- outcomes a rule cannot produce, and why ---------------------------------------------
# Each reason is one of these, and test_impossible_outcomes_are_justified checks it
# against the rule itself.

NO_EXCLUSION = "the rule has no excluded_when"
DECIDABLE = ("applies_when cannot be undecidable: no age or sex criterion, no observation "
             "with missing: unknown, no medication with min_duration")
ONCE = ("every evidence has lookback: ever (a once-in-a-lifetime test or a vaccine series): "
        "once met it never lapses, so it is never overdue, and with no minimum interval "
        "between doses never due-soon either")
NO_DUE_SOON_WINDOW = ("due_soon: 0d: the evidence runs out with the influenza season on "
                      "1 August, so on a December visit this season's dose is either on "
                      "record or due; last season's is overdue")
RENEWAL = ("renewal findings are due (runs out within the horizon), overdue (already ran "
           "out), satisfied, unknown (run-out cannot be computed) or not-applicable (no "
           "active prescription); a renewal is never excluded and has no due-soon window")

IMPOSSIBLE: dict[tuple[str, Status], str] = {
    # screening
    ("aaa-screening", Status.EXCLUDED): NO_EXCLUSION,
    ("aaa-screening", Status.OVERDUE): ONCE,
    ("aaa-screening", Status.DUE_SOON): ONCE,
    ("hepatitis-c-screening", Status.EXCLUDED): NO_EXCLUSION,
    ("hepatitis-c-screening", Status.OVERDUE): ONCE,
    ("hepatitis-c-screening", Status.DUE_SOON): ONCE,
    ("hiv-screening", Status.OVERDUE): ONCE,
    ("hiv-screening", Status.DUE_SOON): ONCE,
    ("osteoporosis-screening", Status.EXCLUDED): NO_EXCLUSION,
    # monitoring labs: a drug or a diagnosis decides them, never an age
    ("hba1c-monitoring", Status.UNKNOWN): DECIDABLE,
    ("lipid-monitoring", Status.UNKNOWN): DECIDABLE,
    ("ace-arb-diuretic-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("levothyroxine-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("levothyroxine-monitoring", Status.UNKNOWN): DECIDABLE,
    ("lithium-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("lithium-monitoring", Status.UNKNOWN): DECIDABLE,
    ("warfarin-inr-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("warfarin-inr-monitoring", Status.UNKNOWN): DECIDABLE,
    ("metformin-b12-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("methotrexate-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("methotrexate-monitoring", Status.UNKNOWN): DECIDABLE,
    ("amiodarone-monitoring", Status.EXCLUDED): NO_EXCLUSION,
    ("amiodarone-monitoring", Status.UNKNOWN): DECIDABLE,
    # immunizations
    ("influenza-immunization", Status.DUE_SOON): NO_DUE_SOON_WINDOW,
    ("influenza-immunization", Status.EXCLUDED): NO_EXCLUSION,
    ("zoster-immunization", Status.OVERDUE): ONCE,
    ("pneumococcal-immunization", Status.OVERDUE): ONCE,
    ("rsv-immunization", Status.OVERDUE): ONCE,
    ("rsv-immunization", Status.DUE_SOON): ONCE,
    ("hepatitis-b-immunization", Status.OVERDUE): ONCE,
    ("hepatitis-b-immunization", Status.DUE_SOON): ONCE,
    # renewals
    ("annual-prescription-renewal", Status.EXCLUDED): RENEWAL,
    ("annual-prescription-renewal", Status.DUE_SOON): RENEWAL,
}

# Appointments in appointments.json that a planner must NOT plan, each for its own reason.
IGNORED = {
    "appt-1201-1400-greenberg-cx": "cancelled",
    "appt-1201-0740-esposito-lab": "noshow",
    "appt-1201-0840-jensen-dup": "entered-in-error",
    "appt-1130-1500-williams": "the day before (fulfilled)",
    "appt-1130-1620-mendoza": "the day before, still 'booked' (never checked out)",
    "appt-1130-2130-reyes-video": "03:30Z on 12-01 is 21:30 on 11-30 in Chicago",
    "appt-1202-0800-tran": "the day after",
    "appt-1202-0900-haddad-lab": "the day after",
    "appt-1202-1000-whitaker": "the day after (pending)",
}


# --- the day, loaded once ----------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    visits: tuple[Visit, ...]
    plans: tuple[VisitPlan, ...]
    records: dict[str, PatientRecord]
    ruleset: RuleSet
    problems: tuple[SourceProblem, ...]


@pytest.fixture(scope="module")
def day() -> Day:
    # Imported here so that a missing BundleSource is a failure of these tests (an
    # ImportError), never a skip.
    from previsit.sources.bundles import BundleSource

    ruleset = load_ruleset(ROOT / "rules")

    async def run() -> Day:
        source = BundleSource(SAMPLE)
        window = VisitWindow(start=CLINIC_DAY, end=date(2026, 12, 2), timezone=TIMEZONE)
        visits = await source.appointments(window)
        records = {v.patient_id: await source.patient_record(v.patient_id) for v in visits}
        plans = [evaluate(records[v.patient_id], ruleset, v) for v in visits]
        await source.aclose()
        return Day(tuple(visits), tuple(plans), records, ruleset, tuple(source.problems()))

    return asyncio.run(run())


def outcomes(day: Day) -> dict[str, dict[Status, set[str]]]:
    """rule id -> outcome -> appointment ids with that outcome."""
    seen: dict[str, dict[Status, set[str]]] = defaultdict(lambda: defaultdict(set))
    for plan in day.plans:
        for finding in plan.findings:
            seen[finding.rule_id][finding.status].add(plan.visit.appointment_id)
    return seen


def matrix(day: Day) -> str:
    seen = outcomes(day)
    statuses = list(Status)
    width = max(len(r.id) for r in day.ruleset.active)
    lines = [" " * width + "  " + " ".join(f"{s.value[:9]:>9}" for s in statuses)]
    for rule in day.ruleset.active:
        cells = []
        for status in statuses:
            count = len(seen[rule.id][status])
            if (rule.id, status) in IMPOSSIBLE:
                cells.append(f"{'-' if not count else f'{count} ?!':>9}")
            else:
                cells.append(f"{count if count else '!!':>9}")
        lines.append(f"{rule.id:<{width}}  " + " ".join(cells))
    lines.append("(visits with each outcome; - impossible (see IMPOSSIBLE); !! gap; ?! an "
                 "'impossible' outcome that happened)")
    return "\n".join(lines)


# --- (1) the day itself ------------------------------------------------------------------


def test_the_day_is_a_real_clinic_day(day: Day) -> None:
    visits = day.visits
    assert len(visits) >= 25, f"only {len(visits)} planned appointments"
    assert all(v.status in BOOKED_STATUSES for v in visits)
    assert {v.status for v in visits} == set(BOOKED_STATUSES), \
        "the day should show booked, arrived and pending appointments"
    zone = ZoneInfo(TIMEZONE)
    assert all(v.start is not None and v.start.astimezone(zone).date() == CLINIC_DAY
               for v in visits)
    practitioners = {v.practitioner.reference for v in visits if v.practitioner}
    locations = {v.location.reference for v in visits if v.location}
    patients = {v.patient_id for v in visits}
    assert len(practitioners) >= 2, practitioners
    assert len(locations) >= 2, locations
    assert len(patients) >= 20, f"only {len(patients)} distinct patients"
    twice = [p for p in patients if sum(v.patient_id == p for v in visits) == 2]
    assert twice, "one patient should have two appointments on the clinic day"
    assert not day.problems, [f"{p.where}: {p.message}" for p in day.problems]


def _raw_appointments() -> Iterator[dict[str, Any]]:
    bundle = json.loads((SAMPLE / "appointments.json").read_text(encoding="utf-8"))
    for entry in bundle["entry"]:
        yield entry["resource"]


def test_only_booked_appointments_of_the_clinic_day_are_planned(day: Day) -> None:
    planned = {v.appointment_id for v in day.visits}
    for aid, why in IGNORED.items():
        assert aid not in planned, f"{aid} must be ignored: {why}"
    zone = ZoneInfo(TIMEZONE)
    raw = list(_raw_appointments())
    assert set(IGNORED) <= {a["id"] for a in raw}, "an IGNORED appointment is missing"
    assert {a["status"] for a in raw if a["id"] in IGNORED} >= \
        {"cancelled", "noshow", "entered-in-error"}
    # Every appointment is planned exactly when it is booked-like and on the clinic day
    # in Chicago (the UTC-stamped ones included).
    expected = {a["id"] for a in raw if a["status"] in BOOKED_STATUSES and datetime
                .fromisoformat(a["start"].replace("Z", "+00:00")).astimezone(zone).date()
                == CLINIC_DAY}
    assert planned == expected
    assert "appt-1201-1640-brooks" in planned  # 22:40Z is 16:40 in Chicago


def test_the_920_patient_can_be_read_in_ten_seconds(day: Day) -> None:
    """The issue's acceptance story: the 9:20 patient has several things to do, each with
    an order, and one of them (HbA1c) is already on the chart as an open order, so it is
    not proposed again."""
    zone = ZoneInfo(TIMEZONE)
    plan = next(p for p in day.plans if p.visit.start is not None and
                p.visit.start.astimezone(zone).strftime("%H:%M") == "09:20" and
                p.visit.practitioner and "okafor" in (p.visit.practitioner.reference or ""))
    actionable = plan.actionable
    assert len(actionable) >= 5, [f.rule_id for f in actionable]
    labs = [f for f in actionable if any(o.before_visit for o in f.orders)]
    assert labs, "pre-visit labs should be due for the 9:20 patient"
    proposals = plan_proposals(plan, day.records[plan.visit.patient_id],
                               identifier_system="https://previsit.dev/fhir/proposal",
                               authored=CLINIC_DAY)
    by_code = {s.code: s.outcome for s in proposals.summaries}
    assert by_code.get("4548-4") == "already-open", by_code
    assert list(by_code.values()).count("proposed") >= 3, by_code


def test_an_undated_result_is_a_data_issue_not_a_crash(day: Day) -> None:
    undated = {p.visit.patient_id: [i for i in p.issues if "no date" in i] for p in day.plans}
    found = {pid: issues for pid, issues in undated.items() if issues}
    assert list(found) == ["pat-ruth-adeyemi"], found
    assert len(found["pat-ruth-adeyemi"]) == 1
    assert found["pat-ruth-adeyemi"][0].startswith("Observation/ruth-adeyemi-obs-")


def test_registry_doses_from_ndjson_count(day: Day) -> None:
    """Walter Kowalski's flu shot this season was given at a pharmacy: it is only in
    immunizations-registry.ndjson, so the NDJSON path is what satisfies the rule."""
    plan = next(p for p in day.plans if p.visit.patient_id == "pat-walter-kowalski")
    flu = next(f for f in plan.findings if f.rule_id == "influenza-immunization")
    assert flu.status == Status.SATISFIED, flu.explanation
    assert any(e.reference.startswith("Immunization/icare-") for e in flu.evidence)


# --- (1b) the chart situations a real EHR holds (issue 10): each on the sample day --------


def _plan(day: Day, appointment_id: str) -> VisitPlan:
    return next(p for p in day.plans if p.visit.appointment_id == appointment_id)


def _finding(day: Day, appointment_id: str, rule_id: str, renewal_of: str = "") -> Finding:
    [found] = [f for f in _plan(day, appointment_id).findings
               if f.rule_id == rule_id and renewal_of in f.title]
    return found


def test_a_deceased_patients_stale_booking_gets_no_plan_and_no_order(day: Day) -> None:
    plan = _plan(day, "appt-1201-1050-wojcik")
    assert plan.findings == () and plan.not_planned is not None
    assert "deceased on 2026-10-19" in plan.not_planned and not plan.failed
    proposals = plan_proposals(plan, day.records["pat-stanley-wojcik"],
                               identifier_system="urn:previsit:proposal",
                               authored=date(2026, 11, 30))
    assert proposals.summaries == () and proposals.bundle is None


def test_an_acute_antibiotic_is_never_renewed(day: Day) -> None:
    f = _finding(day, "appt-1201-1110-tran", "annual-prescription-renewal", "amoxicillin")
    assert f.status == Status.NOT_APPLICABLE and f.orders == ()
    assert "short (acute) course" in f.explanation


def test_a_positive_fit_needs_a_follow_up_colonoscopy_not_a_repeat_fit(day: Day) -> None:
    f = _finding(day, "appt-1201-1030-jackson", "colorectal-cancer-screening")
    assert f.status == Status.DUE and f.role == Role.PHYSICIAN
    assert FindingFlag.POSITIVE_RESULT in f.flags and FindingFlag.PHYSICIAN_REVIEW in f.flags
    assert [(o.code, o.role) for o in f.orders] == [("73761001", Role.PHYSICIAN)]


def test_a_result_without_a_value_does_not_satisfy(day: Day) -> None:
    f = _finding(day, "appt-1201-1130-nunez", "hba1c-monitoring")
    # the valueless HbA1c of 2026-11-10 would have made it satisfied until 2027-05-10
    assert f.status == Status.DUE_SOON and f.due_date == date(2026, 12, 14)
    assert "has no value (Error): not counted" in f.explanation


def test_a_refill_dispensed_late_moves_the_run_out_date(day: Day) -> None:
    f = _finding(day, "appt-1201-1030-jackson", "annual-prescription-renewal", "amlodipine")
    # the prescription alone runs out 2027-01-30, within the 90-day horizon: it would be due
    assert f.status == Status.SATISFIED and f.due_date == date(2027, 3, 31)


def test_hospice_recorded_only_as_an_encounter_excludes(day: Day) -> None:
    record = day.records["pat-michelle-novak"]
    assert not any("hospice" in c.code.label().lower() for c in record.conditions)
    for rule_id in ("hepatitis-b-immunization", "colorectal-cancer-screening",
                    "cervical-cancer-screening"):
        f = _finding(day, "appt-1201-1630-novak", rule_id)
        assert f.status == Status.EXCLUDED, (rule_id, f.explanation)
        assert [e.reference for e in f.evidence] == ["Encounter/michelle-novak-enc-001"]


def test_a_too_early_second_dose_is_repeated_only_when_allowed(day: Day) -> None:
    f = _finding(day, "appt-1201-0840-obrien", "zoster-immunization")
    assert f.status == Status.DUE_SOON and f.not_before == date(2026, 12, 4)
    assert f.orders == ()  # giving it today would be too early again


def test_an_implausible_value_is_a_check_not_a_result(day: Day) -> None:
    plan = _plan(day, "appt-1201-0840-jensen")
    assert plan.checks == ("check this value: Potassium 0.4 mmol/L on 2026-11-17 is outside "
                           "1.5–9 mmol/L, the range a patient can have; it was not used",)
    f = _finding(day, "appt-1201-0840-jensen", "ace-arb-diuretic-monitoring")
    assert f.status == Status.DUE_SOON and f.due_date == date(2027, 1, 16)


def test_a_lab_draw_booked_after_the_physician_visit_draws_the_labs_only(day: Day) -> None:
    from previsit.proposals import SameDay, Where
    from previsit.timeline import lab_only_test, same_day

    roles = same_day(day.visits, lab_only_test(day.ruleset.valuesets))
    assert roles["appt-1201-1300-fischer"] == SameDay(labs=Where.LATER, visit_work=Where.HERE)
    assert roles["appt-1201-1340-fischer-lab"] == SameDay(labs=Where.HERE,
                                                           visit_work=Where.EARLIER)
    # and the 8:00 lab draw before María López's 9:20 visit, as before
    assert roles["appt-1201-0800-lopez-lab"] == SameDay(labs=Where.HERE, visit_work=Where.LATER)
    assert roles["appt-1201-0920-lopez"] == SameDay(labs=Where.EARLIER, visit_work=Where.HERE)


# --- (2) and (3) every rule in every outcome it can have --------------------------------


def test_every_rule_shows_every_possible_outcome(day: Day) -> None:
    seen = outcomes(day)
    gaps = [f"{rule.id}: {status.value}" for rule in day.ruleset.active for status in Status
            if (rule.id, status) not in IMPOSSIBLE and not seen[rule.id][status]]
    assert not gaps, "outcomes never seen on the sample day:\n  " + "\n  ".join(gaps) + \
        "\n\n" + matrix(day)


def test_impossible_outcomes_never_happen(day: Day) -> None:
    seen = outcomes(day)
    happened = [f"{rule_id}: {status.value} at {sorted(seen[rule_id][status])}"
                for (rule_id, status) in IMPOSSIBLE if seen[rule_id][status]]
    assert not happened, "outcomes listed as impossible did happen (fix IMPOSSIBLE):\n  " + \
        "\n  ".join(happened) + "\n\n" + matrix(day)


def test_no_rule_produces_only_one_outcome(day: Day) -> None:
    seen = outcomes(day)
    single = [rule.id for rule in day.ruleset.active
              if len([s for s in Status if seen[rule.id][s]]) < 2]
    assert not single, f"rules with a single outcome: {single}\n\n{matrix(day)}"


def test_impossible_outcomes_are_justified(day: Day) -> None:
    """Each IMPOSSIBLE reason holds for the rule as shipped (so the list cannot rot)."""
    wrong = []
    known = {r.id for r in day.ruleset.rules}
    for (rule_id, status), reason in IMPOSSIBLE.items():
        if rule_id not in known:
            wrong.append(f"{rule_id}: no such rule")
            continue
        rule = day.ruleset.get(rule_id)
        if not _holds(rule, status, reason):
            wrong.append(f"{rule_id} {status.value}: '{reason}' does not hold for the rule")
    assert not wrong, "\n".join(wrong)


def _holds(rule: Rule, status: Status, reason: str) -> bool:
    if reason == NO_EXCLUSION:
        return status == Status.EXCLUDED and not rule.excluded_when
    if reason == DECIDABLE:
        return status == Status.UNKNOWN and not any(c.undecidable for c in rule.applies_when)
    if reason == ONCE:
        once = all(e.lookback == "ever" and all(w.lookback == "ever" for w in e.with_)
                   for req in rule.requirements for e in req.evidence)
        # a dose not yet allowed (a minimum interval) is due-soon with its date
        waits = any(req.min_intervals or req.in_season for req in rule.requirements)
        return once and (status == Status.OVERDUE or (status == Status.DUE_SOON and not waits))
    if reason == NO_DUE_SOON_WINDOW:
        return status == Status.DUE_SOON and all(
            req.due_soon is not None and req.due_soon.amount == 0
            and all(e.lookback == "season" for e in req.evidence if e.immunization)
            for req in rule.requirements)
    if reason == RENEWAL:
        return rule.kind.value == "renewal" and status in (Status.EXCLUDED, Status.DUE_SOON)
    return False


# --- the generator -------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_generate", SAMPLE / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    """Byte for byte, twice: the generator is deterministic and the committed files are
    current (regenerate with `.venv/bin/python sample_bundles/generate.py`)."""
    generate = _generator()
    first = {p.relative_to(tmp_path / "a"): p.read_bytes()
             for p in generate.build(tmp_path / "a")}
    second = {p.relative_to(tmp_path / "b"): p.read_bytes()
              for p in generate.build(tmp_path / "b")}
    assert first == second, "the generator is not deterministic"
    committed = {p.relative_to(SAMPLE): p.read_bytes() for p in SAMPLE.rglob("*")
                 if p.suffix in (".json", ".ndjson")}
    stale = sorted(str(p) for p in set(committed) ^ set(first))
    assert not stale, f"files present on one side only: {stale}"
    changed = sorted(str(p) for p in first if first[p] != committed[p])
    assert not changed, f"sample_bundles/ is out of date; regenerate: {changed}"
    assert sum(map(len, first.values())) < 5_000_000
