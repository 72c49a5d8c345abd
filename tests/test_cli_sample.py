"""End to end: `previsit run` on the bundled sample clinic day, as the README tells a user.

The main command runs once per module, as a real process (the console script), into a
temporary folder; the tests then read what it left there: plan.json with the findings the
sample charts were built to show (sample_bundles/README.md, "The patients"), one FHIR R4B
transaction Bundle per visit with proposals, sheets, and a second run whose output must be
byte-identical. `explain` and `sheet` run in-process through Typer's CliRunner.

Expected findings are checked against each rule's logic and the chart in
sample_bundles/generate.py, not copied from output: a comment says why each one holds.
Fragments avoid wording that is still being tuned (flags, not-applicable texts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest
from markupsafe import escape
from previsit.cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_bundles"
DAY = "2026-12-01"
TZ = "America/Chicago"
IDENTIFIER_SYSTEM = "urn:previsit:proposal"  # the default output.identifier_system
STATUSES = ("due", "overdue", "due-soon", "satisfied", "excluded", "not-applicable", "unknown")

# In appointments.json but not on the plan (sample_bundles/README.md), with the status the
# data must show for the reason to hold.
NOT_PLANNED = {
    "appt-1201-1400-greenberg-cx": "cancelled",
    "appt-1201-0740-esposito-lab": "noshow",
    "appt-1201-0840-jensen-dup": "entered-in-error",
    "appt-1130-1500-williams": "fulfilled",  # the day before
    "appt-1130-1620-mendoza": "booked",  # the day before, never checked out
    "appt-1130-2130-reyes-video": "booked",  # 03:30Z on 12-01 is 21:30 on 11-30 in Chicago
    "appt-1202-0800-tran": "booked",  # the day after
    "appt-1202-0900-haddad-lab": "booked",
    "appt-1202-1000-whitaker": "pending",
}


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without PREVISIT_* settings, which would override the
    command line's defaults (config.py reads them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVISIT_")}
    env.update(extra)
    return env


def _previsit() -> list[str]:
    script = Path(sys.executable).with_name("previsit")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from previsit.cli.app import main; main()"]


def previsit_run(source: Path | str, out: Path, *, cwd: Path = ROOT,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_previsit(), "run", "--source", str(source), "--date", DAY, "--timezone", TZ,
         "--out", str(out)],
        cwd=cwd, env=dict(env) if env is not None else _env(), capture_output=True,
        text=True, timeout=120, check=False)


def invoke(*args: str) -> Any:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PREVISIT_")}
    return CliRunner().invoke(app, list(args), env=unset)


@dataclass(frozen=True, repr=False)
class Run:
    out: Path
    proc: subprocess.CompletedProcess[str]
    plan: dict[str, Any]
    report: dict[str, Any]

    def __repr__(self) -> str:  # failure reports show the folder, not all of plan.json
        return f"Run({self.out})"

    def visit(self, appointment_id: str) -> dict[str, Any]:
        found = [v for v in self.plan["visits"]
                 if v["visit"]["appointment_id"] == appointment_id]
        assert len(found) == 1, f"{appointment_id}: {len(found)} visits in plan.json"
        return found[0]

    @property
    def appointment_ids(self) -> list[str]:
        return [v["visit"]["appointment_id"] for v in self.plan["visits"]]

    def transactions(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text(encoding="utf-8"))
                for p in sorted((self.out / "transactions").glob("*.json"))}


def _load(out: Path, proc: subprocess.CompletedProcess[str]) -> Run:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return Run(out=out, proc=proc,
               plan=json.loads((out / "plan.json").read_text(encoding="utf-8")),
               report=json.loads((out / "run-report.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The README's first command, from the repository root, as a user types it."""
    out = tmp_path_factory.mktemp("run") / "out"
    return _load(out, previsit_run("sample_bundles", out))


@pytest.fixture(scope="module")
def rerun(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same command again into another folder, in a process with another hash seed
    (set and dict order must not leak into the output)."""
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    out = tmp_path_factory.mktemp("rerun") / "out"
    return _load(out, previsit_run("sample_bundles", out, env=_env(PYTHONHASHSEED=seed)))


def _booked_on_day() -> set[str]:
    """What the clinic day holds, read from the data itself: appointments whose status is
    planned by default (config: booked, arrived, pending) starting on DAY in Chicago."""
    bundle = json.loads((SAMPLE / "appointments.json").read_text(encoding="utf-8"))
    chosen = set()
    for entry in bundle["entry"]:
        appt = entry["resource"]
        start = datetime.fromisoformat(appt["start"]).astimezone(ZoneInfo(TZ))
        if appt["status"] in ("booked", "arrived", "pending") and start.date().isoformat() == DAY:
            chosen.add(appt["id"])
    return chosen


# --- the run and its summary -----------------------------------------------------------


def test_plans_the_33_booked_visits_and_only_those(day: Run) -> None:
    bundle = json.loads((SAMPLE / "appointments.json").read_text(encoding="utf-8"))
    statuses = {e["resource"]["id"]: e["resource"]["status"] for e in bundle["entry"]}
    assert len(statuses) == 42
    expected = _booked_on_day()
    assert len(expected) == 33
    assert sorted(day.appointment_ids) == sorted(expected)
    assert len(day.appointment_ids) == len(set(day.appointment_ids))
    for appointment_id, status in NOT_PLANNED.items():
        assert statuses[appointment_id] == status, appointment_id  # the reason still holds
        assert appointment_id not in day.appointment_ids
    # visits are in start order; the UTC appointment is shown in clinic time
    starts = [datetime.fromisoformat(v["visit"]["start"]) for v in day.plan["visits"]]
    assert starts == sorted(starts)
    assert day.visit("appt-1201-1640-brooks")["visit"]["start"] == "2026-12-01T16:40:00-06:00"
    # `arrived` and `pending` are still planned
    assert day.visit("appt-1201-0800-kowalski")["visit"]["status"] == "arrived"
    assert day.visit("appt-1201-1510-reyes")["visit"]["status"] == "pending"


def test_summary_and_report_agree_with_the_files(day: Run) -> None:
    out = day.proc.stdout
    assert "appointments: 33 (31 patients): 33 planned, 0 failed" in out
    # the stale booking of a patient who died is an input problem, not a failure
    assert "FAILED" not in out and "input problems: 1 (see run-report.json)" in out
    report = day.report
    assert report["exit_code"] == 0
    assert report["visits"] == {"total": 33, "planned": 33, "failed": 0, "patients": 31}
    assert report["failures"] == []
    assert report["source_problems"] == [{
        "where": "Appointment/appt-1201-1050-wojcik",
        "message": "the patient is recorded as deceased on 2026-10-19: the booking was not "
                   "planned and no order was written; cancel it"}]
    findings = [f for v in day.plan["visits"] for f in v["findings"]]
    assert sum(report["findings"].values()) == len(findings)
    assert set(report["findings"]) == set(STATUSES)  # the day shows every status
    transactions = day.transactions()
    entries = sum(len(b["entry"]) for b in transactions.values())
    assert report["proposals"]["proposed"] == entries
    assert f"proposals: {entries} draft orders in transaction bundles" in out
    assert f"({len(transactions)} bundles)" in out
    assert f"findings: {report['findings']['due']} due, " in out


# --- plan.json: what the charts were built to show -------------------------------------

# (appointment, rule, renewal of (title fragment) or None, status, explanation fragments)
EXPECTED: list[tuple[str, str, str | None, str, tuple[str, ...]]] = [
    # María López, T2DM above goal: 8.4 % on 08-01 → every 3 months → due 11-01. The
    # retracted 6.1 % (entered-in-error, 09-01) would make it "6 months" and satisfied.
    ("appt-1201-0920-lopez", "hba1c-monitoring", None, "overdue",
     ("8.4 %", "due since 2026-11-01")),
    ("appt-1201-0920-lopez", "kidney-health-evaluation", None, "overdue",
     ("urine albumin-creatinine ratio",)),  # uACR 14 months ago, yearly
    ("appt-1201-0920-lopez", "metformin-b12-monitoring", None, "due", ("no vitamin B12",)),
    ("appt-1201-0920-lopez", "diabetes-screening", None, "excluded", ("already diagnosed",)),
    ("appt-1201-0920-lopez", "zoster-immunization", None, "due", ("1 of 2",)),
    # prescribed 380 days ago for 360 days; 300 days ago for 360 days (90-day horizon)
    ("appt-1201-0920-lopez", "annual-prescription-renewal", "atorvastatin", "overdue",
     ("ran out 2026-11-11",)),
    ("appt-1201-0920-lopez", "annual-prescription-renewal", "metformin", "due",
     ("runs out 2027-01-30",)),
    ("appt-1201-0920-lopez", "annual-prescription-renewal", "lisinopril", "satisfied", ()),
    # Walter Kowalski: INR 10-30 every 4 weeks → 11-27; TSH/ALT 07-01 every 6 months;
    # this season's flu shot is only in the state registry (NDJSON)
    ("appt-1201-0800-kowalski", "warfarin-inr-monitoring", None, "overdue",
     ("due since 2026-11-27",)),
    ("appt-1201-0800-kowalski", "amiodarone-monitoring", None, "due-soon",
     ("falls due 2027-01-01",)),
    ("appt-1201-0800-kowalski", "influenza-immunization", None, "satisfied", ("2026-09-28",)),
    # Frank DeLuca: INR 11-07 → 12-05, inside the INR rule's 7-day window; AAA done 2023
    ("appt-1201-0820-deluca", "warfarin-inr-monitoring", None, "due-soon",
     ("falls due 2026-12-05",)),
    ("appt-1201-0820-deluca", "aaa-screening", None, "satisfied", ("ultrasound",)),
    # Harold Jensen: LDCT 13 months ago (yearly); PCV15 without the PPSV23 that completes it
    ("appt-1201-0840-jensen", "lung-cancer-screening", None, "overdue",
     ("due since 2026-11-01",)),
    ("appt-1201-0840-jensen", "pneumococcal-immunization", None, "due", ("PCV15", "PPSV23")),
    # Margaret O'Brien: the 2.6 TSH 11 months ago is coded by the LOINC OID; without it the
    # last TSH is 2 years old and the rule would say overdue
    ("appt-1201-0840-obrien", "levothyroxine-monitoring", None, "due-soon",
     ("2.6", "falls due 2027-01-01")),
    ("appt-1201-0840-obrien", "breast-cancer-screening", None, "overdue",
     ("due since 2025-06-01",)),
    ("appt-1201-0840-obrien", "td-tdap-immunization", None, "overdue",
     ("due since 2026-04-11",)),
    # Susan Greenberg: total hysterectomy; Tdap 2016-12-20 + 10 years, within 60 days
    ("appt-1201-0920-greenberg", "cervical-cancer-screening", None, "excluded",
     ("hysterectomy",)),
    ("appt-1201-0920-greenberg", "td-tdap-immunization", None, "due-soon",
     ("falls due 2026-12-20",)),
    # James Whitehorse: lisinopril, potassium never drawn; opioid renewal is due but is a
    # physician's decision (no draft order: see test_controlled_substances_are_not_proposed)
    ("appt-1201-1000-whitehorse", "ace-arb-diuretic-monitoring", None, "due",
     ("no potassium",)),
    ("appt-1201-1000-whitehorse", "annual-prescription-renewal", "oxycodone", "due",
     ("runs out 2026-12-06",)),
    # Kevin Tran, 44: this season's flu shot was declined (not-done), the last one given was
    # in 2024; his only prescription is an acute amoxicillin course: never renewed
    ("appt-1201-1110-tran", "influenza-immunization", None, "overdue",
     ("2024-10-15", "due since 2025-08-01")),
    ("appt-1201-1110-tran", "colorectal-cancer-screening", None, "not-applicable",
     ("patient is 44",)),
    ("appt-1201-1110-tran", "annual-prescription-renewal", "amoxicillin", "not-applicable",
     ("short (acute) course",)),
    # José Núñez: metformin is a Medication reference, so B12 monitoring applies (B12
    # 04-01, yearly); HbA1c 6.6 % (at goal: 6 months) on 06-14 → 12-14
    ("appt-1201-1130-nunez", "metformin-b12-monitoring", None, "satisfied",
     ("next due 2027-04-01",)),
    # ... and the HbA1c of 11-10 came back without a value: not counted (CMS122 agrees)
    ("appt-1201-1130-nunez", "hba1c-monitoring", None, "due-soon",
     ("falls due 2026-12-14", "the HbA1c of 2026-11-10 has no value (Error): not counted")),
    # Harold Jensen: a potassium of 0.4 mmol/L two weeks ago is impossible: not used
    ("appt-1201-0840-jensen", "ace-arb-diuretic-monitoring", None, "due-soon",
     ("last potassium 4.1 mmol/L on 2026-01-16", "(0.4 mmol/L) is implausible")),
    # Dorothy Jackson: a positive FIT 10 weeks ago and no colonoscopy since
    ("appt-1201-1030-jackson", "colorectal-cancer-screening", None, "due",
     ("positive FIT/gFOBT on 2026-09-22", "needs a follow-up colonoscopy")),
    # ... and her amlodipine, refilled late, lasts beyond the renewal horizon
    ("appt-1201-1030-jackson", "annual-prescription-renewal", "amlodipine", "satisfied",
     ("runs until 2027-03-31", "last dispensed 2026-07-04",
      "the prescription alone would run out 2027-01-30")),
    # Margaret O'Brien: her second Shingrix came 20 days after the first
    ("appt-1201-0840-obrien", "zoster-immunization", None, "due-soon",
     ("1 of 2", "too soon", "not before 2026-12-04")),
    # Jordan Reyes: PPSV23 7 months ago; the conjugate dose only a year after it
    ("appt-1201-1510-reyes", "pneumococcal-immunization", None, "due-soon",
     ("not before 2027-05-01", "after PPSV23 on 2026-05-01")),
    # Michelle Novak: hospice recorded only as an Encounter
    ("appt-1201-1630-novak", "hepatitis-b-immunization", None, "excluded",
     ("hospice care", "Admission to hospice 2026-10-14")),
    # Walter Kowalski's warfarin: a high-risk medicine, renewed by the physician
    ("appt-1201-0800-kowalski", "annual-prescription-renewal", "warfarin", "due",
     ("high-risk medicine (Anticoagulant)",)),
    # James Whitehorse's oxycodone: Schedule II, from the DEA schedule data
    ("appt-1201-1000-whitehorse", "annual-prescription-renewal", "oxycodone", "due",
     ("controlled substance (Schedule II)",)),
    # Thomas Begay: medicines from his bottles, no dates
    ("appt-1201-1130-begay", "ace-arb-diuretic-monitoring", None, "unknown",
     ("no start date",)),
    ("appt-1201-1130-begay", "annual-prescription-renewal", "metformin", "unknown",
     ("cannot tell when it runs out",)),
    ("appt-1201-1130-begay", "amiodarone-monitoring", None, "due", ("no TSH",)),
    # Carlos Mendoza: metformin for 6 weeks (B12 needs a year); HbA1c 7.9 % 6 weeks ago,
    # 3-monthly above goal → 2027-01-17, beyond the 30-day window
    ("appt-1201-1320-mendoza", "metformin-b12-monitoring", None, "not-applicable",
     ("less than 1 year",)),
    ("appt-1201-1320-mendoza", "hba1c-monitoring", None, "satisfied",
     ("next due 2027-01-17",)),
    ("appt-1201-1320-nakamura", "colorectal-cancer-screening", None, "excluded",
     ("colectomy",)),
    # Ruth Adeyemi has no birth date: age rules cannot be decided; the others can
    ("appt-1201-1400-adeyemi", "colorectal-cancer-screening", None, "unknown",
     ("no birth date",)),
    ("appt-1201-1400-adeyemi", "td-tdap-immunization", None, "unknown", ("no birth date",)),
    ("appt-1201-1400-adeyemi", "metformin-b12-monitoring", None, "overdue",
     ("due since 2026-11-01",)),
    # Eleanor Whitaker: home hospice since September
    ("appt-1201-1420-whitaker", "colorectal-cancer-screening", None, "excluded",
     ("hospice",)),
    ("appt-1201-1420-whitaker", "influenza-immunization", None, "due", ("no influenza vaccine",)),
    ("appt-1201-1450-olson", "osteoporosis-screening", None, "satisfied",
     ("next due 2027-12-01",)),
    # Jordan Reyes: gender `unknown`; a smoker with no pack-years
    ("appt-1201-1510-reyes", "breast-cancer-screening", None, "unknown", ("sex is",)),
    ("appt-1201-1510-reyes", "lung-cancer-screening", None, "unknown", ("pack-years",)),
    # Andre Williams: HIV on the problem list; immunocompromised, so zoster from 19
    ("appt-1201-1610-williams", "hiv-screening", None, "excluded", ("already diagnosed",)),
    ("appt-1201-1610-williams", "zoster-immunization", None, "due", ()),
    # Tyler Brooks, 17: HIV screening from 15, adult vaccines from 19
    ("appt-1201-1640-brooks", "hiv-screening", None, "due", ("no HIV test",)),
    ("appt-1201-1640-brooks", "td-tdap-immunization", None, "not-applicable",
     ("patient is 17",)),
]


def finding(plan: Mapping[str, Any], rule_id: str, renewal_of: str | None = None
            ) -> dict[str, Any]:
    found = [f for f in plan["findings"] if f["rule_id"] == rule_id
             and (renewal_of is None or renewal_of in f["title"])]
    assert len(found) == 1, (f"{plan['visit']['appointment_id']} {rule_id} {renewal_of}: "
                             f"{[f['title'] for f in found]}")
    return found[0]


def test_expected_findings_cover_every_kind_and_status(day: Run) -> None:
    kinds = {finding(day.visit(a), r, m)["kind"] for a, r, m, _, _ in EXPECTED}
    assert kinds == {"lab", "screening", "immunization", "renewal"}
    assert {status for *_, status, _ in EXPECTED} == set(STATUSES)
    assert len({appointment for appointment, *_ in EXPECTED}) >= 8


@pytest.mark.parametrize(("appointment", "rule_id", "renewal_of", "status", "fragments"),
                         EXPECTED, ids=[f"{a[10:]}:{r}:{m or ''}:{s}"
                                        for a, r, m, s, _ in EXPECTED])
def test_named_patient_finding(day: Run, appointment: str, rule_id: str,
                               renewal_of: str | None, status: str,
                               fragments: Sequence[str]) -> None:
    f = finding(day.visit(appointment), rule_id, renewal_of)
    assert (f["status"], f["rule_id"]) == (status, rule_id), f["explanation"]
    for fragment in fragments:
        assert fragment in f["explanation"], f["explanation"]
    assert "\n" not in f["explanation"] and f["explanation"].strip()


def test_patient_without_birth_date(day: Run) -> None:
    plan = day.visit("appt-1201-1400-adeyemi")
    assert plan["patient_age"] is None and plan["failed"] is None
    unknown = {f["rule_id"] for f in plan["findings"] if f["status"] == "unknown"}
    # every rule with an age limit that nothing else decided first
    assert {"breast-cancer-screening", "cervical-cancer-screening",
            "colorectal-cancer-screening", "hepatitis-c-screening", "hiv-screening",
            "influenza-immunization", "zoster-immunization"} <= unknown
    # the undated outside HbA1c is a data issue, not a crash nor a result
    assert any("has no date" in issue for issue in plan["issues"])
    assert finding(plan, "hba1c-monitoring")["status"] == "due-soon"  # 7.4 % on 09-22
    assert "7.4 %" in finding(plan, "hba1c-monitoring")["explanation"]


def test_maria_lopez_two_visits_one_set_of_orders(day: Run) -> None:
    lab, visit = day.visit("appt-1201-0800-lopez-lab"), day.visit("appt-1201-0920-lopez")
    assert lab["visit"]["patient_id"] == visit["visit"]["patient_id"] == "pat-maria-lopez"

    def by_code(plan: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {p["code"]: p for p in plan["proposals"]}

    first, second = by_code(lab), by_code(visit)
    # the open HbA1c order on her chart is not proposed again: drawn at 8:00, and at 9:20
    # it is the earlier visit's, not a second task
    assert first["4548-4"]["outcome"] == "already-open"
    assert first["4548-4"]["existing"] == "ServiceRequest/maria-lopez-sr-001"
    assert second["4548-4"]["outcome"] == "earlier-visit"
    # 8:00 draws the labs, 9:20 does what is done at a visit; each order once
    labs = {code for code, p in first.items() if p["outcome"] == "proposed"}
    at_visit = {code for code, p in second.items() if p["outcome"] == "proposed"}
    assert {"9318-7", "2132-9"} <= labs  # uACR and B12 at the 8:00 draw
    assert {"88"} <= at_visit  # flu vaccine at the 9:20 visit
    assert {c for c, p in second.items() if p["outcome"] == "earlier-visit"} == \
        labs | {"4548-4"}
    assert {c for c, p in first.items() if p["outcome"] == "later-visit"} == at_visit
    assert set(first) == set(second) == labs | at_visit | {"4548-4"}
    renewals = [p for p in second.values() if p["resource_type"] == "MedicationRequest"]
    assert renewals and all(p["outcome"] == "proposed" for p in renewals)

    transactions = day.transactions()

    def codes(appointment_id: str) -> list[str]:
        return [coding["code"] for e in transactions[appointment_id]["entry"]
                for key in ("code", "medicationCodeableConcept") if key in e["resource"]
                for coding in e["resource"][key]["coding"]]

    assert sorted(codes("appt-1201-0800-lopez-lab")) == sorted(labs)
    assert set(codes("appt-1201-0920-lopez")) >= at_visit - {p["code"] for p in renewals}
    assert "4548-4" not in codes("appt-1201-0800-lopez-lab") + codes("appt-1201-0920-lopez")
    # drawn at the 8:00 appointment itself, not a week before it
    for entry in transactions["appt-1201-0800-lopez-lab"]["entry"]:
        assert entry["resource"]["occurrenceDateTime"] == "2026-12-01"


# --- transactions: FHIR R4B conditional creates ----------------------------------------


def test_one_transaction_per_visit_with_proposals(day: Run) -> None:
    with_proposals = {v["visit"]["appointment_id"] for v in day.plan["visits"]
                      if any(p["outcome"] == "proposed" for p in v["proposals"])}
    transactions = day.transactions()
    assert set(transactions) == with_proposals
    # María's two visits: each has its own part of the work
    assert {"appt-1201-0800-lopez-lab", "appt-1201-0920-lopez"} <= set(transactions)
    # the two hospice patients: only this season's flu vaccine (CMS147 and ACIP have no
    # hospice exclusion) and what is not about screening or monitoring
    for hospice in ("appt-1201-1420-whitaker", "appt-1201-1630-novak"):
        codes = {e["resource"]["code"]["coding"][0]["code"]
                 for e in transactions[hospice]["entry"]
                 if e["resource"]["resourceType"] == "ServiceRequest"}
        assert codes == {"88"}, (hospice, codes)
    for appointment_id, bundle in transactions.items():
        wanted = sorted(p["identifier"] for p in day.visit(appointment_id)["proposals"]
                        if p["outcome"] == "proposed")
        written = sorted(i["value"] for e in bundle["entry"]
                         for i in e["resource"]["identifier"] if i["system"] == IDENTIFIER_SYSTEM)
        assert written == wanted, appointment_id
    every = [i["value"] for b in transactions.values() for e in b["entry"]
             for i in e["resource"]["identifier"]]
    assert len(every) == len(set(every))


def test_transactions_validate_as_r4b_draft_proposals(day: Run) -> None:
    validators = {"ServiceRequest": ServiceRequest, "MedicationRequest": MedicationRequest}
    pre_visit_labs = 0
    for appointment_id, data in day.transactions().items():
        plan = day.visit(appointment_id)
        patient = f"Patient/{plan['visit']['patient_id']}"
        visit_day = datetime.fromisoformat(plan["visit"]["start"]).date()
        before_visit = {(o["system"], o["code"]): o["before_visit"]
                        for f in plan["findings"] for o in f["orders"]}
        bundle = Bundle.model_validate(data)
        assert (bundle.type, data["resourceType"]) == ("transaction", "Bundle")
        assert data["entry"], appointment_id
        for entry in data["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            validators[kind].model_validate(resource)
            [identifier] = [i for i in resource["identifier"]
                            if i["system"] == IDENTIFIER_SYSTEM]
            assert entry["request"] == {
                "method": "POST", "url": kind,
                "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM}|{identifier['value']}"}
            assert (resource["status"], resource["intent"]) == ("draft", "proposal")
            assert resource["subject"] == {"reference": patient}
            if kind == "MedicationRequest":
                assert resource["priorPrescription"]["reference"].startswith(
                    "MedicationRequest/")
                continue
            coding = resource["code"]["coding"][0]
            assert coding["system"] and coding["code"]
            assert resource.get("reasonReference") or resource.get("reasonCode")
            # Written the night before the clinic day (the run day the README's command
            # implies): nothing ordered ahead, so every lab is drawn at check-in, dated the
            # visit day, never before the night it was written.
            assert resource["authoredOn"] == "2026-11-30"
            occurrence = date.fromisoformat(resource["occurrenceDateTime"][:10])
            assert occurrence == visit_day, (appointment_id, coding["code"])
            pre_visit_labs += before_visit[(coding["system"], coding["code"])]
    assert pre_visit_labs > 20


def test_controlled_substances_are_not_proposed(day: Run) -> None:
    transactions = day.transactions()
    drugs = [e["resource"]["medicationCodeableConcept"]["text"]
             for b in transactions.values() for e in b["entry"]
             if e["resource"]["resourceType"] == "MedicationRequest"]
    assert any("warfarin" in d for d in drugs)
    assert not [d for d in drugs if re.search(r"oxycodone|morphine", d)]


# --- the same input gives the same output ----------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_run_is_byte_identical(day: Run, rerun: Run) -> None:
    first, second = _tree(day.out), _tree(rerun.out)
    assert sorted(first) == sorted(second)
    report = "run-report.json"
    differing = [name for name in first if name != report and first[name] != second[name]]
    assert differing == []
    assert {k: v for k, v in day.report.items() if k != "timings"} == \
        {k: v for k, v in rerun.report.items() if k != "timings"}
    assert any(name.startswith("transactions/") for name in first)
    assert any(name.startswith("sheets/") for name in first)


# --- sheets -----------------------------------------------------------------------------


def test_sheets_one_per_visit_and_huddle(day: Run) -> None:
    sheets = sorted(p.name for p in (day.out / "sheets").glob("*.html"))
    assert len(sheets) == 33
    for appointment_id in day.appointment_ids:
        assert len([s for s in sheets if s.removesuffix(".html").endswith(appointment_id)]) == 1
    huddle = (day.out / "huddle.html").read_text(encoding="utf-8")
    visits = (day.out / "visits.html").read_text(encoding="utf-8")
    for appointment_id in day.appointment_ids:
        assert appointment_id in huddle and appointment_id in visits
    for appointment_id in NOT_PLANNED:
        assert appointment_id not in huddle and appointment_id not in visits


def _sheet(day: Run, appointment_id: str) -> str:
    [path] = [p for p in (day.out / "sheets").glob("*.html")
              if p.stem.endswith(appointment_id)]
    return path.read_text(encoding="utf-8")


def test_due_items_appear_escaped_on_the_patients_sheet(day: Run) -> None:
    obrien = _sheet(day, "appt-1201-0840-obrien")
    assert "O&#39;Brien" in obrien and "O'Brien" not in obrien
    mammogram = finding(day.visit("appt-1201-0840-obrien"), "breast-cancer-screening")
    assert str(escape(mammogram["title"])) in obrien
    assert str(escape(mammogram["explanation"])) in obrien
    reyes = _sheet(day, "appt-1201-1510-reyes")
    unknown_sex = finding(day.visit("appt-1201-1510-reyes"), "breast-cancer-screening")
    assert "'unknown'" in unknown_sex["explanation"]
    assert str(escape(unknown_sex["explanation"])) in reyes
    lopez = _sheet(day, "appt-1201-0920-lopez")
    assert "María" in lopez
    assert str(escape(finding(day.visit("appt-1201-0920-lopez"),
                              "hba1c-monitoring")["explanation"])) in lopez
    # another patient's item is not on her sheet
    assert str(escape(mammogram["explanation"])) not in lopez


def test_sheet_command_renders_the_same_from_plan_json(day: Run, tmp_path: Path) -> None:
    result = invoke("sheet", str(day.out / "plan.json"), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("*.html"))
    assert [p.name.split("-")[0] for p in written] == ["huddle", "visits"]
    for path in written:
        ran = day.out / f"{path.name.split('-')[0]}.html"
        assert path.read_bytes() == ran.read_bytes(), path.name
    one = invoke("sheet", str(day.out / "plan.json"), "--out", str(tmp_path / "one"),
                 "--visit", "appt-1201-0840-obrien")
    assert one.exit_code == 0, one.output
    [path] = (tmp_path / "one").glob("*.html")
    assert path.read_text(encoding="utf-8") == _sheet(day, "appt-1201-0840-obrien")
    cancelled = invoke("sheet", str(day.out / "plan.json"), "--out", str(tmp_path / "cx"),
                       "--visit", "appt-1201-1400-greenberg-cx")
    assert cancelled.exit_code == 2
    assert "appt-1201-1400-greenberg-cx" in cancelled.output


# --- explain ----------------------------------------------------------------------------

_LINE = re.compile(r"^  (?P<status>[a-z-]+) +(?P<rule>[a-z0-9-]+) {2,}(?P<why>\S.*)$")


def _explain(patient: str) -> tuple[str, list[tuple[str, str, str]], list[str]]:
    result = invoke("explain", "--source", str(SAMPLE), "--patient", patient, "--date", DAY)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [(m["status"], m["rule"], m["why"]) for m in map(_LINE.match, lines[1:]) if m]
    issues = [line for line in lines[1:] if line.startswith("  data issue: ")]
    assert len(rows) + len(issues) == len(lines) - 1, result.output
    return lines[0], rows, issues


def test_explain_prints_every_rule_with_its_reason(day: Run) -> None:
    header, rows, issues = _explain("pat-maria-lopez")
    assert header == "Patient/pat-maria-lopez on 2026-12-01: 58, female"
    assert {rule for _, rule, _ in rows} == set(day.plan["ruleset"]["rules"])
    assert all(status in STATUSES for status, _, _ in rows)
    assert issues == []
    # the same outcomes and reasons as her visit in plan.json, line for line
    plan = day.visit("appt-1201-0920-lopez")
    assert [(s, r) for s, r, _ in rows] == [(f["status"], f["rule_id"])
                                           for f in plan["findings"]]
    for (_, _, why), f in zip(rows, plan["findings"], strict=True):
        assert why.startswith(f["explanation"])
    outcome = {rule: (status, why) for status, rule, why in rows
               if rule != "annual-prescription-renewal"}
    assert outcome["hba1c-monitoring"][0] == "overdue"
    assert "8.4 %" in outcome["hba1c-monitoring"][1]
    assert outcome["diabetes-screening"][0] == "excluded"
    assert outcome["cervical-cancer-screening"][0] == "satisfied"
    assert outcome["aaa-screening"][0] == "not-applicable"
    renewals = sorted((why.split(":")[0], status) for status, rule, why in rows
                      if rule == "annual-prescription-renewal")
    assert [status for _, status in renewals] == ["overdue", "satisfied", "due"]
    assert [name.split()[0] for name, _ in renewals] == ["atorvastatin", "lisinopril",
                                                          "metformin"]


def test_explain_patient_without_birth_date_and_unknown_patient() -> None:
    header, rows, issues = _explain("pat-ruth-adeyemi")
    assert header.endswith("age unknown, female")
    assert ("unknown", "colorectal-cancer-screening") in {(s, r) for s, r, _ in rows}
    assert all("no birth date" in why for s, r, why in rows
               if s == "unknown" and r.endswith("screening"))
    assert len(issues) == 1 and "has no date" in issues[0]
    missing = invoke("explain", "--source", str(SAMPLE), "--patient", "pat-nobody",
                     "--date", DAY)
    assert missing.exit_code == 4
    assert "pat-nobody" in missing.output


# --- bad input is reported, and planning goes on ---------------------------------------


def test_malformed_extra_files_are_reported_and_every_visit_planned(
        day: Run, tmp_path: Path) -> None:
    source = tmp_path / "day"
    shutil.copytree(SAMPLE, source, ignore=shutil.ignore_patterns("*.py", "*.md"))
    registry = source / "immunizations-registry.ndjson"
    lines = registry.read_text(encoding="utf-8").splitlines()
    not_a_resource, cut_short = len(lines) + 1, len(lines) + 2
    registry.write_text("\n".join([*lines, '{"id": "icare-9999", "status": "completed"}',
                                   '{"resourceType": "Immunization", "id": "icare-']) + "\n",
                        encoding="utf-8")
    truncated = source / "patients" / "pat-zz-export.json"
    whole = (SAMPLE / "patients" / "pat-maria-lopez.json").read_text(encoding="utf-8")
    truncated.write_text(whole[:5000], encoding="utf-8")

    out = tmp_path / "out"
    result = _load(out, previsit_run(source, out))
    assert "input problems: 4 (see run-report.json)" in result.proc.stdout
    report = result.report
    assert report["exit_code"] == 0 and report["failures"] == []
    assert report["visits"]["planned"] == 33
    problems = {p["where"]: p["message"] for p in report["source_problems"]}
    assert set(problems) == {f"{registry} line {not_a_resource}",
                             f"{registry} line {cut_short}", str(truncated),
                             "Appointment/appt-1201-1050-wojcik"}
    assert "not a FHIR resource" in problems[f"{registry} line {not_a_resource}"]
    assert "not valid JSON" in problems[f"{registry} line {cut_short}"]
    assert "not valid JSON" in problems[str(truncated)]
    assert re.search(r"line \d+ column \d+", problems[str(truncated)])
    # what was skipped changed nothing: the plan is the clean run's, byte for byte
    assert (out / "plan.json").read_bytes() == (day.out / "plan.json").read_bytes()


# --- the nightly command a week ahead, then the night before (the pre-visit timeline) --------


def _nightly(source: Path, out: Path, run_date: str) -> Run:
    proc = subprocess.run(
        [*_previsit(), "run", "--source", str(source), "--run-date", run_date, "--timezone",
         TZ, "--out", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True,
        timeout=120, check=False)
    return _load(out, proc)


def test_a_week_ahead_then_the_night_before(tmp_path: Path) -> None:
    """The issue's acceptance: run the nightly command a week ahead and for tomorrow. No
    order is dated before the night it is written; a lab ordered a week ahead is on the
    huddle as still to draw at check-in (the bundle source's write-back is the transaction
    files: a server would now hold them, so they go into the folder the next night reads)."""
    source = tmp_path / "data"
    shutil.copytree(SAMPLE, source, ignore=shutil.ignore_patterns("*.py", "*.md"))
    week = _nightly(source, tmp_path / "nov24", "2026-11-24")
    out = week.proc.stdout
    assert "run day 2026-11-24: no order is dated before it; pre-visit labs also ordered " \
        "for visits 2026-11-26 to 2026-12-01" in out
    assert "appointments: 0 (0 patients)" in out  # nothing booked on 11-25
    ahead = week.plan["labs_ahead"]
    ordered = week.report["labs_ahead"]["proposals"]["proposed"]
    assert len(ahead) == 35 and ordered > 20  # 33 on 12-01, two on 11-30
    assert f"labs ahead: 35 appointments: {ordered} pre-visit lab orders in transaction " \
        "bundles" in out
    for bundle in week.transactions().values():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert resource["resourceType"] == "ServiceRequest"  # only labs a week ahead
            assert resource["authoredOn"] == "2026-11-24"
            start = resource.get("occurrencePeriod", {}).get("start") or \
                resource["occurrenceDateTime"]
            assert start >= "2026-11-24"
    # what the write-back left on the "server"
    carried = source / "written-2026-11-24"
    shutil.copytree(week.out / "transactions", carried)

    eve = _nightly(source, tmp_path / "nov30", "2026-11-30")
    kowalski = eve.visit("appt-1201-0800-kowalski")
    inr = next(p for p in kowalski["proposals"] if p["code"] == "6301-6")
    assert inr["outcome"] == "already-written"  # ordered a week ago, not again
    assert [(lab["code"], lab["state"], lab["ordered_on"]) for lab in kowalski["labs"]
            if lab["code"] == "6301-6"] == [("6301-6", "unsigned", "2026-11-24")]
    sheet = _sheet(eve, "appt-1201-0800-kowalski")
    assert "draw at check-in" in sheet and "proposed Tue Nov 24, not signed yet" in sheet
    assert not [e for b in eve.transactions().values() for e in b["entry"]
                if e["resource"]["resourceType"] == "ServiceRequest"
                and e["resource"]["code"]["coding"][0]["code"] == "6301-6"]


def test_a_clinic_day_before_the_run_day_is_a_usage_error() -> None:
    result = invoke("run", "--source", str(SAMPLE), "--date", "2026-11-30", "--run-date",
                    "2026-12-01", "--timezone", TZ, "--quiet")
    assert result.exit_code == 2
    assert "--date 2026-11-30 is before the run day 2026-12-01" in result.output


def test_a_run_date_that_is_not_a_date_is_a_usage_error() -> None:
    result = invoke("run", "--source", str(SAMPLE), "--run-date", "yesterday")
    assert result.exit_code == 2 and "--run-date 'yesterday' is not a date" in result.output


def test_a_run_that_plans_nothing_leaves_no_earlier_plan_to_print(tmp_path: Path) -> None:
    """Last night's huddle must not sit in the folder as if it were tonight's: a run that
    can plan nothing (the server is unreachable) removes the earlier plan, sheets and
    transactions and says why in run-report.json."""
    out = tmp_path / "out"
    first = invoke("run", "--source", str(SAMPLE), "--date", DAY, "--timezone", TZ,
                   "--out", str(out))
    assert first.exit_code == 0 and (out / "huddle.html").exists()
    failed = invoke("run", "--fhir-url", "http://127.0.0.1:9/fhir/R4", "--date", DAY,
                    "--timezone", TZ, "--out", str(out))
    assert failed.exit_code == 4
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == ["run-report.json"]
    report = json.loads((out / "run-report.json").read_text("utf-8"))
    assert report["exit_code"] == 4 and report["date"] == DAY
    assert "nothing has answered at this address" in report["error"]
