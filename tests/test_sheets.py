"""Planning sheets: what a care team reads must match the plan, be escaped and never say None.

Plans are built directly from previsit.plan objects so that each test controls exactly
which statuses, orders, flags and proposals a visit has.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pypdf
import pytest

from previsit import pdf, sheets
from previsit.errors import PdfUnavailableError
from previsit.plan import (
    DayPlan,
    Finding,
    Kind,
    LabProgress,
    LabState,
    Order,
    ProposalOutcome,
    ProposalSummary,
    Ref,
    Role,
    Status,
    Visit,
    VisitPlan,
)
from previsit.sheets import tasks

CLINIC = ZoneInfo("America/Chicago")
DAY = date(2026, 12, 1)  # a Tuesday
MINUTES = {"lab": 3.0, "screening": 2.0, "immunization": 1.5, "renewal": 2.0}


# --- builders --------------------------------------------------------------------------


def visit(aid: str = "a1", *, hour: int = 9, minute: int = 20, pid: str = "p1",
          practitioner: tuple[str, str | None] | None = ("Practitioner/dr-ruiz", "Dr. Ana Ruiz"),
          location: tuple[str, str | None] | None = ("Location/north", "North Clinic"),
          service_type: str | None = "Annual wellness visit", reason: str | None = None,
          start: datetime | str | None = "auto", day: date = DAY) -> Visit:
    when = datetime(day.year, day.month, day.day, hour, minute, tzinfo=CLINIC) \
        if start == "auto" else start
    assert when is None or isinstance(when, datetime)
    return Visit(appointment_id=aid, patient_id=pid, start=when, status="booked",
                 practitioner=Ref(*practitioner) if practitioner else None,
                 location=Ref(*location) if location else None,
                 service_type=service_type, reason=reason)


def order(code: str, display: str, *, role: Role = Role.MA, before: bool = True,
          lead: int = 7, category: str = "laboratory") -> Order:
    return Order(system="http://loinc.org", code=code, display=display, category=category,
                 role=role, before_visit=before, lead_days=lead)


def finding(rule_id: str, status: Status, kind: Kind = Kind.LAB, *, role: Role = Role.MA,
            title: str | None = None, why: str | None = None, orders: tuple[Order, ...] = (),
            flags: tuple[str, ...] = (), due: date | None = None) -> Finding:
    return Finding(rule_id=rule_id, title=title or rule_id.replace("-", " ").capitalize(),
                   kind=kind, status=status, explanation=why or f"why {rule_id}", role=role,
                   orders=orders, flags=flags, due_date=due)


def proposal(code: str, display: str, *rule_ids: str, outcome: str = "proposed",
             occurrence: date | None = None, existing: str | None = None,
             role: Role = Role.MA) -> ProposalSummary:
    return ProposalSummary(resource_type="ServiceRequest", identifier=f"id-{code}", code=code,
                           display=display, rule_ids=rule_ids, occurrence=occurrence,
                           role=role, outcome=outcome, existing=existing)


def vplan(*findings: Finding, v: Visit | None = None, name: str | None = "Maria Alvarez",
          age: int | None = 67, sex: str | None = "female", mrn: str | None = "MRN-1001",
          proposals: tuple[ProposalSummary, ...] = (), issues: tuple[str, ...] = (),
          failed: str | None = None) -> VisitPlan:
    return VisitPlan(visit=v or visit(), patient_name=name, patient_age=age, patient_sex=sex,
                     patient_mrn=mrn, findings=findings, proposals=proposals, issues=issues,
                     failed=failed)


def day_of(*plans: VisitPlan) -> DayPlan:
    return DayPlan(generated_for=DAY, days=1, plans=plans)


HBA1C = order("4548-4", "Hemoglobin A1c", lead=7)
FLU = order("88", "Influenza vaccine", role=Role.NURSE, before=False, category="immunization")
LISINOPRIL = order("314076", "lisinopril 10 MG Oral Tablet", role=Role.PHARMACIST, before=False,
                   category="medication")


def full_plan(**kwargs: Any) -> VisitPlan:
    """One visit with something in every section."""
    return vplan(
        finding("hba1c-monitoring", Status.OVERDUE, title="HbA1c",
                why="last HbA1c 9.2 % on 2026-05-01, over 3 months ago while above goal",
                orders=(HBA1C,), flags=("abnormal", "physician-review"),
                due=date(2026, 8, 1)),
        finding("influenza", Status.DUE, Kind.IMMUNIZATION, role=Role.NURSE,
                title="Influenza vaccine", why="no influenza vaccine this season",
                orders=(FLU,)),
        finding("colorectal", Status.OVERDUE, Kind.SCREENING, title="Colorectal cancer screening",
                why="last FIT on 2025-06-01; due since 2026-06-01",
                orders=(order("57905-2", "FIT", before=False, category="laboratory"),)),
        finding("renewal", Status.DUE, Kind.RENEWAL, role=Role.PHARMACIST,
                title="Renew lisinopril 10 MG Oral Tablet", why="runs out 2026-12-20",
                orders=(LISINOPRIL,)),
        finding("renewal", Status.DUE, Kind.RENEWAL, role=Role.PHYSICIAN,
                title="Renew oxycodone 5 MG Oral Tablet",
                why="runs out 2026-12-10; controlled substance: physician review",
                flags=("controlled-substance", "physician-review")),
        finding("lung-cancer", Status.DUE, Kind.SCREENING, role=Role.PHYSICIAN,
                title="Lung cancer screening", why="30 pack-years, quit 2019",
                orders=(order("16334-0", "Low-dose CT chest", role=Role.PHYSICIAN,
                              before=False, category="imaging"),),
                flags=("physician-review", "shared-decision")),
        finding("aaa", Status.UNKNOWN, Kind.SCREENING, title="AAA screening",
                why="smoking history not recorded, so cannot decide"),
        finding("breast", Status.SATISFIED, Kind.SCREENING, title="Breast cancer screening",
                why="mammography on 2025-10-01 (every 2 years); next due 2027-10-01",
                due=date(2027, 10, 1)),
        finding("cervical", Status.EXCLUDED, Kind.SCREENING, title="Cervical cancer screening",
                why="excluded: hysterectomy with no residual cervix"),
        finding("hiv", Status.NOT_APPLICABLE, Kind.SCREENING, title="HIV screening",
                why="applies to ages 15–65; patient is 67"),
        finding("hcv-na", Status.NOT_APPLICABLE, Kind.SCREENING, title="Hepatitis C screening",
                why="applies to ages 18–79"),
        proposals=(proposal("4548-4", "Hemoglobin A1c", "hba1c-monitoring",
                            occurrence=date(2026, 11, 24)),
                   proposal("88", "Influenza vaccine", "influenza", outcome="already-open",
                            existing="ServiceRequest/sr-77", role=Role.NURSE),
                   proposal("314076", "lisinopril 10 MG Oral Tablet", "renewal",
                            role=Role.PHARMACIST)),
        **kwargs)


# --- reading the HTML as a person would ---------------------------------------------------


class _Text(HTMLParser):
    """Visible text, overall and per element carrying a class (section.before, tr, …)."""

    _VOID = frozenset({"meta", "col", "br", "img", "input", "link", "hr", "wbr"})
    _INLINE = frozenset({"b", "strong", "i", "em", "code"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.hidden = 0
        self.text: list[str] = []
        self.by_class: dict[str, list[str]] = {}
        self.order: list[str] = []  # h2 texts in document order
        self.rows: list[list[str]] = []  # table rows: the text of each cell
        self._h2: list[str] | None = None
        self._cell: list[str] | None = None
        self.tags: set[str] = set()
        self.attributes: set[str] = set()

    def _gap(self, tag: str) -> None:
        # what a browser lays out apart (cells, blocks, badges) reads apart
        if tag not in self._INLINE:
            self.handle_data(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._gap(tag)
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)
        if tag in self._VOID:
            return
        cls = dict(attrs).get("class") or ""
        self.stack.append((tag, cls))
        if tag in ("style", "title", "head"):
            self.hidden += 1
        if tag == "h2":
            self._h2 = []
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        self._gap(tag)
        if tag in self._VOID:
            return
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag in ("style", "title", "head"):
                self.hidden -= 1
            if open_tag == "h2" and self._h2 is not None:
                self.order.append(" ".join("".join(self._h2).split()))
                self._h2 = None
            if open_tag in ("td", "th") and self._cell is not None and self.rows:
                self.rows[-1].append(" ".join("".join(self._cell).split()))
                self._cell = None
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        self.text.append(data)
        if self._h2 is not None:
            self._h2.append(data)
        if self._cell is not None:
            self._cell.append(data)
        for _, cls in self.stack:
            for name in cls.split():
                self.by_class.setdefault(name, []).append(data)


def read(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return parser


def visible(html: str) -> str:
    return " ".join("".join(read(html).text).split())


def section(html: str, name: str) -> str:
    return " ".join("".join(read(html).by_class.get(name, [])).split())


# --- safety -------------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def hostile_plan() -> VisitPlan:
    return vplan(
        finding("x", Status.DUE, title=f"Lab {HOSTILE}", why='"><img src=x onerror=alert(2)>',
                orders=(order("1", HOSTILE),)),
        v=visit(practitioner=("Practitioner/1", "<b>Dr</b> Evil"),
                location=("Location/1", "North & <i>South</i>"), reason=HOSTILE),
        name=HOSTILE, mrn="<MRN>", issues=(f"Observation/1: {HOSTILE}",))


@pytest.mark.parametrize("render", ["visit", "visits", "huddle"])
def test_fhir_strings_print_as_text(render: str) -> None:
    plan = hostile_plan()
    html = {"visit": lambda: sheets.render_visit_sheet(plan),
            "visits": lambda: sheets.render_visit_sheets(day_of(plan)),
            "huddle": lambda: sheets.render_huddle(day_of(plan), minutes_saved=MINUTES)}[render]()
    assert "<script" not in html.lower()
    assert "<img" not in html.lower() and "<b>Dr" not in html and "<i>South" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert HOSTILE in visible(html)  # the reader sees the name exactly as recorded


def test_filter_values_are_escaped_in_the_huddle_scope() -> None:
    html = sheets.render_huddle(day_of(full_plan()), location=HOSTILE, minutes_saved=MINUTES)
    assert "<script" not in html and HOSTILE in visible(html)


def test_missing_values_render_as_placeholders_never_none() -> None:
    plan = vplan(finding("x", Status.DUE, orders=(order("1", "Lab"),)),
                 v=visit(start=None, practitioner=None, location=None, service_type=None),
                 name=None, age=None, sex=None, mrn=None)
    for html in (sheets.render_visit_sheet(plan), sheets.render_visit_sheets(day_of(plan)),
                 sheets.render_huddle(day_of(plan), minutes_saved=MINUTES)):
        text = visible(html)
        assert not re.search(r"\bNone\b", html)
        assert "name not recorded" in text
        assert "time not recorded" in text
    sheet = visible(sheets.render_visit_sheet(plan))
    assert "age not recorded" in sheet and "sex not recorded" in sheet
    assert "MRN not recorded" in sheet and "date not recorded" in sheet
    huddle = visible(sheets.render_huddle(day_of(plan), minutes_saved=MINUTES))
    assert "age and sex not recorded" in huddle


def test_blank_name_is_a_placeholder_too() -> None:
    html = sheets.render_visit_sheet(vplan(name="   "))
    assert "name not recorded" in visible(html)


def test_pages_load_nothing_from_outside() -> None:
    day = day_of(full_plan(), hostile_plan())
    for html in (sheets.render_visit_sheets(day),
                 sheets.render_huddle(day, minutes_saved=MINUTES)):
        assert not re.search(r"https?://", html)
        parsed = read(html)
        assert not parsed.attributes & {"src", "href", "srcset", "action", "data", "poster"}
        assert not parsed.tags & {"link", "script", "img", "iframe", "object", "embed"}
        assert "url(" not in html and "@import" not in html
        assert "Content-Security-Policy" in html and "default-src 'none'" in html


# --- the visit sheet ---------------------------------------------------------------------


def test_header_shows_patient_and_appointment() -> None:
    plan = full_plan(v=visit(reason="Diabetes follow-up"))
    text = section(sheets.render_visit_sheet(plan), "visit-header") + " " + \
        section(sheets.render_visit_sheet(plan), "visit-meta")
    for expected in ("Maria Alvarez", "67 y", "Female", "MRN MRN-1001", "9:20 AM",
                     "Tue Dec 1, 2026", "Dr. Ana Ruiz", "North Clinic", "Annual wellness visit",
                     "Diabetes follow-up"):
        assert expected in text, expected


def test_time_is_the_stored_local_time_not_utc() -> None:
    start = datetime(2026, 12, 1, 15, 5, tzinfo=CLINIC)  # 21:05 UTC
    text = visible(sheets.render_visit_sheet(full_plan(v=visit(start=start))))
    assert "3:05 PM" in text and "9:05 PM" not in text


def test_sections_come_in_the_order_a_team_works() -> None:
    html = sheets.render_visit_sheet(full_plan(issues=("Observation/9: no value",)))
    headings = read(html).order
    wanted = ["Before the visit", "At the visit", "Needs physician review", "Could not decide",
              "Data issues", "Up to date"]
    positions = [next(i for i, h in enumerate(headings) if w in h) for w in wanted]
    assert positions == sorted(positions)


def test_items_land_in_their_sections() -> None:
    html = sheets.render_visit_sheet(full_plan())
    before, at = section(html, "before"), section(html, "at-visit")
    review, unknown = section(html, "review"), section(html, "unknown")
    done = section(html, "up-to-date")
    assert "HbA1c" in before and "draw by Tue Nov 24" in before
    assert "Influenza vaccine" in at and "Colorectal cancer screening" in at
    assert "Renew lisinopril" in at and "Lung cancer screening" in review
    # the controlled-substance renewal is the physician's decision only: not "to sign"
    assert "oxycodone" not in at and "oxycodone" in review
    assert "Controlled substance" in review and "Abnormal last value" in review
    assert "Shared decision" in review
    # the abnormal HbA1c is drawn by the MA and also on the physician's list
    assert "HbA1c" in review and "Drawn before the visit (see above)" in review
    assert "AAA screening" in unknown and "smoking history not recorded" in unknown
    assert "Breast cancer screening" in done and "next due 2027-10-01" in done
    assert "Cervical cancer screening: excluded: hysterectomy" in done
    assert "HIV screening" not in visible(html)
    assert "Not applicable to this patient (age, sex or conditions): 2 rules" in done


def test_every_actionable_finding_is_on_the_sheet_once_per_work_section() -> None:
    plan = full_plan()
    html = sheets.render_visit_sheet(plan)
    work = " ".join(section(html, s) for s in ("before", "at-visit", "review"))
    for f in plan.actionable:
        assert work.count(f.title) >= 1, f.title
    rows = [r for r in read(html).rows if r and r[0] == "☐"]
    # 6 actionable findings + the abnormal HbA1c repeated for review + the unknown one
    assert len(rows) == 8
    at = section(html, "at-visit")
    assert "Lung cancer screening" not in at and "oxycodone" not in at


def test_each_item_says_what_why_who() -> None:
    html = sheets.render_visit_sheet(full_plan())
    row = next(r for r in read(html).rows if any("Influenza vaccine" in c for c in r))
    _, what, why, who, draft = row
    assert what.startswith("! Due Influenza vaccine")  # status as a word and a symbol
    assert why == "no influenza vaccine this season"
    assert who == "Nurse"
    assert "Already ordered" in draft and "ServiceRequest/sr-77" in draft


def _rows_by_title(html: str) -> dict[str, list[str]]:
    """The first row of each item (its work section), keyed by the item's title."""
    rows: dict[str, list[str]] = {}
    for row in read(html).rows:
        if len(row) == 5 and row[0] == "☐":
            title = re.sub(r"^\S+ (Overdue|Due soon|Due|Unknown) ", "", row[1])
            rows.setdefault(title.split(" ▸")[0].split(" ⚑")[0], row)
    return rows


def test_draft_order_outcomes_are_reported_per_item() -> None:
    rows = _rows_by_title(sheets.render_visit_sheet(full_plan()))
    assert rows["HbA1c"][4] == "Written"
    assert rows["Renew lisinopril 10 MG Oral Tablet"][4] == "Written"
    assert rows["Colorectal cancer screening"][4] == "No draft"
    assert rows["Renew oxycodone 5 MG Oral Tablet"][4] == "Physician decides"


def test_orders_that_fared_differently_are_named() -> None:
    egfr, uacr = order("98979-8", "eGFR"), order("9318-7", "Urine albumin/creatinine")
    plan = vplan(finding("kidney", Status.DUE, title="Kidney health", orders=(egfr, uacr)),
                 proposals=(proposal("98979-8", "eGFR", "kidney"),
                            proposal("9318-7", "Urine albumin/creatinine", "kidney",
                                     outcome="already-open", existing="ServiceRequest/9")))
    draft = _rows_by_title(sheets.render_visit_sheet(plan))["Kidney health"][4]
    assert draft == "eGFR: Written Urine albumin/creatinine: Already ordered ServiceRequest/9"
    same = replace(plan, proposals=(proposal("98979-8", "eGFR", "kidney"),
                                    proposal("9318-7", "Urine albumin/creatinine", "kidney")))
    assert _rows_by_title(sheets.render_visit_sheet(same))["Kidney health"][4] == "Written"


def test_an_order_repeated_by_two_requirements_is_listed_once() -> None:
    tdap = order("115", "Tdap", role=Role.NURSE, before=False, category="immunization")
    plan = vplan(finding("td", Status.DUE, Kind.IMMUNIZATION, role=Role.NURSE, title="Td/Tdap",
                         orders=(tdap, tdap)))
    assert section(sheets.render_visit_sheet(plan), "at-visit").count("▸ Tdap") == 1


@pytest.mark.parametrize(("outcome", "text"), [
    ("proposed", "Written"),
    ("already-open", "Already ordered"),
    ("already-written", "Written earlier"),
    ("earlier-visit", "At the earlier visit today"),
    ("declined", "Declined earlier"),
    ("done", "Already done"),
    ("dry-run", "Not written (dry run)"),
    ("later-visit", "At the later visit today"),
    ("lab-only", "Not at a lab-only appointment"),
])
def test_every_proposal_outcome_has_words(outcome: str, text: str) -> None:
    plan = vplan(finding("hba1c", Status.DUE, orders=(HBA1C,)),
                 proposals=(proposal("4548-4", "Hemoglobin A1c", "hba1c",
                                     outcome=ProposalOutcome(outcome)),))
    assert section(sheets.render_visit_sheet(plan), "draft") == text


def test_the_outcome_words_cover_every_outcome() -> None:
    assert {o.value for o in ProposalOutcome} == {
        "proposed", "already-open", "already-written", "earlier-visit", "declined", "done",
        "dry-run", "later-visit", "lab-only"}


def test_merged_proposal_matches_both_rules() -> None:
    potassium = order("2823-3", "Potassium")
    plan = vplan(finding("ace-arb", Status.DUE, title="ACE/ARB monitoring", orders=(potassium,)),
                 finding("lithium", Status.DUE, title="Lithium monitoring", orders=(potassium,)),
                 proposals=(proposal("2823-3", "Potassium", "ace-arb", "lithium"),))
    assert section(sheets.render_visit_sheet(plan), "draft") == "Written Written"


def test_draw_by_is_visit_date_less_lead_days_without_a_proposal() -> None:
    plan = vplan(finding("lipids", Status.DUE, orders=(order("57698-3", "Lipid panel",
                                                             lead=3),)))
    assert "draw by Sat Nov 28" in section(sheets.render_visit_sheet(plan), "before")
    assert tasks.draw_by(plan, plan.findings[0], plan.findings[0].orders[0]) == \
        date(2026, 11, 28)


def test_draw_by_follows_the_written_proposal() -> None:
    plan = vplan(finding("lipids", Status.DUE, orders=(order("57698-3", "Lipid panel"),)),
                 proposals=(proposal("57698-3", "Lipid panel", "lipids",
                                     occurrence=date(2026, 11, 20)),))
    assert "draw by Fri Nov 20" in section(sheets.render_visit_sheet(plan), "before")


def test_before_the_visit_is_sorted_by_draw_by_date() -> None:
    plan = vplan(finding("late", Status.DUE, title="Late lab", orders=(order("1", "L", lead=2),)),
                 finding("early", Status.DUE, title="Early lab",
                         orders=(order("2", "E", lead=10),)))
    before = section(sheets.render_visit_sheet(plan), "before")
    assert before.index("Early lab") < before.index("Late lab")


def test_satisfied_controlled_prescription_is_not_a_review_item() -> None:
    plan = vplan(finding("renewal", Status.SATISFIED, Kind.RENEWAL, role=Role.PHYSICIAN,
                         title="Renew alprazolam", why="runs until 2027-06-01",
                         flags=("controlled-substance", "physician-review")))
    html = sheets.render_visit_sheet(plan)
    assert "alprazolam" not in section(html, "review")
    assert "alprazolam" in section(html, "up-to-date")
    assert sheets.role_counts([plan])[Role.PHYSICIAN] == 0


def test_abnormal_value_on_an_up_to_date_lab_still_goes_to_the_physician() -> None:
    plan = vplan(finding("hba1c", Status.SATISFIED, title="HbA1c", why="HbA1c 10.1 %",
                         flags=("abnormal", "physician-review")))
    html = sheets.render_visit_sheet(plan)
    assert "HbA1c" in section(html, "review") and "Abnormal last value" in section(html, "review")
    assert [t.what for t in tasks.tasks(plan)] == ["Review: HbA1c (abnormal last value)"]


def test_empty_sections_say_so() -> None:
    text = visible(sheets.render_visit_sheet(vplan()))
    for sentence in ("No labs to draw before the visit.", "Nothing to offer or sign at the visit.",
                     "Nothing flagged for physician review.",
                     "Every rule could be decided from the record."):
        assert sentence in text


def test_failed_visit_is_unmistakable() -> None:
    plan = vplan(failed="record could not be read: HTTP 503 after 5 attempts")
    html = sheets.render_visit_sheet(plan)
    assert "Not planned" in section(html, "failed")
    assert "HTTP 503 after 5 attempts" in section(html, "failed")
    assert "Before the visit" not in visible(html)  # nothing pretends to be checked
    huddle = sheets.render_huddle(day_of(plan), minutes_saved=MINUTES)
    assert "Not planned" in section(huddle, "flags")
    assert "(1 not planned)" in visible(huddle)


def test_data_issues_are_listed() -> None:
    plan = full_plan(issues=("Observation/o9: could not be read (ValueError: bad date)",))
    html = sheets.render_visit_sheet(plan)
    assert "Observation/o9: could not be read" in section(html, "issues")
    assert "Data issues" in section(sheets.render_huddle(day_of(plan), minutes_saved=MINUTES),
                                    "flags")


def test_visit_sheets_put_each_visit_on_its_own_page() -> None:
    day = day_of(full_plan(), vplan(v=visit("a2", hour=8), name="Second Patient"))
    html = sheets.render_visit_sheets(day)
    assert html.count('<article class="sheet visit"') == 2
    # in time order: the 8:00 patient first
    assert html.index("Second Patient") < html.index("Maria Alvarez")
    css = (sheets.templates_dir() / "sheet.css").read_text()
    assert re.search(r"\.sheet \+ \.sheet \{[^}]*break-before: page", css)
    assert re.search(r"tr \{[^}]*break-inside: avoid", css)


@pytest.mark.parametrize(("paper", "size"), [("letter", "letter"), ("a4", "A4")])
def test_paper_size(paper: Any, size: str) -> None:
    assert f"@page {{ size: {size}; }}" in sheets.render_visit_sheet(vplan(), paper=paper)


def test_unknown_paper_size_is_refused() -> None:
    with pytest.raises(ValueError, match="letter, a4"):
        sheets.render_visit_sheet(vplan(), paper="legal")  # type: ignore[arg-type]


def test_sheets_render_the_same_from_plan_json() -> None:
    day = day_of(full_plan(), hostile_plan())
    again = DayPlan.from_json(day.to_json())
    assert sheets.render_visit_sheets(again) == sheets.render_visit_sheets(day)
    assert sheets.render_huddle(again, minutes_saved=MINUTES) == \
        sheets.render_huddle(day, minutes_saved=MINUTES)


# --- tasks, huddle, filters -------------------------------------------------------------------


def test_tasks_per_role() -> None:
    counts = sheets.role_counts([full_plan()])
    # MA: draw HbA1c, offer colorectal screening; nurse: flu; pharmacist: lisinopril;
    # physician: review HbA1c, oxycodone, lung screening (orders are the physician's)
    assert counts == {Role.MA: 2, Role.NURSE: 1, Role.PHARMACIST: 1, Role.PHYSICIAN: 3}


def test_a_finding_whose_orders_name_two_roles_is_a_task_for_each() -> None:
    plan = vplan(finding("mixed", Status.DUE, orders=(
        order("1", "Draw", role=Role.MA), order("2", "Counsel", role=Role.NURSE, before=False))))
    assert sorted(t.role.label for t in tasks.tasks(plan)) == ["MA", "Nurse"]


def test_huddle_row_counts_match_tasks() -> None:
    day = day_of(full_plan(), vplan(finding("flu", Status.DUE, Kind.IMMUNIZATION,
                                            role=Role.NURSE, orders=(FLU,)),
                                    v=visit("a2", hour=8, minute=40), name="Bob Stone"))
    html = sheets.render_huddle(day, minutes_saved=MINUTES)
    rows = [r for r in read(html).rows if len(r) == 8 and r[0] != "Time"]
    assert [r[0] for r in rows] == ["8:40 AM", "9:20 AM"]
    assert rows[0][1].startswith("Bob Stone") and rows[1][1].startswith("Maria Alvarez")
    assert rows[0][3:7] == ["–", "1", "–", "–"]
    assert rows[1][3:7] == ["2", "1", "1", "3"]
    text = visible(html)
    assert "MA 2 Nurse 2 Pharmacist 1 Physician 3" in " ".join(text.split())


def test_huddle_flags_what_changes_the_day() -> None:
    html = sheets.render_huddle(day_of(full_plan()), minutes_saved=MINUTES)
    flags = section(html, "flags")
    assert "Labs to draw HbA1c by Tue Nov 24" in flags
    assert "Overdue screening Colorectal cancer screening" in flags
    assert "Renewals lisinopril 10 MG Oral Tablet, oxycodone 5 MG Oral Tablet" in flags
    assert "Physician review" in flags and "oxycodone 5 MG Oral Tablet (controlled substance)" \
        in flags
    assert "Could not decide AAA screening" in flags


def test_huddle_lists_each_roles_work_with_time_and_patient() -> None:
    html = sheets.render_huddle(day_of(full_plan()), minutes_saved=MINUTES)
    ma = section(html, "role-ma")
    assert "Medical assistant 2 tasks at 1 visit" in ma
    # one line per visit, the tasks grouped by what is done
    assert "9:20 AM Maria Alvarez Draw by Tue Nov 24: HbA1c · Offer: Colorectal cancer screening" \
        in ma
    assert "Offer: Influenza vaccine" in section(html, "role-nurse")
    assert "Prepare for signature: Renew lisinopril 10 MG Oral Tablet" in \
        section(html, "role-pharmacist")
    physician = section(html, "role-physician")
    assert "Physician 3 tasks at 1 visit" in physician
    assert "Review: HbA1c (abnormal last value)" in physician
    assert "Decide on renewal: oxycodone 5 MG Oral Tablet (controlled substance)" in physician
    assert "Decide: Lung cancer screening (shared decision)" in physician


def test_huddle_role_lists_have_a_line_per_visit_in_time_order() -> None:
    flu = finding("flu", Status.DUE, Kind.IMMUNIZATION, role=Role.NURSE, orders=(FLU,),
                  title="Influenza vaccine")
    day = day_of(vplan(flu, v=visit("b", hour=11), name="Late Patient"),
                 vplan(flu, v=visit("a", hour=8), name="Early Patient"))
    nurse = section(sheets.render_huddle(day, minutes_saved=MINUTES), "role-nurse")
    assert "Nurse 2 tasks at 2 visits" in nurse
    assert nurse.index("8:20 AM Early Patient") < nurse.index("11:20 AM Late Patient")
    assert "Nothing for the medical assistant today." in visible(
        sheets.render_huddle(day, minutes_saved=MINUTES))


def _two_team_day() -> DayPlan:
    north = ("Location/north", "North Clinic")
    south = ("Location/south", "South Clinic")
    ruiz = ("Practitioner/dr-ruiz", "Dr. Ana Ruiz")
    chen = ("Practitioner/dr-chen", "Dr. Wei Chen")
    lab = finding("lipids", Status.DUE, orders=(order("57698-3", "Lipid panel"),))
    return day_of(
        vplan(lab, v=visit("a1", hour=9, practitioner=ruiz, location=north), name="Ann North"),
        vplan(lab, lab, v=visit("a2", hour=10, practitioner=chen, location=north),
              name="Ben North"),
        vplan(lab, v=visit("a3", hour=8, practitioner=chen, location=south), name="Cy South"),
        vplan(v=visit("a4", hour=11, practitioner=None, location=None), name="Di Nowhere"))


def test_groups_for_choosing_a_huddle() -> None:
    day = _two_team_day()
    assert [(g.key, g.label, g.visits) for g in sheets.practitioners(day)] == [
        ("Practitioner/dr-ruiz", "Dr. Ana Ruiz", 1), ("Practitioner/dr-chen", "Dr. Wei Chen", 2)]
    assert [(g.key, g.visits) for g in sheets.locations(day)] == [
        ("Location/north", 2), ("Location/south", 1)]


@pytest.mark.parametrize("wanted", ["Location/north", "north", "north clinic"])
def test_huddle_filtered_by_location(wanted: str) -> None:
    html = sheets.render_huddle(_two_team_day(), location=wanted, minutes_saved=MINUTES)
    text = visible(html)
    assert "Ann North" in text and "Ben North" in text
    assert "Cy South" not in text and "Di Nowhere" not in text
    assert "Location: North Clinic" in text


def test_huddle_filtered_by_practitioner_and_location() -> None:
    day = _two_team_day()
    text = visible(sheets.render_huddle(day, practitioner="dr-chen", minutes_saved=MINUTES))
    assert "Ben North" in text and "Cy South" in text and "Ann North" not in text
    both = visible(sheets.render_huddle(day, practitioner="Practitioner/dr-chen",
                                        location="Location/south", minutes_saved=MINUTES))
    assert "Cy South" in both and "Ben North" not in both
    assert "Practitioner: Dr. Wei Chen" in both


def test_visit_sheets_filtered_too() -> None:
    html = sheets.render_visit_sheets(_two_team_day(), location="south")
    assert html.count('<article class="sheet visit"') == 1 and "Cy South" in html


def test_a_filter_matching_nothing_says_so() -> None:
    html = sheets.render_visit_sheets(_two_team_day(), location="Location/east")
    assert "No visits selected" in visible(html)
    assert "No appointments." in visible(
        sheets.render_huddle(_two_team_day(), location="Location/east", minutes_saved=MINUTES))


def test_select_plans_puts_untimed_visits_last() -> None:
    day = day_of(vplan(v=visit("late", start=None)), vplan(v=visit("b", hour=14)),
                 vplan(v=visit("a", hour=7)))
    assert [p.visit.appointment_id for p in sheets.select_plans(day)] == ["a", "b", "late"]


def test_time_saved_arithmetic() -> None:
    minutes = {"lab": 4.0, "screening": 2.5, "immunization": 1.0, "renewal": 3.0}
    saved = sheets.time_saved([full_plan(), full_plan(failed="record could not be read")],
                              minutes)
    lines = {line.kind: (line.tasks, line.minutes) for line in saved.lines}
    # actionable findings: 1 lab, 2 screenings (colorectal, lung), 1 immunization, 2 renewals;
    # the failed visit counts nothing
    assert lines == {"Labs": (1, 4.0), "Screenings": (2, 5.0), "Immunizations": (1, 1.0),
                     "Renewals": (2, 6.0)}
    assert saved.total_minutes == 16.0 and saved.total_text == "16 min"


def test_time_saved_kinds_not_configured_count_zero_and_hours_are_shown() -> None:
    plans = [full_plan()] * 20
    saved = sheets.time_saved(plans, {"lab": 3.5})
    assert saved.total_minutes == 70.0 and saved.total_text == "1 h 10 min"


def test_time_saved_on_the_huddle_covers_the_whole_clinic_day() -> None:
    day = _two_team_day()
    for who in (None, "dr-ruiz", "dr-chen"):
        html = sheets.render_huddle(day, practitioner=who, minutes_saved={"lab": 3.0})
        saved = section(html, "saved")
        # 4 labs across all practitioners: never one physician's figure
        assert "Labs 4 3 12" in saved and "Total 12 min" in saved
        assert "all practitioners" in saved
    at_north = section(sheets.render_huddle(day, location="north", minutes_saved={"lab": 3.0}),
                       "saved")
    assert "Labs 3 3 9" in at_north and "at North Clinic" in at_north


def test_multi_day_plan_has_one_huddle_per_day() -> None:
    later = date(2026, 12, 2)
    day = DayPlan(generated_for=DAY, days=2, plans=(
        vplan(v=visit("a1")), vplan(v=visit("a2", day=later), name="Next Day")))
    html = sheets.render_huddle(day, minutes_saved=MINUTES)
    assert html.count('<article class="sheet huddle"') == 2
    text = visible(html)
    assert text.index("Tue Dec 1, 2026") < text.index("Wed Dec 2, 2026") < text.index("Next Day")


# --- file names -----------------------------------------------------------------------------


def test_file_names_use_appointment_ids_not_names() -> None:
    plan = full_plan(v=visit("appt-0917"))
    assert sheets.visit_sheet_filename(plan) == "visit-appt-0917.html"
    assert sheets.visit_sheet_filename(plan, "pdf") == "visit-appt-0917.pdf"
    assert "Alvarez" not in sheets.visit_sheet_filename(plan)


def test_file_names_are_safe_and_distinct() -> None:
    a = sheets.visit_sheet_filename(vplan(v=visit("../../etc/passwd")))
    b = sheets.visit_sheet_filename(vplan(v=visit("..__etc_passwd")))
    c = sheets.visit_sheet_filename(vplan(v=visit("x" * 300)))
    for name in (a, b, c):
        assert re.fullmatch(r"visit-[A-Za-z0-9._-]+\.html", name) and ".." not in name
        assert len(name) < 100
    assert a != b


def test_huddle_file_name_names_the_selection() -> None:
    day = _two_team_day()
    assert sheets.huddle_sheet_filename(day) == "huddle-2026-12-01.html"
    assert sheets.huddle_sheet_filename(day, location="Location/north",
                                        practitioner="dr-chen", ext="pdf") == \
        "huddle-2026-12-01-location-north-practitioner-dr-chen.pdf"


# --- PDF -------------------------------------------------------------------------------------


def test_pdf_has_one_page_per_visit_and_the_items(tmp_path: Path) -> None:
    plans = (full_plan(),
             replace(full_plan(), visit=visit("a2", hour=10), patient_name="Bob Stone"),
             vplan(v=visit("a3", hour=11), name="Cy Failed", failed="record could not be read"))
    path = tmp_path / "visits.pdf"
    pdf.write_pdf(sheets.render_visit_sheets(day_of(*plans)), path)
    reader = pypdf.PdfReader(str(path))
    assert len(reader.pages) == 3
    texts = [" ".join((page.extract_text() or "").split()) for page in reader.pages]
    assert "Maria Alvarez" in texts[0] and "Bob Stone" in texts[1] and "Cy Failed" in texts[2]
    assert "Hemoglobin A1c" in texts[0] and "Influenza vaccine" in texts[0]
    assert "Not planned" in texts[2]


def test_huddle_pdf_renders(tmp_path: Path) -> None:
    path = tmp_path / "huddle.pdf"
    pdf.write_pdf(sheets.render_huddle(_two_team_day(), minutes_saved=MINUTES), path)
    text = " ".join(p.extract_text() or "" for p in pypdf.PdfReader(str(path)).pages)
    assert "Ann North" in text and "Cy South" in text and "Estimated clinician time saved" in text


def test_pdf_without_weasyprint_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    def missing(name: str) -> Any:
        raise OSError("cannot load library 'libpango-1.0-0'")

    monkeypatch.setattr("previsit.pdf.importlib.import_module", missing)
    with pytest.raises(PdfUnavailableError, match=r"libpangoft2-1\.0-0") as info:
        pdf.write_pdf("<p>x</p>", tmp_path / "x.pdf")
    assert "pip install weasyprint" in str(info.value)
    assert not (tmp_path / "x.pdf").exists()


def test_pdf_refuses_to_fetch_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="load nothing from outside"):
        pdf._refuse_fetch("http://example.invalid/x.png")


def test_a_physician_rule_without_a_special_reason_is_still_the_physicians() -> None:
    cervical = finding("cervical", Status.DUE, Kind.SCREENING, role=Role.PHYSICIAN,
                       title="Cervical cancer screening", flags=("physician-review",),
                       orders=(order("10524-7", "Cervical cytology", role=Role.PHYSICIAN,
                                     before=False),))
    html = sheets.render_visit_sheet(vplan(cervical))
    assert "Cervical cancer screening" in section(html, "review")
    assert "⚑" not in section(html, "review")  # no invented reason
    assert [t.what for t in tasks.tasks(vplan(cervical))] == [
        "Decide: Cervical cancer screening"]


def test_recorded_unknown_sex_says_what_is_unknown() -> None:
    assert "67 y · sex unknown" in visible(sheets.render_visit_sheet(vplan(sex="unknown")))


def test_a_patients_two_visits_the_same_day_count_each_task_once() -> None:
    # 8:00 lab draw and 9:20 visit, same patient: the HbA1c is drawn at 8:00 ("earlier-visit"
    # at 9:20), the flu vaccine is given at 9:20 ("later-visit" at 8:00).
    hba1c = order("4548-4", "HbA1c")
    draw = finding("hba1c", Status.OVERDUE, orders=(hba1c,))
    flu = finding("flu", Status.DUE, Kind.IMMUNIZATION, role=Role.NURSE, orders=(FLU,))
    lab_visit = vplan(draw, flu, v=visit("a-lab", hour=8, minute=0), proposals=(
        proposal("4548-4", "HbA1c", "hba1c"),
        proposal("88", "Influenza vaccine", "flu", outcome="later-visit", role=Role.NURSE)))
    later = vplan(draw, flu, v=visit("a-doc", hour=9, minute=20), proposals=(
        proposal("4548-4", "HbA1c", "hba1c", outcome="earlier-visit"),
        proposal("88", "Influenza vaccine", "flu", role=Role.NURSE)))
    assert tasks.handled_elsewhere(later, draw) == "earlier-visit"
    assert tasks.handled_elsewhere(lab_visit, flu) == "later-visit"
    assert tasks.handled_elsewhere(lab_visit, draw) is None
    assert [(t.role, t.finding.rule_id) for t in tasks.tasks(lab_visit)] == [(Role.MA, "hba1c")]
    assert [(t.role, t.finding.rule_id) for t in tasks.tasks(later)] == [(Role.NURSE, "flu")]
    assert sheets.role_counts([lab_visit, later]) == {Role.MA: 1, Role.NURSE: 1,
                                                      Role.PHARMACIST: 0, Role.PHYSICIAN: 0}
    saved = {line.kind: line.tasks for line in sheets.time_saved([lab_visit, later], MINUTES).lines}
    assert saved["Labs"] == 1 and saved["Immunizations"] == 1
    html = sheets.render_huddle(day_of(lab_visit, later), minutes_saved=MINUTES)
    rows = [r for r in read(html).rows if len(r) == 8 and r[0] != "Time"]
    assert [r[0] for r in rows] == ["8:00 AM", "9:20 AM"]
    assert "Labs to draw" in rows[0][7] and "At later visit" in rows[0][7]
    assert "Labs to draw" not in rows[1][7] and "Prepared for earlier visit" in rows[1][7]
    # each visit's own sheet still lists both, saying where the orders went
    first = visible(sheets.render_visit_sheet(lab_visit))
    assert "Influenza vaccine" in first and "At the later visit today" in first
    sheet = visible(sheets.render_visit_sheet(later))
    assert "HbA1c" in sheet and "At the earlier visit today" in sheet


# --- the huddle horizon: when to draw, what came back, what cannot be used ------------------


def _lab(state: LabState, code: str = "4548-4", display: str = "Hemoglobin A1c",
         result: str | None = None, result_day: date | None = None) -> LabProgress:
    return LabProgress(code=code, display=display, proposal=f"ServiceRequest/{code}",
                       ordered_on=date(2026, 11, 24), state=state, result=result,
                       result_day=result_day)


def _drawn(outcome: str, start: date, end: date) -> VisitPlan:
    return vplan(finding("hba1c", Status.OVERDUE, title="HbA1c", orders=(HBA1C,)),
                 proposals=(replace(proposal("4548-4", "Hemoglobin A1c", "hba1c",
                                             outcome=outcome, occurrence=end),
                                    occurrence_start=start),))


def test_a_lab_drawn_the_day_of_the_visit_says_draw_at_check_in() -> None:
    plan = _drawn("proposed", DAY, DAY)
    assert "draw at check-in" in section(sheets.render_visit_sheet(plan), "before")
    assert [t.what for t in tasks.tasks(plan)] == ["Draw at check-in: HbA1c"]
    flags = section(sheets.render_huddle(day_of(plan), minutes_saved=MINUTES), "flags")
    assert "Labs to draw HbA1c at check-in" in flags


def test_a_lab_ordered_ahead_says_its_window() -> None:
    plan = _drawn("proposed", date(2026, 11, 24), date(2026, 11, 28))
    assert "draw by Sat Nov 28 (from Tue Nov 24)" in section(sheets.render_visit_sheet(plan),
                                                             "before")
    assert [t.what for t in tasks.tasks(plan)] == ["Draw by Sat Nov 28: HbA1c"]


def test_what_became_of_the_labs_ordered_ahead_is_on_the_sheet() -> None:
    creatinine = order("2160-0", "Creatinine", lead=3)
    plan = replace(vplan(
        finding("hba1c", Status.OVERDUE, title="HbA1c", orders=(HBA1C,)),
        finding("kidney", Status.OVERDUE, title="Creatinine", orders=(creatinine,)),
        finding("lipids", Status.SATISFIED, title="Lipids"),
        proposals=(proposal("4548-4", "Hemoglobin A1c", "hba1c", outcome="already-written",
                            occurrence=DAY),
                   proposal("2160-0", "Creatinine", "kidney", outcome="declined",
                            occurrence=DAY))),
        labs=(_lab(LabState.UNSIGNED),
              _lab(LabState.DISMISSED, "2160-0", "Creatinine"),
              _lab(LabState.RESULTED, "57698-3", "Lipid panel", "LDL 98 mg/dL",
                   date(2026, 11, 27))))
    before = section(sheets.render_visit_sheet(plan), "before")
    assert "Resulted: LDL 98 mg/dL (Fri Nov 27; ordered Tue Nov 24)" in \
        section(sheets.render_visit_sheet(plan), "resulted-list")
    assert "Hemoglobin A1c draw at check-in proposed Tue Nov 24, not signed yet: sign " \
        "before drawing" in before
    # a dismissed lab is not drawn
    assert "Creatinine proposed Tue Nov 24, dismissed by a clinician" in before
    assert "Creatinine draw" not in before
    accepted = replace(plan, labs=(_lab(LabState.TO_DRAW),))
    assert "ordered Tue Nov 24, accepted, not resulted yet" in section(
        sheets.render_visit_sheet(accepted), "before")
    flags = section(sheets.render_huddle(day_of(plan), minutes_saved=MINUTES), "flags")
    assert "Labs back LDL 98 mg/dL (Fri Nov 27)" in flags


def test_implausible_values_are_listed_to_check() -> None:
    check = ("check this value: Potassium 0.4 mmol/L on 2026-11-17 is outside 1.5–9 mmol/L, "
             "the range a patient can have; it was not used")
    plan = replace(vplan(finding("k", Status.DUE, title="Potassium")), checks=(check,))
    html = sheets.render_visit_sheet(plan)
    assert "Check these values" in visible(html) and check in visible(html)
    flags = section(sheets.render_huddle(day_of(plan), minutes_saved=MINUTES), "flags")
    assert "Check this value 1 implausible result, not used" in flags


def test_a_stale_booking_is_an_input_problem_on_both_sheets() -> None:
    why = ("the patient is recorded as deceased on 2026-10-19: the booking was not planned "
           "and no order was written; cancel it")
    plan = replace(vplan(name="Stanley Wojcik"), not_planned=why)
    text = visible(sheets.render_visit_sheet(plan))
    assert "Not planned: input problem" in text and "The patient is recorded as deceased" in text
    assert "Before the visit" not in text and "Up to date" not in text
    html = sheets.render_huddle(day_of(plan), minutes_saved=MINUTES)
    assert "Input problem " + why in section(html, "flags")
    assert tasks.tasks(plan) == []


def test_the_new_plan_fields_survive_plan_json() -> None:
    plan = replace(_drawn("already-written", date(2026, 11, 24), date(2026, 11, 28)),
                   labs=(_lab(LabState.RESULTED, result="HbA1c 7.9 %",
                              result_day=date(2026, 11, 27)),),
                   checks=("check this value: x",), not_planned=None)
    dated = replace(plan, findings=(replace(plan.findings[0], not_before=date(2026, 12, 4)),))
    day = DayPlan(generated_for=DAY, days=1, plans=(dated,), run_day=date(2026, 11, 30),
                  ahead=(replace(plan, not_planned="why"),))
    again = DayPlan.from_json(json.loads(json.dumps(day.to_json())))
    assert again == day
