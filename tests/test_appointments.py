"""Which appointments count, one answer for every source: Appointment JSON to `Visit`,
the clinic-day window in local time, the practitioner / location / service filters, order.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from builders import appointment

from previsit.appointments import in_window, sort_visits, visit_from_appointment
from previsit.errors import AppointmentError
from previsit.plan import Ref, Visit
from previsit.sources import VisitWindow

TZ = "America/Chicago"
CHICAGO = ZoneInfo(TZ)
START = "2026-12-01T09:00:00-06:00"


def window(**kwargs: Any) -> VisitWindow:
    """1 December 2026, the clinic's day in Chicago."""
    return VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 2), timezone=TZ, **kwargs)


def counted(resource: dict[str, Any], **kwargs: Any) -> bool:
    return in_window(resource, visit_from_appointment(resource, TZ), window(**kwargs))


def concept(code: str, *, display: str | None = None, text: str | None = None,
            system: str = "http://snomed.info/sct") -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], **({"text": text} if text else {})}


# --- visit_from_appointment -------------------------------------------------------------


def test_a_visit_carries_the_appointment_the_patient_and_who_and_where() -> None:
    visit = visit_from_appointment(appointment("a1", START, pid="p7", status="arrived"), TZ)
    assert visit == Visit(
        appointment_id="a1", patient_id="p7",
        start=datetime(2026, 12, 1, 9, 0, tzinfo=CHICAGO), status="arrived",
        practitioner=Ref("Practitioner/dr-a", "Dr A"), location=Ref("Location/loc-main", "Main"))


def test_an_appointment_without_an_id_is_refused() -> None:
    resource = appointment("a1", START)
    del resource["id"]
    with pytest.raises(AppointmentError, match=r"^Appointment has no id$"):
        visit_from_appointment(resource, TZ)


@pytest.mark.parametrize("participants", [
    [],
    [{"actor": {"reference": "Practitioner/dr-a"}}, {"actor": {"reference": "Location/l"}}],
    [{"actor": {"display": "Jane Doe"}}],  # a patient named but not referenced
    ["Patient/p1", {"actor": "Patient/p1"}],  # malformed participants
])
def test_an_appointment_without_a_patient_participant_is_refused(
        participants: list[Any]) -> None:
    resource = appointment("a1", START)
    resource["participant"] = participants
    with pytest.raises(AppointmentError, match=r"^Appointment/a1 has no Patient participant$"):
        visit_from_appointment(resource, TZ)


def test_the_patient_is_found_among_participants_in_any_order() -> None:
    resource = appointment("a1", START, pid="p9")
    resource["participant"].reverse()
    assert visit_from_appointment(resource, TZ).patient_id == "p9"


@pytest.mark.parametrize(("reference", "pid"), [
    ("Patient/p9", "p9"),
    ("Patient/123/_history/2", "123"),  # the version does not change whose chart it is
    ("https://ehr.example/fhir/R4/Patient/p9", "p9"),  # the server's own base
    ("https://ehr.example/fhir/R4/Patient/p9/_history/7", "p9"),
])
def test_a_patient_reference_names_a_local_patient(reference: str, pid: str) -> None:
    resource = appointment("a1", START)
    resource["participant"][0]["actor"]["reference"] = reference
    visit = visit_from_appointment(resource, TZ, base_url="https://ehr.example/fhir/R4/")
    assert visit.patient_id == pid


@pytest.mark.parametrize("reference", [
    "Patient/../../metadata",  # would walk up the server's URL space
    "Patient/..",
    "https://other-ehr.example/fhir/Patient/p9",  # another server's patient p9
    "https://ehr.example/fhir/R4-other/Patient/p9",
    "./Patient/p9",
    "Patient/p9/extra",
    "Patient/p9/_history",
    "Patient/a b",
    "Patient/" + "x" * 65,
])
def test_any_other_patient_reference_is_planned_for_no_one(reference: str) -> None:
    resource = appointment("a1", START)
    resource["participant"][0]["actor"]["reference"] = reference
    with pytest.raises(AppointmentError, match=r"^Appointment/a1: its patient reference is "
                       r"not Patient/<id> on this server; not planned for anyone$"):
        visit_from_appointment(resource, TZ, base_url="https://ehr.example/fhir/R4")


def test_without_a_base_url_an_absolute_patient_reference_names_no_one() -> None:
    resource = appointment("a1", START)
    resource["participant"][0]["actor"]["reference"] = "https://ehr.example/fhir/Patient/p1"
    with pytest.raises(AppointmentError, match="not planned for anyone"):
        visit_from_appointment(resource, TZ)


@pytest.mark.parametrize("start", ["0001-01-01T00:00+14:00", "9999-12-31T23:59:59-12:00"])
def test_a_start_the_calendar_cannot_hold_in_the_clinic_zone_is_refused(start: str) -> None:
    with pytest.raises(AppointmentError, match=r"^Appointment/a1 has no readable start$"):
        visit_from_appointment(appointment("a1", start), TZ)


@pytest.mark.parametrize(("path", "value"), [
    ("serviceType", "checkup"), ("serviceType", [5]), ("reasonCode", [{"coding": 3}]),
    ("appointmentType", ["x"]), ("participant", {"actor": "Patient/x"}),
])
def test_a_field_of_the_wrong_type_refuses_that_appointment(path: str, value: Any) -> None:
    resource = appointment("a1", START)
    resource[path] = value
    try:
        visit = visit_from_appointment(resource, TZ)
    except AppointmentError as exc:
        assert str(exc).startswith("Appointment/a1 ")
    else:  # or it is read as far as it goes
        assert visit.appointment_id == "a1"


def test_a_start_with_only_a_date_is_midnight_in_the_clinic() -> None:
    visit = visit_from_appointment(appointment("a1", "2026-12-01"), TZ)
    assert visit.start is not None and visit.start.isoformat() == "2026-12-01T00:00:00-06:00"


def test_a_start_without_an_offset_is_clinic_time() -> None:
    visit = visit_from_appointment(appointment("a1", "2026-12-01T09:00:00"), TZ)
    assert visit.start is not None and visit.start.isoformat() == "2026-12-01T09:00:00-06:00"


@pytest.mark.parametrize(("start", "local"), [
    ("2026-12-01T15:00:00Z", "2026-12-01T09:00:00-06:00"),
    ("2026-12-01T10:00:00-05:00", "2026-12-01T09:00:00-06:00"),
    # 03:30 UTC on 2 December is still the evening of 1 December in Chicago
    ("2026-12-02T03:30:00+00:00", "2026-12-01T21:30:00-06:00"),
    # summer time: Chicago is UTC-5 in July
    ("2026-07-01T14:00:00Z", "2026-07-01T09:00:00-05:00"),
])
def test_a_start_with_an_offset_is_converted_to_the_clinic_zone(start: str,
                                                                 local: str) -> None:
    visit = visit_from_appointment(appointment("a1", start), TZ)
    assert visit.start is not None and visit.start.isoformat() == local


def test_without_a_time_zone_the_visit_is_in_utc() -> None:
    visit = visit_from_appointment(appointment("a1", "2026-12-01T09:00:00-06:00"))
    assert visit.start is not None and visit.start.isoformat() == "2026-12-01T15:00:00+00:00"


@pytest.mark.parametrize("start", [None, "", "soon", "12/01/2026 09:00", 20261201])
def test_an_unreadable_start_is_refused(start: Any) -> None:
    resource = appointment("a1", START)
    resource["start"] = start
    with pytest.raises(AppointmentError, match=r"^Appointment/a1 has no readable start$"):
        visit_from_appointment(resource, TZ)


@pytest.mark.parametrize("start", ["2026-12", "2026"])
def test_a_start_without_a_day_is_refused(start: str) -> None:
    with pytest.raises(AppointmentError, match="has no readable start"):
        visit_from_appointment(appointment("a1", start), TZ)


def test_a_practitioner_is_preferred_to_a_practitioner_role() -> None:
    resource = appointment("a1", START, practitioner="PractitionerRole/r1")
    resource["participant"].append({"actor": {"reference": "Practitioner/dr-b"}})
    assert visit_from_appointment(resource, TZ).practitioner == Ref("Practitioner/dr-b")


def test_a_practitioner_role_stands_in_when_there_is_no_practitioner() -> None:
    resource = appointment("a1", START, practitioner="PractitionerRole/r1")
    assert visit_from_appointment(resource, TZ).practitioner == \
        Ref("PractitionerRole/r1", "Dr A")


def test_who_and_where_are_optional() -> None:
    visit = visit_from_appointment(appointment("a1", START, practitioner=None, location=None),
                                   TZ)
    assert (visit.practitioner, visit.location) == (None, None)


def test_a_display_that_is_not_text_is_dropped() -> None:
    resource = appointment("a1", START)
    resource["participant"][2]["actor"]["display"] = {"text": "Main"}
    assert visit_from_appointment(resource, TZ).location == Ref("Location/loc-main")


@pytest.mark.parametrize(("service_type", "appointment_type", "label"), [
    ([concept("185349003", display="Encounter for check up", text="Annual physical")], None,
     "Annual physical"),
    ([concept("185349003", display="Encounter for check up")], None,
     "Encounter for check up"),
    ([concept("185349003")], None, "185349003"),
    # only the first service type names the visit
    ([concept("1", text="First"), concept("2", text="Second")], None, "First"),
    # appointmentType when there is no service type
    (None, concept("ROUTINE", display="Routine appointment",
                   system="http://terminology.hl7.org/CodeSystem/v2-0276"),
     "Routine appointment"),
    ([concept("1", text="Service")], concept("FOLLOWUP", text="Follow-up"), "Service"),
    (None, None, None),
])
def test_the_visit_type_is_the_service_type_else_the_appointment_type(
        service_type: list[dict[str, Any]] | None, appointment_type: dict[str, Any] | None,
        label: str | None) -> None:
    resource = appointment("a1", START)
    if service_type is not None:
        resource["serviceType"] = service_type
    if appointment_type is not None:
        resource["appointmentType"] = appointment_type
    assert visit_from_appointment(resource, TZ).service_type == label


def test_reason_and_description() -> None:
    resource = appointment("a1", START)
    resource["reasonCode"] = [concept("38341003", display="Hypertension"),
                              concept("44054006", display="Diabetes")]
    resource["description"] = "Blood pressure follow-up"
    visit = visit_from_appointment(resource, TZ)
    assert (visit.reason, visit.description) == ("Hypertension", "Blood pressure follow-up")
    resource["description"] = ["not", "text"]
    del resource["reasonCode"]
    visit = visit_from_appointment(resource, TZ)
    assert (visit.reason, visit.description) == (None, None)


# --- in_window --------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "in_it"), [
    ("booked", True), ("arrived", True), ("pending", True), ("proposed", False),
    ("cancelled", False), ("noshow", False), ("fulfilled", False), ("checked-in", False),
    ("entered-in-error", False), ("waitlist", False)])
def test_only_booked_like_statuses_are_in_the_window(status: str, in_it: bool) -> None:
    assert counted(appointment("a1", START, status=status)) is in_it


def test_the_window_says_which_statuses_count() -> None:
    resource = appointment("a1", START, status="fulfilled")
    assert counted(resource, statuses=("fulfilled",))
    assert not counted(appointment("a2", START), statuses=("fulfilled",))


@pytest.mark.parametrize(("start", "in_it"), [
    ("2026-12-01T00:00:00-06:00", True),  # local midnight opens the day
    ("2026-12-01T23:59:00-06:00", True),
    ("2026-12-01T23:59:59.999-06:00", True),
    ("2026-12-02T00:00:00-06:00", False),  # the next local midnight closes it
    ("2026-11-30T23:59:00-06:00", False),
    # the same instants written in UTC
    ("2026-12-01T06:00:00Z", True),  # 00:00 on 1 December in Chicago
    ("2026-12-01T05:59:00Z", False),  # 23:59 on 30 November in Chicago: the day before
    ("2026-12-02T05:59:00Z", True),  # 23:59 on 1 December in Chicago, 2 December in UTC
    ("2026-12-02T06:00:00Z", False),
    ("2026-12-01", True),  # a date alone is that day
])
def test_the_window_is_the_clinic_day_in_local_time(start: str, in_it: bool) -> None:
    assert counted(appointment("a1", start)) is in_it


def test_the_window_zone_decides_even_for_a_visit_read_in_another_zone() -> None:
    resource = appointment("a1", "2026-12-01T05:30:00Z")  # 23:30 on 30 November in Chicago
    visit = visit_from_appointment(resource)  # read in UTC: 1 December
    assert visit.day == date(2026, 12, 1)
    assert not in_window(resource, visit, window())


def test_the_day_summer_time_ends_has_twenty_five_hours() -> None:
    # 1 November 2026: clocks go back at 02:00 in Chicago, so the day ends at 06:00Z.
    day = VisitWindow(start=date(2026, 11, 1), end=date(2026, 11, 2), timezone=TZ)

    def on_day(start: str) -> bool:
        resource = appointment("a1", start)
        return in_window(resource, visit_from_appointment(resource, TZ), day)

    assert on_day("2026-11-01T05:00:00Z")  # 00:00 CDT
    assert on_day("2026-11-02T05:59:00Z")  # 23:59 CST
    assert not on_day("2026-11-02T06:00:00Z")
    assert not on_day("2026-11-01T04:59:00Z")


def test_a_visit_without_a_start_is_never_in_the_window() -> None:
    visit = Visit(appointment_id="a1", patient_id="p1", start=None, status="booked")
    assert not in_window(appointment("a1", START), visit, window())


@pytest.mark.parametrize(("wanted", "in_it"), [
    (("dr-a",), True), (("Practitioner/dr-a",), True), (("dr-b", "dr-a"), True),
    (("dr-b",), False), (("Practitioner/dr-b",), False)])
def test_practitioner_filter_by_bare_id_or_reference(wanted: tuple[str, ...],
                                                     in_it: bool) -> None:
    assert counted(appointment("a1", START, practitioner="dr-a"),
                   practitioners=wanted) is in_it


def test_practitioner_filter_matches_a_practitioner_role() -> None:
    resource = appointment("a1", START, practitioner="PractitionerRole/r1")
    assert counted(resource, practitioners=("PractitionerRole/r1",))
    assert counted(resource, practitioners=("r1",))
    assert not counted(resource, practitioners=("PractitionerRole/r2",))


def test_a_filter_excludes_visits_without_that_participant() -> None:
    bare = appointment("a1", START, practitioner=None, location=None)
    assert counted(bare)
    assert not counted(bare, practitioners=("dr-a",))
    assert not counted(bare, locations=("loc-main",))


@pytest.mark.parametrize(("wanted", "in_it"), [
    (("east",), True), (("Location/east",), True), (("main", "east"), True),
    (("main",), False), (("Location/main",), False)])
def test_location_filter_by_bare_id_or_reference(wanted: tuple[str, ...], in_it: bool) -> None:
    assert counted(appointment("a1", START, location="east"), locations=wanted) is in_it


def test_practitioner_and_location_filters_must_both_match() -> None:
    resource = appointment("a1", START, practitioner="dr-a", location="east")
    assert counted(resource, practitioners=("dr-a",), locations=("east",))
    assert not counted(resource, practitioners=("dr-a",), locations=("main",))
    assert not counted(resource, practitioners=("dr-b",), locations=("east",))


@pytest.mark.parametrize(("wanted", "in_it"), [
    (("185349003",), True),
    (("http://snomed.info/sct|185349003",), True),
    (("410620009", "185349003"), True),
    (("http://loinc.org|185349003",), False),  # the right code in another system
    (("410620009",), False),
])
def test_service_type_filter_by_code_or_system_and_code(wanted: tuple[str, ...],
                                                        in_it: bool) -> None:
    assert counted(appointment("a1", START, service="185349003"),
                   service_types=wanted) is in_it


def test_any_of_several_service_types_and_codings_matches() -> None:
    resource = appointment("a1", START)
    resource["serviceType"] = [
        concept("ROUTINE", system="urn:oid:1.2.3"),
        {"coding": [{"system": "urn:clinic", "code": "PE"},
                    {"system": "http://snomed.info/sct", "code": "185349003"}]}]
    assert counted(resource, service_types=("urn:clinic|PE",))
    assert counted(resource, service_types=("185349003",))
    assert counted(resource, service_types=("ROUTINE",))


def test_the_service_type_filter_reads_service_type_not_appointment_type() -> None:
    # The server-side search parameter is service-type too: appointmentType never matches.
    resource = appointment("a1", START)
    resource["appointmentType"] = concept("ROUTINE",
                                          system="http://terminology.hl7.org/CodeSystem/v2-0276")
    assert counted(resource)
    assert not counted(resource, service_types=("ROUTINE",))


# --- sort_visits ------------------------------------------------------------------------


def visit(aid: str, start: str | None) -> Visit:
    return Visit(appointment_id=aid, patient_id="p1", status="booked",
                 start=datetime.fromisoformat(start) if start else None)


def test_visits_are_sorted_by_start_then_appointment_id() -> None:
    visits = [visit("c", "2026-12-01T10:00:00-06:00"), visit("b", "2026-12-01T09:00:00-06:00"),
              visit("a", "2026-12-01T10:00:00-06:00"), visit("d", "2026-12-01T08:00:00-06:00")]
    assert [v.appointment_id for v in sort_visits(visits)] == ["d", "b", "a", "c"]


def test_starts_in_different_zones_are_compared_as_instants() -> None:
    visits = [visit("late", "2026-12-01T09:30:00-06:00"),  # 15:30Z
              visit("b-same", "2026-12-01T15:00:00+00:00"),
              visit("a-same", "2026-12-01T10:00:00-05:00"),  # 15:00Z
              visit("early", "2026-12-01T14:00:00Z")]
    assert [v.appointment_id for v in sort_visits(visits)] == [
        "early", "a-same", "b-same", "late"]


def test_visits_without_a_start_come_first_by_id() -> None:
    visits = [visit("a2", "2026-12-01T09:00:00-06:00"), visit("z", None), visit("a1", None)]
    assert [v.appointment_id for v in sort_visits(visits)] == ["a1", "z", "a2"]


def test_sorting_returns_a_new_list() -> None:
    visits = [visit("b", "2026-12-01T10:00:00-06:00"), visit("a", "2026-12-01T09:00:00-06:00")]
    assert [v.appointment_id for v in sort_visits(visits)] == ["a", "b"]
    assert [v.appointment_id for v in visits] == ["b", "a"]
