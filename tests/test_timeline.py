"""The pre-visit timeline (previsit.timeline): run day and clinic day, the two horizons,
when a pre-visit lab is drawn, which of a patient's appointments does what, what became
of the labs ordered ahead — and a simulated week of nightly runs over the sample day."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from builders import LOINC, SNOMED, observation, patient, record, shipped_rules

from previsit.codes import ValueSetRegistry
from previsit.errors import ConfigError
from previsit.evaluate import evaluate
from previsit.identifiers import DEFAULT_SYSTEM, proposal_identifier
from previsit.plan import Horizon, LabState, Order, OrderCategory, ProposalOutcome, Role, Visit
from previsit.proposals import SameDay, Where
from previsit.run import RunOptions, RunResult, run_day, write_outputs
from previsit.sources import VisitWindow
from previsit.sources.bundles import BundleSource
from previsit.timeline import (
    Timeline,
    draw_window,
    lab_only_test,
    lab_progress,
    run_and_clinic_day,
    same_day,
)

TZ = "America/Chicago"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_bundles"
VISIT_DAY = date(2026, 12, 1)
HBA1C = Order(LOINC, "4548-4", "HbA1c", OrderCategory.LABORATORY, Role.MA, True, 3)
INR = Order(LOINC, "6301-6", "INR", OrderCategory.LABORATORY, Role.MA, True, 0,
            draw_within_days=3)
FLU = Order("http://hl7.org/fhir/sid/cvx", "88", "Flu", OrderCategory.IMMUNIZATION, Role.NURSE,
            False)


def window(start: date, days: int = 1) -> VisitWindow:
    return VisitWindow(start=start, end=start + timedelta(days=days), timezone=TZ)


# --- run day and clinic day ------------------------------------------------------------------


@pytest.mark.parametrize(("clinic_day", "run", "expected"), [
    (None, None, (date(2026, 11, 20), date(2026, 11, 21))),  # the nightly job: tomorrow
    (date(2026, 12, 1), None, (date(2026, 11, 30), date(2026, 12, 1))),  # --date: its eve
    (None, date(2026, 11, 24), (date(2026, 11, 24), date(2026, 11, 25))),  # --run-date
    (date(2026, 12, 1), date(2026, 11, 24), (date(2026, 11, 24), date(2026, 12, 1))),
])
def test_run_day_and_clinic_day(clinic_day: date | None, run: date | None,
                                expected: tuple[date, date]) -> None:
    assert run_and_clinic_day(clinic_day=clinic_day, run_day=run,
                              today=date(2026, 11, 20)) == expected


def test_a_clinic_day_before_the_run_day_is_refused() -> None:
    with pytest.raises(ConfigError, match="before the run day 2026-12-01"):
        Timeline(run_day=date(2026, 12, 1), huddle=window(date(2026, 11, 30)))
    # the morning of the clinic day itself is allowed (a 05:00 run for today)
    Timeline(run_day=VISIT_DAY, huddle=window(VISIT_DAY))


def _visit(aid: str, day: date, hour: int = 9, *, pid: str = "p1",
           codes: tuple[str, ...] = ()) -> Visit:
    return Visit(appointment_id=aid, patient_id=pid, status="booked", codes=codes,
                 start=datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(TZ)))


def test_one_read_covers_both_horizons() -> None:
    timeline = Timeline(run_day=date(2026, 11, 24), huddle=window(date(2026, 11, 25)),
                        labs_ahead_days=7)
    assert (timeline.read_window.start, timeline.read_window.end) == (
        date(2026, 11, 25), date(2026, 12, 2))  # through 12-01, R + 7
    assert timeline.horizon(_visit("a", date(2026, 11, 25))) == Horizon.HUDDLE
    assert timeline.horizon(_visit("b", date(2026, 11, 26))) == Horizon.LABS_AHEAD
    assert timeline.horizon(_visit("c", date(2026, 12, 1))) == Horizon.LABS_AHEAD
    off = Timeline(run_day=date(2026, 11, 24), huddle=window(date(2026, 11, 25)),
                   labs_ahead_days=0)
    assert off.read_window.end == date(2026, 11, 26)  # the huddle day only


# --- when a pre-visit lab is drawn -----------------------------------------------------------


@pytest.mark.parametrize(("run", "expected"), [
    (date(2026, 11, 24), (date(2026, 11, 24), date(2026, 11, 28))),  # a week ahead
    (date(2026, 11, 28), (date(2026, 11, 28), date(2026, 11, 28))),  # the last day that works
    (date(2026, 11, 29), (VISIT_DAY, VISIT_DAY)),  # too late for the result: check-in
])
def test_a_lab_is_drawn_from_the_run_day_until_its_turnaround_before_the_visit(
        run: date, expected: tuple[date, date]) -> None:
    assert draw_window(HBA1C, VISIT_DAY, run, at_check_in=False) == expected


def test_a_point_of_care_lab_is_drawn_close_to_the_visit_however_early_it_is_ordered() -> None:
    assert draw_window(INR, VISIT_DAY, date(2026, 11, 24), at_check_in=False) == (
        date(2026, 11, 28), VISIT_DAY)
    assert draw_window(INR, VISIT_DAY, date(2026, 11, 30), at_check_in=False) == (
        date(2026, 11, 30), VISIT_DAY)


def test_at_check_in_and_anything_but_a_lab_is_the_visit_day() -> None:
    assert draw_window(HBA1C, VISIT_DAY, date(2026, 11, 24), at_check_in=True) == (
        VISIT_DAY, VISIT_DAY)
    assert draw_window(FLU, VISIT_DAY, date(2026, 11, 24), at_check_in=False) == (
        VISIT_DAY, VISIT_DAY)


# --- which appointment does what -------------------------------------------------------------

PHLEBOTOMY = f"{SNOMED}|396540005"
LOCAL_LAB = "https://ehr.example/visit-type|LAB"


def _lab_only(*codes: str) -> Any:
    return lab_only_test(shipped_rules().valuesets, codes)


@pytest.mark.parametrize(("codes", "configured", "lab_only"), [
    ((PHLEBOTOMY,), (), True),  # in the shipped value set
    (("http://terminology.hl7.org/CodeSystem/service-type|159",), (), True),
    ((LOCAL_LAB,), (), False),  # the clinic's own code, unknown ...
    ((LOCAL_LAB,), (LOCAL_LAB,), True),  # ... until configured
    ((LOCAL_LAB,), ("LAB",), True),  # or as a bare code
    (("http://terminology.hl7.org/CodeSystem/v2-0276|ROUTINE",), (), False),
])
def test_lab_only_appointments_are_recognised_by_code(codes: tuple[str, ...],
                                                       configured: tuple[str, ...],
                                                       lab_only: bool) -> None:
    assert _lab_only(*configured)(_visit("a", VISIT_DAY, codes=codes)) is lab_only


def test_without_the_value_set_only_configured_codes_count() -> None:
    test = lab_only_test(ValueSetRegistry(), ("LAB",))
    assert not test(_visit("a", VISIT_DAY, codes=(PHLEBOTOMY,)))
    assert test(_visit("a", VISIT_DAY, codes=(LOCAL_LAB,)))


def test_a_lab_draw_before_the_visit_draws_and_the_visit_does_the_rest() -> None:
    roles = same_day([_visit("lab", VISIT_DAY, 8, codes=(PHLEBOTOMY,)),
                      _visit("doc", VISIT_DAY, 9)], _lab_only())
    assert roles == {"lab": SameDay(Where.HERE, Where.LATER),
                     "doc": SameDay(Where.EARLIER, Where.HERE)}


def test_a_lab_draw_after_the_visit_still_draws_and_gets_nothing_else() -> None:
    roles = same_day([_visit("doc", VISIT_DAY, 9), _visit("lab", VISIT_DAY, 11,
                                                          codes=(PHLEBOTOMY,))], _lab_only())
    assert roles == {"doc": SameDay(Where.LATER, Where.HERE),
                     "lab": SameDay(Where.HERE, Where.EARLIER)}


def test_without_a_recognised_lab_draw_it_is_time_order() -> None:
    roles = same_day([_visit("second", VISIT_DAY, 11), _visit("first", VISIT_DAY, 9)],
                     _lab_only())
    assert roles == {"first": SameDay(Where.HERE, Where.LATER),
                     "second": SameDay(Where.EARLIER, Where.HERE)}


def test_a_lone_lab_draw_draws_and_does_no_visit_work() -> None:
    roles = same_day([_visit("lab", VISIT_DAY, 8, codes=(PHLEBOTOMY,)),
                      _visit("other-patient", VISIT_DAY, 8, pid="p2"),
                      _visit("other-day", VISIT_DAY + timedelta(days=1), 9)], _lab_only())
    assert roles["lab"] == SameDay(Where.HERE, Where.NOWHERE)
    assert roles["other-patient"] == roles["other-day"] == SameDay()


# --- what became of the labs ordered ahead ---------------------------------------------------

APPOINTMENT = "appt-1"


def ours(code: str, status: str = "draft", *, authored: str = "2026-11-24",
         appointment: str = APPOINTMENT, rid: str | None = None) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": rid or f"sr-{code}", "status": status,
            "intent": "proposal", "subject": {"reference": "Patient/p1"},
            "identifier": [{"system": DEFAULT_SYSTEM,
                            "value": proposal_identifier(appointment, LOINC, code)}],
            "code": {"coding": [{"system": LOINC, "code": code}], "text": code},
            "authoredOn": authored}


def progress(*resources: dict[str, Any]) -> dict[str, tuple[LabState, str | None]]:
    rec = record(patient(age=60), {"resourceType": "Condition", "id": "dm",
                                   "subject": {"reference": "Patient/p1"},
                                   "clinicalStatus": {"coding": [{"code": "active"}]},
                                   "code": {"coding": [{"system": SNOMED,
                                                        "code": "44054006"}]}},
                 *resources)
    plan = evaluate(rec, shipped_rules(), _visit(APPOINTMENT, VISIT_DAY))
    return {p.code: (p.state, p.result)
            for p in lab_progress(plan, rec, shipped_rules(), DEFAULT_SYSTEM)}


def test_a_lab_resulted_since_it_was_ordered_shows_its_value() -> None:
    assert progress(ours("4548-4"), observation("4548-4", 3, 7.9, "%")) == {
        "4548-4": (LabState.RESULTED, "4548-4 7.9 %")}


def test_a_result_from_before_the_order_or_implausible_or_without_value_is_not_it() -> None:
    older = observation("4548-4", 10, 7.9, "%")  # 2026-11-21, before the 11-24 order
    impossible = observation("4548-4", 2, 2.8, "%")
    empty = observation("4548-4", 1)
    assert progress(ours("4548-4"), older, impossible, empty) == {
        "4548-4": (LabState.UNSIGNED, None)}


@pytest.mark.parametrize(("status", "state"), [("draft", LabState.UNSIGNED),
                                               ("active", LabState.TO_DRAW),
                                               ("revoked", LabState.DISMISSED)])
def test_what_a_clinician_did_with_the_proposal(status: str, state: LabState) -> None:
    assert progress(ours("4548-4", status)) == {"4548-4": (state, None)}


def test_an_order_based_on_the_proposal_accepts_it() -> None:
    order = {"resourceType": "ServiceRequest", "id": "signed", "status": "active",
             "intent": "order", "subject": {"reference": "Patient/p1"},
             "basedOn": [{"reference": "ServiceRequest/sr-4548-4"}],
             "code": {"coding": [{"system": LOINC, "code": "4548-4"}]}}
    assert progress(ours("4548-4"), order) == {"4548-4": (LabState.TO_DRAW, None)}


def test_another_appointments_proposal_or_someone_elses_order_is_not_ours() -> None:
    theirs = {**ours("4548-4"), "identifier": [{"system": "urn:other", "value": "x"}]}
    assert progress(ours("4548-4", appointment="appt-2"), theirs) == {}


# --- a week of nightly runs over the sample day ------------------------------------------------

FIRST_NIGHT = date(2026, 11, 24)
NIGHTS = [FIRST_NIGHT + timedelta(days=n) for n in range(7)]  # 11-24 ... 11-30


def _written(bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """What a server holds after the transaction: each entry's resource, with an id."""
    for entry in bundle["entry"]:
        resource = dict(entry["resource"])
        resource["id"] = resource["identifier"][0]["value"]
        yield resource


def _carry(result: RunResult, data: Path, night: date) -> list[dict[str, Any]]:
    """The bundle source's write-back is the transaction file: put what it wrote into the
    folder the next night reads, as the server would hold it."""
    written = [r for bundle in result.bundles.values() for r in _written(bundle)]
    (data / f"written-{night.isoformat()}.ndjson").write_text(
        "".join(json.dumps(r) + "\n" for r in written), encoding="utf-8")
    return written


def _edit(data: Path, night: date, identifier: str, **changes: Any) -> None:
    """A clinician acts on a proposal written on `night` (signs or dismisses it)."""
    path = data / f"written-{night.isoformat()}.ndjson"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert any(r["id"] == identifier for r in lines)
    path.write_text("".join(json.dumps({**r, **changes} if r["id"] == identifier else r) + "\n"
                            for r in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("week") / "data"
    shutil.copytree(SAMPLE, data, ignore=shutil.ignore_patterns("*.py", "*.md"))
    rules = shipped_rules()
    results: dict[date, RunResult] = {}
    written: dict[date, list[dict[str, Any]]] = {}
    for night in NIGHTS:
        if night == date(2026, 11, 28):
            # Since the first night: Gloria Esposito had her ALT drawn on 11-27 (resulted);
            # Dr. Whitfield signed Walter Kowalski's INR; Dorothy Jackson's creatinine
            # proposal was dismissed.
            (data / "results-2026-11-27.ndjson").write_text(json.dumps({
                "resourceType": "Observation", "id": "esposito-alt-1127", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "1742-6"}], "text": "ALT"},
                "subject": {"reference": "Patient/pat-gloria-esposito"},
                "effectiveDateTime": "2026-11-27T08:10:00-06:00",
                "valueQuantity": {"value": 21, "unit": "U/L", "code": "U/L"}}) + "\n")
            _edit(data, FIRST_NIGHT, proposal_identifier("appt-1201-0800-kowalski", LOINC,
                                                         "6301-6"), status="active")
            _edit(data, FIRST_NIGHT, proposal_identifier("appt-1201-1030-jackson", LOINC,
                                                         "2160-0"), status="revoked")
        options = RunOptions(window=window(night + timedelta(days=1)), run_day=night,
                             write_back=True, labs_ahead_days=7)
        results[night] = asyncio.run(run_day(BundleSource(data), rules, options))
        write_outputs(results[night], data.parent / "out" / night.isoformat())
        written[night] = _carry(results[night], data, night)
    return {"results": results, "written": written, "data": data}


def _appointment_of(resource: dict[str, Any]) -> str:
    return next(s["reference"].removeprefix("Appointment/")
                for s in resource.get("supportingInfo", ())
                if s["reference"].startswith("Appointment/"))


def _window(resource: dict[str, Any]) -> tuple[date, date]:
    if "occurrencePeriod" in resource:
        period = resource["occurrencePeriod"]
        return date.fromisoformat(period["start"]), date.fromisoformat(period["end"])
    day = date.fromisoformat(resource["occurrenceDateTime"])
    return day, day


def test_no_order_is_ever_dated_before_the_night_it_is_written(week: dict[str, Any]) -> None:
    # the first night orders the clinic day's labs; the eve proposes the rest
    assert week["written"][FIRST_NIGHT] and week["written"][date(2026, 11, 30)]
    for night, resources in week["written"].items():
        for resource in resources:
            assert resource["authoredOn"] == night.isoformat()
            if resource["resourceType"] == "ServiceRequest":
                start, end = _window(resource)
                assert night <= start <= end, (night, resource["code"])


def test_each_lab_is_written_once_in_the_week(week: dict[str, Any]) -> None:
    labs = Counter((r["subject"]["reference"], r["code"]["coding"][0]["code"])
                   for resources in week["written"].values() for r in resources
                   if r["resourceType"] == "ServiceRequest"
                   and r["category"][0]["coding"][0]["code"] == "108252007")
    assert labs and max(labs.values()) == 1, [k for k, n in labs.items() if n > 1]
    every = Counter(r["identifier"][0]["value"]
                    for resources in week["written"].values() for r in resources)
    assert max(every.values()) == 1  # nothing at all is written twice


def test_the_clinic_days_labs_were_ordered_a_week_ahead_on_time(week: dict[str, Any]) -> None:
    """Every pre-visit lab the 12-01 visits need was ordered on the first night they were
    in the labs-ahead horizon (11-24), to be drawn by the visit less the lab's turnaround (at
    the patient's lab draw that day when there is one); on the eve (11-30) none is left
    for check-in."""
    last = week["results"][date(2026, 11, 30)].day
    assert last.generated_for == VISIT_DAY and last.run_day == date(2026, 11, 30)
    first_night = {(_appointment_of(r), r["code"]["coding"][0]["code"]): r
                   for r in week["written"][FIRST_NIGHT] if r["resourceType"] == "ServiceRequest"}
    lab_draws = {"appt-1201-0800-lopez-lab", "appt-1201-1340-fischer-lab"}
    checked = 0
    for plan in last.plans:
        if plan.not_planned:
            continue
        for summary in plan.proposals:
            finding = next(f for f in plan.findings if summary.rule_ids[0] == f.rule_id)
            orders = [o for o in finding.orders if o.code == summary.code and o.before_visit]
            if not orders:
                continue
            checked += 1
            # ordered ahead: on the eve it is ours already (or someone's, or the patient's
            # other appointment's), never a new check-in draw
            assert summary.outcome in (ProposalOutcome.ALREADY_WRITTEN,
                                       ProposalOutcome.ALREADY_OPEN,
                                       ProposalOutcome.DECLINED,
                                       ProposalOutcome.EARLIER_VISIT,
                                       ProposalOutcome.LATER_VISIT), \
                (plan.visit.appointment_id, summary.code, summary.outcome)
            if summary.outcome != ProposalOutcome.ALREADY_WRITTEN:
                continue
            resource = first_night[(plan.visit.appointment_id, summary.code)]
            start, end = _window(resource)
            order = orders[0]
            if plan.visit.appointment_id in lab_draws:
                assert (start, end) == (VISIT_DAY, VISIT_DAY)
            elif order.draw_within_days is not None:  # INR: close to the visit
                assert (start, end) == (VISIT_DAY - timedelta(days=order.draw_within_days),
                                        VISIT_DAY)
            else:
                assert (start, end) == (FIRST_NIGHT, VISIT_DAY - timedelta(
                    days=order.lead_days)), (plan.visit.appointment_id, summary.code)
    assert checked > 20


def test_only_labs_are_ordered_ahead_and_the_rest_the_night_before(
        week: dict[str, Any]) -> None:
    for night, resources in week["written"].items():
        clinic_day = night + timedelta(days=1)
        results = week["results"][night]
        huddle = {p.visit.appointment_id for p in results.day.plans}
        for resource in resources:
            appointment = (_appointment_of(resource) if resource["resourceType"] ==
                           "ServiceRequest" else None)
            is_lab = resource["resourceType"] == "ServiceRequest" and \
                resource["category"][0]["coding"][0]["code"] == "108252007"
            if not is_lab:
                # screenings, vaccines and renewals: only for the next clinic day
                assert resource["resourceType"] == "MedicationRequest" or \
                    appointment in huddle, (night, appointment, resource["code"])
        assert all(p.visit.day == clinic_day for p in results.day.plans)


def test_the_deceased_patients_booking_never_gets_an_order(week: dict[str, Any]) -> None:
    for resources in week["written"].values():
        assert not [r for r in resources
                    if r["subject"]["reference"] == "Patient/pat-stanley-wojcik"]
    last = week["results"][date(2026, 11, 30)]
    assert [p.where for p in last.report.source_problems] == [
        "Appointment/appt-1201-1050-wojcik"]
    assert last.report.exit_code == 0


def test_the_huddle_shows_what_happened_since_the_labs_were_ordered(
        week: dict[str, Any]) -> None:
    last = week["results"][date(2026, 11, 30)].day
    plans = {p.visit.appointment_id: p for p in last.plans}
    esposito = {lab.code: lab for lab in plans["appt-1201-0820-esposito"].labs}
    assert (esposito["1742-6"].state, esposito["1742-6"].result,
            esposito["1742-6"].result_day) == (LabState.RESULTED, "ALT 21 U/L",
                                               date(2026, 11, 27))
    assert esposito["2160-0"].state == LabState.UNSIGNED
    assert {lab.ordered_on for lab in esposito.values()} == {FIRST_NIGHT}
    kowalski = {lab.code: lab.state for lab in plans["appt-1201-0800-kowalski"].labs}
    assert kowalski["6301-6"] == LabState.TO_DRAW
    jackson = {lab.code: lab.state for lab in plans["appt-1201-1030-jackson"].labs}
    assert jackson["2160-0"] == LabState.DISMISSED
    outcome = {p.code: p.outcome for p in plans["appt-1201-1030-jackson"].proposals}
    assert outcome["2160-0"] == ProposalOutcome.DECLINED  # not proposed again

    from previsit import sheets

    huddle = sheets.render_huddle(last, minutes_saved={})
    assert "Labs back" in huddle and "ALT 21 U/L (Fri Nov 27)" in huddle
    sheet = sheets.render_visit_sheet(plans["appt-1201-0800-kowalski"])
    assert "draw at check-in" in sheet
    assert "ordered Tue Nov 24, accepted, not resulted yet" in sheet
    esposito_sheet = sheets.render_visit_sheet(plans["appt-1201-0820-esposito"])
    assert "Resulted:" in esposito_sheet and "ALT 21 U/L (Fri Nov 27; ordered Tue Nov 24)" \
        in esposito_sheet
    assert "proposed Tue Nov 24, not signed yet: sign before drawing" in esposito_sheet
