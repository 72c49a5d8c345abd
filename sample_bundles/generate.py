"""Generate the sample clinic day in sample_bundles/ (Riverside Family Medicine, 2026-12-01).

Run: .venv/bin/python sample_bundles/generate.py

The output is byte-identical on every run: the clinic day is a constant, ids are fixed
slugs, per-patient "noise" (vital signs) comes from random.Random seeded with the
patient id, JSON is written with sorted keys. Dates are written relative to the clinic
day so each history ends where the persona needs it to (a test 13 months ago is overdue
on an annual rule, 11 months ago is due-soon). README.md lists the personas and the
deliberate data-quality quirks; each quirk is marked `QUIRK:` below.

Only the standard library and previsit.intervals (calendar arithmetic) are used.
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT.parent))

from previsit.intervals import Duration  # noqa: E402

CLINIC_DAY = date(2026, 12, 1)
TZ = ZoneInfo("America/Chicago")
BASE = "https://fhir.riversidefm.example.org"  # the clinic's (fictional) FHIR base

LOINC = "http://loinc.org"
LOINC_OID = "urn:oid:2.16.840.1.113883.6.1"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.861.1.7.5.737384.14"  # Epic-style MRN namespace
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
MED_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VISIT_TYPES = "https://fhir.riversidefm.example.org/CodeSystem/visit-type"
APPT_REASON = "http://terminology.hl7.org/CodeSystem/v2-0276"


# --- dates ---------------------------------------------------------------------------


def ago(spec: str | int, *, on: date = CLINIC_DAY) -> date:
    """The date `spec` before the clinic day: ago("13mo"), ago("2y"), ago(364) (days)."""
    if isinstance(spec, int):
        return on - timedelta(days=spec)
    total = date(on.year, on.month, on.day)
    for part in spec.split("+"):
        total = Duration.parse(part).before(total)
    return total


def later(start: date, spec: str | int) -> date:
    if isinstance(spec, int):
        return start + timedelta(days=spec)
    return Duration.parse(spec).after(start)


def stamp(day: date, hour: int = 9, minute: int = 0) -> str:
    """A local clinic time on `day` as a FHIR dateTime with the right UTC offset (CST/CDT)."""
    return datetime.combine(day, time(hour, minute), tzinfo=TZ).isoformat()


def cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}


# --- the clinic ----------------------------------------------------------------------

ORGANIZATION = {
    "resourceType": "Organization", "id": "org-riverside",
    "identifier": [{"system": NPI, "value": "1356802474"}],
    "active": True,
    "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "prov",
                "Healthcare Provider")],
    "name": "Riverside Family Medicine",
    "telecom": [{"system": "phone", "value": "(312) 555-0140", "use": "work"}],
    "address": [{"line": ["2200 N Main St"], "city": "Riverside", "state": "IL",
                 "postalCode": "60546", "country": "US"}],
}

# NPIs pass the Luhn check with the 80840 prefix, as real ones do.
PRACTITIONERS: dict[str, dict[str, Any]] = {
    "prac-okafor": {"npi": "1467593822", "family": "Okafor", "given": ["Amara", "N."],
                    "suffix": ["MD"], "gender": "female",
                    "qualification": ("MD", "Doctor of Medicine")},
    "prac-whitfield": {"npi": "1982746509", "family": "Whitfield", "given": ["Daniel"],
                       "suffix": ["DO"], "gender": "male",
                       "qualification": ("DO", "Doctor of Osteopathy")},
    # The nurse who runs the Main St lab/nurse-visit schedule.
    "prac-lindqvist": {"npi": "1740283951", "family": "Lindqvist", "given": ["Grace"],
                       "suffix": ["RN"], "gender": "female",
                       "qualification": ("RN", "Registered Nurse")},
}


def practitioner_display(pid: str) -> str:
    p = PRACTITIONERS[pid]
    return f"{p['given'][0]} {p['family']}, {p['suffix'][0]}"


def practitioner_resource(pid: str) -> dict[str, Any]:
    p = PRACTITIONERS[pid]
    code, display = p["qualification"]
    return {
        "resourceType": "Practitioner", "id": pid,
        "identifier": [{"system": NPI, "value": p["npi"]}],
        "active": True,
        "name": [{"use": "official", "family": p["family"], "given": p["given"],
                  "suffix": p["suffix"], "text": practitioner_display(pid)}],
        "gender": p["gender"],
        "telecom": [{"system": "phone", "value": "(312) 555-0140", "use": "work"}],
        "qualification": [{"code": cc("http://terminology.hl7.org/CodeSystem/v2-0360|2.7",
                                      code, display)}],
    }


LOCATIONS: dict[str, dict[str, Any]] = {
    "loc-main": {"name": "Riverside Family Medicine – Main St",
                 "line": "2200 N Main St", "postal": "60546", "phone": "(312) 555-0140"},
    "loc-eastgate": {"name": "Riverside Family Medicine – Eastgate",
                     "line": "4815 Eastgate Plaza, Suite 210", "postal": "60546",
                     "phone": "(312) 555-0177"},
}


def location_resource(lid: str) -> dict[str, Any]:
    loc = LOCATIONS[lid]
    return {
        "resourceType": "Location", "id": lid, "status": "active", "name": loc["name"],
        "mode": "instance",
        "type": [cc("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "FMC",
                    "Family Medicine Clinic")],
        "telecom": [{"system": "phone", "value": loc["phone"], "use": "work"}],
        "address": {"line": [loc["line"]], "city": "Riverside", "state": "IL",
                    "postalCode": loc["postal"], "country": "US"},
        "managingOrganization": {"reference": "Organization/org-riverside",
                                 "display": "Riverside Family Medicine"},
    }


# --- catalogs: the codes the charts use ------------------------------------------------
# LOINC codes and displays as in the LOINC table (and in the VSAC expansions the rules
# use); units are UCUM codes with the display unit the lab interface sends.

LABS: dict[str, tuple[str, str, str, str]] = {
    # key: (LOINC, display, unit shown, UCUM code)
    "hba1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%"),
    "egfr": ("98979-8", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] "
             "in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)",
             "mL/min/1.73m2", "mL/min/{1.73_m2}"),
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL"),
    "potassium": ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L",
                  "mmol/L"),
    "sodium": ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L"),
    "uacr": ("9318-7", "Albumin/Creatinine [Mass Ratio] in Urine", "mg/g", "mg/g{creat}"),
    "uacr24": ("13705-9", "Albumin/Creatinine [Mass Ratio] in 24 hour Urine", "mg/g",
               "mg/g{creat}"),
    "ldl": ("13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
            "mg/dL", "mg/dL"),
    "ldl_direct": ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by "
                   "Direct assay", "mg/dL", "mg/dL"),
    "cholesterol": ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL",
                    "mg/dL"),
    "hdl": ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL",
            "mg/dL"),
    "triglycerides": ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL",
                      "mg/dL"),
    "tsh": ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "mIU/L", "m[IU]/L"),
    "inr": ("6301-6", "INR in Platelet poor plasma by Coagulation assay", "INR", "{INR}"),
    "inr_poc": ("34714-6", "INR in Blood by Coagulation assay", "INR", "{INR}"),
    "b12": ("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "pg/mL",
            "pg/mL"),
    "lithium": ("14334-7", "Lithium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L"),
    "alt": ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or "
            "Plasma", "U/L", "U/L"),
    "wbc": ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL",
            "10*3/uL"),
    "hgb": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL"),
    "plt": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL",
            "10*3/uL"),
}

PANELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "lipid": ("57698-3", "Lipid panel with direct LDL - Serum or Plasma",
              ("cholesterol", "hdl", "triglycerides", "ldl_direct")),
    "lipid_calc": ("24331-1", "Lipid 1996 panel - Serum or Plasma",
                   ("cholesterol", "hdl", "triglycerides", "ldl")),
    "cbc": ("58410-2", "CBC panel - Blood by Automated count", ("wbc", "hgb", "plt")),
    "bmp": ("51990-0", "Basic metabolic panel - Blood",
            ("sodium", "potassium", "creatinine", "egfr")),
}

# RxNorm clinical drugs (SCD) as EHRs send them: code, RxNorm name, and how the order
# reads on the chart (text), dose instruction, tablets per 90 days.
DRUGS: dict[str, tuple[str, str, str, str]] = {
    "lisinopril10": ("314076", "lisinopril 10 MG Oral Tablet", "lisinopril 10 mg tablet",
                     "Take 1 tablet (10 mg total) by mouth daily."),
    "lisinopril20": ("314077", "lisinopril 20 MG Oral Tablet", "lisinopril 20 mg tablet",
                     "Take 1 tablet (20 mg total) by mouth daily."),
    "losartan50": ("979492", "losartan potassium 50 MG Oral Tablet",
                   "losartan 50 mg tablet", "Take 1 tablet (50 mg total) by mouth daily."),
    "hctz25": ("310798", "hydrochlorothiazide 25 MG Oral Tablet",
               "hydrochlorothiazide 25 mg tablet", "Take 1 tablet by mouth every morning."),
    "furosemide40": ("313988", "furosemide 40 MG Oral Tablet", "furosemide 40 mg tablet",
                     "Take 1 tablet (40 mg total) by mouth every morning."),
    "amlodipine5": ("197361", "amlodipine 5 MG Oral Tablet", "amlodipine 5 mg tablet",
                    "Take 1 tablet (5 mg total) by mouth daily."),
    "atorvastatin20": ("617310", "atorvastatin 20 MG Oral Tablet",
                       "atorvastatin 20 mg tablet", "Take 1 tablet by mouth at bedtime."),
    "atorvastatin40": ("617311", "atorvastatin 40 MG Oral Tablet",
                       "atorvastatin 40 mg tablet", "Take 1 tablet by mouth at bedtime."),
    "simvastatin20": ("312961", "simvastatin 20 MG Oral Tablet", "simvastatin 20 mg tablet",
                      "Take 1 tablet by mouth every evening."),
    "metformin500": ("861007", "metformin hydrochloride 500 MG Oral Tablet",
                     "metformin 500 mg tablet",
                     "Take 1 tablet (500 mg total) by mouth 2 times daily with meals."),
    "metformin1000": ("861004", "metformin hydrochloride 1000 MG Oral Tablet",
                      "metformin 1,000 mg tablet",
                      "Take 1 tablet (1,000 mg total) by mouth 2 times daily with meals."),
    "levothyroxine25": ("966220", "levothyroxine sodium 0.025 MG Oral Tablet",
                        "levothyroxine 25 mcg tablet",
                        "Take 1 tablet (25 mcg total) by mouth daily before breakfast."),
    "levothyroxine125": ("966224", "levothyroxine sodium 0.125 MG Oral Tablet",
                         "levothyroxine 125 mcg tablet",
                         "Take 1 tablet (125 mcg total) by mouth daily before breakfast."),
    "levothyroxine100": ("892246", "levothyroxine sodium 0.1 MG Oral Tablet",
                         "levothyroxine 100 mcg tablet",
                         "Take 1 tablet (100 mcg total) by mouth daily before breakfast."),
    "lithium300": ("197889", "lithium carbonate 300 MG Oral Capsule",
                   "lithium carbonate 300 mg capsule",
                   "Take 1 capsule (300 mg total) by mouth 3 times daily."),
    "warfarin5": ("855332", "warfarin sodium 5 MG Oral Tablet", "warfarin 5 mg tablet",
                  "Take 1 tablet (5 mg) by mouth daily or as directed by anticoagulation "
                  "clinic."),
    "warfarin2.5": ("855312", "warfarin sodium 2.5 MG Oral Tablet",
                    "warfarin 2.5 mg tablet",
                    "Take as directed by the anticoagulation clinic (INR goal 2-3)."),
    "methotrexate2.5": ("105585", "methotrexate 2.5 MG Oral Tablet",
                        "methotrexate 2.5 mg tablet",
                        "Take 6 tablets (15 mg total) by mouth once a week on Mondays."),
    # Recorded as free text (an OTC supplement on the medication list); no code is sent.
    "folic1": ("", "folic acid 1 MG Oral Tablet", "folic acid 1 mg tablet (OTC)",
               "Take 1 tablet (1 mg total) by mouth daily."),
    "amiodarone200": ("833528", "amiodarone hydrochloride 200 MG Oral Tablet",
                      "amiodarone 200 mg tablet",
                      "Take 1 tablet (200 mg total) by mouth daily."),
    "oxycodone_apap": ("1049221", "acetaminophen 325 MG / oxycodone hydrochloride 5 MG "
                       "Oral Tablet", "oxycodone-acetaminophen 5-325 mg tablet",
                       "Take 1 tablet by mouth every 8 hours as needed for severe pain. "
                       "Max 3 tablets/day."),
    "morphine_er15": ("891881", "morphine sulfate 15 MG Extended Release Oral Tablet",
                      "morphine ER 15 mg 12 hr tablet",
                      "Take 1 tablet (15 mg total) by mouth every 12 hours."),
    "gabapentin300": ("310431", "gabapentin 300 MG Oral Capsule", "gabapentin 300 mg capsule",
                      "Take 1 capsule (300 mg total) by mouth 3 times daily."),
    "albuterol": ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
                  "albuterol HFA 90 mcg/actuation inhaler",
                  "Inhale 2 puffs every 4 hours as needed for wheezing or shortness of "
                  "breath."),
    "alendronate10": ("904419", "alendronic acid 10 MG Oral Tablet",
                      "alendronate 10 mg tablet",
                      "Take 1 tablet (10 mg total) by mouth daily with a full glass of water "
                      "30 minutes before breakfast; stay upright."),
    "biktarvy": ("1999667", "bictegravir 50 MG / emtricitabine 200 MG / tenofovir "
                 "alafenamide 25 MG Oral Tablet", "Biktarvy 50-200-25 mg tablet",
                 "Take 1 tablet by mouth daily."),
    # as Synthea codes it (RxNorm SCD)
    "amoxicillin500": ("308192", "Amoxicillin 500 MG Oral Tablet", "amoxicillin 500 mg tablet",
                       "Take 1 tablet (500 mg total) by mouth 3 times daily for 10 days."),
    "metoprolol25": ("866924", "metoprolol tartrate 25 MG Oral Tablet",
                     "metoprolol tartrate 25 mg tablet",
                     "Take 1 tablet (25 mg total) by mouth 2 times daily."),
}

VACCINES: dict[str, tuple[str, str]] = {
    # CVX code, CVX short description
    "flu": ("150", "Influenza, injectable, quadrivalent, preservative free"),
    "flu_hd": ("197", "influenza, high-dose seasonal, quadrivalent, .7mL dose, "
                      "preservative free"),
    "td": ("113", "Td (adult) preservative free"),
    "tdap": ("115", "Tdap"),
    "shingrix": ("187", "zoster vaccine recombinant"),
    "zostavax": ("121", "zoster vaccine, live"),
    "pcv15": ("215", "Pneumococcal conjugate vaccine 15-valent (PCV15), polysaccharide "
                     "CRM197 conjugate, adjuvant, preservative free"),
    "pcv20": ("216", "Pneumococcal conjugate vaccine 20-valent (PCV20), polysaccharide "
                     "CRM197 conjugate, adjuvant, preservative free"),
    "ppsv23": ("33", "pneumococcal polysaccharide vaccine, 23 valent"),
    "rsv_arexvy": ("303", "Respiratory syncytial virus (RSV), vaccine, recombinant, protein "
                          "subunit RSV prefusion F, adjuvant reconstituted, 0.5 mL, PF"),
    "rsv_abrysvo": ("305", "Respiratory syncytial virus (RSV), vaccine, bivalent, protein "
                           "subunit RSV prefusion F, diluent reconstituted, 0.5 mL, PF"),
    "hepb": ("43", "Hep B, adult"),
    "hepb_heplisav": ("189", "HepB-CpG"),
    "hpv": ("165", "Human Papillomavirus 9-valent vaccine"),
    "menacwy": ("114", "meningococcal MCV4P"),
}


# --- one patient's chart -------------------------------------------------------------


class Chart:
    """The resources of one patient, built in the order a history happens."""

    def __init__(self, pid: str, *, given: list[str], family: str, sex: str | None,
                 born: date | None, mrn: str, pcp: str, phone: str, address: str,
                 name_text: str | None = None, language: str | None = None,
                 died: date | None = None) -> None:
        self.pid = pid
        self.pcp = pcp
        self.slug = pid.removeprefix("pat-")
        self.born = born
        self.resources: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.rng = random.Random(pid)
        name: dict[str, Any] = {"use": "official", "family": family, "given": given}
        if name_text:
            name["text"] = name_text
        patient: dict[str, Any] = {
            "resourceType": "Patient", "id": pid,
            "meta": {"profile": [
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
            "identifier": [
                {"use": "usual", "type": {**cc(V2_0203, "MR", "Medical Record Number"),
                                          "text": "MRN"},
                 "system": MRN_SYSTEM, "value": mrn},
            ],
            "active": True, "name": [name],
            "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
            "address": [{"use": "home", "line": [address], "city": "Riverside",
                         "state": "IL", "postalCode": "60546", "country": "US"}],
            "generalPractitioner": [{"reference": f"Practitioner/{pcp}",
                                     "display": practitioner_display(pcp)}],
            "managingOrganization": {"reference": "Organization/org-riverside",
                                     "display": "Riverside Family Medicine"},
        }
        if sex is not None:
            patient["gender"] = sex
        if born is not None:
            patient["birthDate"] = born.isoformat()
        if died is not None:
            patient["deceasedDateTime"] = stamp(died, 4, 10)
        if language:
            patient["communication"] = [{"language": cc("urn:ietf:bcp:47", language,
                                                         {"es": "Spanish", "pl": "Polish",
                                                          "vi": "Vietnamese"}.get(language,
                                                                                  language)),
                                         "preferred": True}]
        self.patient = patient
        self.resources.append(patient)
        self.name = f"{given[0]} {family}"

    # helpers ---------------------------------------------------------------------

    def next_id(self, kind: str) -> str:
        n = self.counters.get(kind, 0) + 1
        self.counters[kind] = n
        return f"{self.slug}-{kind}-{n:03d}"

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}", "display": self.name}

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources.append(resource)
        return resource

    def requester(self, who: str | None = None) -> dict[str, str]:
        who = who or self.pcp
        return {"reference": f"Practitioner/{who}", "display": practitioner_display(who)}

    # encounters and vitals --------------------------------------------------------

    def encounter(self, day: date, kind: str = "follow-up", *, hour: int = 9,
                  who: str | None = None) -> str:
        codes = {
            "annual": ("99396", "Preventive medicine visit, established patient, 40-64 "
                       "years"),
            "annual65": ("99397", "Preventive medicine visit, established patient, 65 years "
                         "and older"),
            "annual18": ("99395", "Preventive medicine visit, established patient, 18-39 "
                         "years"),
            "adolescent": ("99394", "Preventive medicine visit, established patient, "
                           "adolescent (12 through 17 years)"),
            "follow-up": ("99214", "Office or other outpatient visit, established patient, "
                          "moderate complexity"),
            "acute": ("99213", "Office or other outpatient visit, established patient, low "
                      "complexity"),
            "nurse": ("99211", "Office or other outpatient visit, established patient, "
                      "minimal (nurse visit)"),
            "awv": ("G0439", "Annual wellness visit, subsequent"),
        }
        code, display = codes[kind]
        system = CPT if code[0].isdigit() else \
            "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
        eid = self.next_id("enc")
        who = who or self.pcp
        self.add({
            "resourceType": "Encounter", "id": eid, "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "type": [cc(system, code, display)],
            "subject": self.subject,
            "participant": [{"individual": self.requester(who)}],
            "period": {"start": stamp(day, hour), "end": stamp(day, hour, 40)},
            "serviceProvider": {"reference": "Organization/org-riverside"},
        })
        return eid

    def vitals(self, day: date, *, weight: float, height: float, sbp: int, dbp: int,
               encounter: str | None = None, hour: int = 9) -> None:
        """Weight, height, BMI and the blood-pressure panel, as an MA enters them."""
        r = self.rng
        weight = round(weight + r.uniform(-1.2, 1.2), 1)
        sbp = sbp + r.randint(-6, 6)
        dbp = dbp + r.randint(-4, 4)
        bmi = round(weight / (height / 100) ** 2, 1)
        vs = [cc(OBS_CATEGORY, "vital-signs", "Vital Signs")]
        common: dict[str, Any] = {"status": "final", "category": vs, "subject": self.subject,
                                  "effectiveDateTime": stamp(day, hour, 5),
                                  "issued": stamp(day, hour, 6)}
        if encounter:
            common["encounter"] = {"reference": f"Encounter/{encounter}"}
        self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                  "code": cc(LOINC, "29463-7", "Body weight", "Weight"),
                  "valueQuantity": quantity(weight, "kg")})
        self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                  "code": cc(LOINC, "8302-2", "Body height", "Height"),
                  "valueQuantity": quantity(height, "cm")})
        self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                  "code": cc(LOINC, "39156-5", "Body mass index (BMI) [Ratio]", "BMI"),
                  "valueQuantity": quantity(bmi, "kg/m2", "kg/m2")})
        self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                  "code": cc(LOINC, "85354-9", "Blood pressure panel with all children "
                             "optional", "Blood pressure"),
                  "component": [
                      {"code": cc(LOINC, "8480-6", "Systolic blood pressure"),
                       "valueQuantity": quantity(sbp, "mmHg", "mm[Hg]")},
                      {"code": cc(LOINC, "8462-4", "Diastolic blood pressure"),
                       "valueQuantity": quantity(dbp, "mmHg", "mm[Hg]")}]})

    def smoking(self, day: date, code: str, display: str, *, encounter: str | None = None,
                pack_years: float | None = None, quit_date: date | None = None) -> None:
        common: dict[str, Any] = {
            "status": "final", "subject": self.subject,
            "category": [cc(OBS_CATEGORY, "social-history", "Social History")],
            "effectiveDateTime": stamp(day, 9, 10)}
        if encounter:
            common["encounter"] = {"reference": f"Encounter/{encounter}"}
        self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                  "code": cc(LOINC, "72166-2", "Tobacco smoking status"),
                  "valueCodeableConcept": cc(SNOMED, code, display)})
        if pack_years is not None:
            self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                      "code": cc(LOINC, "8664-5", "Cigarettes smoked total (pack per year)",
                                 "Pack-years"),
                      "valueQuantity": quantity(pack_years, "{pack-years}", "{PackYears}")})
        if quit_date is not None:
            self.add({"resourceType": "Observation", "id": self.next_id("obs"), **common,
                      "code": cc(LOINC, "74010-0", "Date quit tobacco smoking"),
                      "valueDateTime": quit_date.isoformat()})

    # results ---------------------------------------------------------------------

    def lab(self, key: str, day: date, value: float | None, *, encounter: str | None = None,
            status: str = "final", low: float | None = None, high: float | None = None,
            system: str = LOINC, when: str = "dateTime", note: str | None = None,
            hour: int = 8, absent: tuple[str, str] | None = None) -> str:
        """One laboratory result. `when`: dateTime, period (specimen collected over a
        period) or none (no effective date at all). `absent`: no value, with this
        dataAbsentReason (code, display)."""
        code, display, unit, ucum = LABS[key]
        oid = self.next_id("obs")
        obs: dict[str, Any] = {
            "resourceType": "Observation", "id": oid, "status": status,
            "category": [cc(OBS_CATEGORY, "laboratory", "Laboratory")],
            "code": {"coding": [{"system": system, "code": code, "display": display}],
                     "text": display.split(" [")[0] if "[" in display else display},
            "subject": self.subject,
        }
        if when == "dateTime":
            obs["effectiveDateTime"] = stamp(day, hour, 15)
            obs["issued"] = stamp(day, min(hour + 6, 20), 2)
        elif when == "period":
            obs["effectivePeriod"] = {"start": stamp(day - timedelta(days=1), 7, 0),
                                      "end": stamp(day, 7, 0)}
            obs["issued"] = stamp(day + timedelta(days=1), 11, 40)
        if encounter:
            obs["encounter"] = {"reference": f"Encounter/{encounter}"}
        if value is not None:
            obs["valueQuantity"] = quantity(value, unit, ucum)
            if low is not None or high is not None:
                rr: dict[str, Any] = {}
                if low is not None:
                    rr["low"] = quantity(low, unit, ucum)
                if high is not None:
                    rr["high"] = quantity(high, unit, ucum)
                obs["referenceRange"] = [rr]
                flag = "H" if high is not None and value > high else \
                    "L" if low is not None and value < low else "N"
                obs["interpretation"] = [cc(
                    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    flag, {"H": "High", "L": "Low", "N": "Normal"}[flag])]
        if absent:
            obs["dataAbsentReason"] = cc(
                "http://terminology.hl7.org/CodeSystem/data-absent-reason", *absent)
        if note:
            obs["note"] = [{"text": note}]
        return self.add(obs)["id"]  # type: ignore[no-any-return]

    def panel(self, key: str, day: date, values: dict[str, float], *,
              encounter: str | None = None, **kw: Any) -> None:
        code, display, members = PANELS[key]
        refs = []
        for member in members:
            if member in values:
                ranges = RANGES.get(member, {})
                refs.append(self.lab(member, day, values[member], encounter=encounter,
                                     low=ranges.get("low"), high=ranges.get("high"), **kw))
        self.add({
            "resourceType": "Observation", "id": self.next_id("obs"), "status": "final",
            "category": [cc(OBS_CATEGORY, "laboratory", "Laboratory")],
            "code": cc(LOINC, code, display), "subject": self.subject,
            "effectiveDateTime": stamp(day, 8, 15), "issued": stamp(day, 14, 2),
            "hasMember": [{"reference": f"Observation/{r}"} for r in refs]})

    def coded_result(self, code: str, display: str, day: date, value: tuple[str, str, str],
                     *, category: str = "laboratory", text: str | None = None,
                     status: str = "final", system: str = LOINC,
                     interpretation: tuple[str, str] | None = None) -> None:
        """A result whose value is a concept (negative, NILM, HPV not detected)."""
        extra: dict[str, Any] = {}
        if interpretation:
            extra["interpretation"] = [cc(
                "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                *interpretation)]
        self.add({**extra,
            "resourceType": "Observation", "id": self.next_id("obs"), "status": status,
            "category": [cc(OBS_CATEGORY, category, category.title())],
            "code": {"coding": [{"system": system, "code": code, "display": display}],
                     **({"text": text} if text else {})},
            "subject": self.subject, "effectiveDateTime": stamp(day, 10, 30),
            "issued": stamp(day + timedelta(days=2), 15, 12),
            "valueCodeableConcept": cc(*value)})

    def imaging(self, code: str, display: str, day: date, conclusion: str, *,
                system: str = LOINC) -> None:
        """An imaging result (mammogram, DXA, low-dose CT) as the radiology interface
        files it: an Observation with the study code and the impression as text."""
        self.add({
            "resourceType": "Observation", "id": self.next_id("obs"), "status": "final",
            "category": [cc(OBS_CATEGORY, "imaging", "Imaging")],
            "code": cc(system, code, display), "subject": self.subject,
            "effectiveDateTime": stamp(day, 10, 0),
            "issued": stamp(day + timedelta(days=1), 16, 45),
            "valueString": conclusion})

    # problems, procedures, immunizations ----------------------------------------

    def condition(self, snomed: tuple[str, str] | None, icd10: tuple[str, str] | None,
                  onset: date, *, status: str = "active", abated: date | None = None,
                  verification: str = "confirmed", category: str = "problem-list-item",
                  text: str | None = None) -> None:
        codings = []
        if snomed:
            codings.append({"system": SNOMED, "code": snomed[0], "display": snomed[1]})
        if icd10:
            codings.append({"system": ICD10CM, "code": icd10[0], "display": icd10[1]})
        res: dict[str, Any] = {
            "resourceType": "Condition", "id": self.next_id("cond"),
            "clinicalStatus": cc(COND_CLINICAL, status, status.title()),
            "verificationStatus": cc(COND_VERIFICATION, verification, verification.title()),
            "category": [cc(COND_CATEGORY, category,
                            {"problem-list-item": "Problem List Item",
                             "encounter-diagnosis": "Encounter Diagnosis"}[category])],
            "code": {"coding": codings,
                     "text": text or (snomed[1] if snomed else icd10[1] if icd10 else "")},
            "subject": self.subject,
            "onsetDateTime": onset.isoformat(), "recordedDate": stamp(onset, 10),
        }
        if abated:
            res["abatementDateTime"] = abated.isoformat()
        self.add(res)

    def procedure(self, code: str, display: str, day: date, *, system: str = SNOMED,
                  status: str = "completed", text: str | None = None,
                  performer: str | None = None, reason: tuple[str, str] | None = None,
                  extra_codings: Iterable[tuple[str, str, str]] = ()) -> None:
        codings = [{"system": system, "code": code, "display": display}]
        codings += [{"system": s, "code": c, "display": d} for s, c, d in extra_codings]
        res: dict[str, Any] = {
            "resourceType": "Procedure", "id": self.next_id("proc"), "status": status,
            "code": {"coding": codings, "text": text or display},
            "subject": self.subject, "performedDateTime": stamp(day, 10, 30)}
        if performer:
            res["performer"] = [{"actor": {"display": performer}}]
        if reason:
            res["reasonCode"] = [cc(SNOMED, *reason)]
        self.add(res)

    def immunize(self, key: str, day: date, *, status: str = "completed",
                 lot: str | None = None, reason_not_given: tuple[str, str] | None = None,
                 primary: bool = True, site: str = "LD", dose: int | None = None,
                 series: int | None = None) -> dict[str, Any]:
        cvx, display = VACCINES[key]
        res: dict[str, Any] = {
            "resourceType": "Immunization", "id": self.next_id("imm"), "status": status,
            "vaccineCode": cc(CVX, cvx, display), "patient": self.subject,
            "occurrenceDateTime": stamp(day, 11, 20), "primarySource": primary,
        }
        if status == "completed":
            res["lotNumber"] = lot or f"{key[:2].upper()}{self.rng.randint(1000, 9999)}"
            res["site"] = cc("http://terminology.hl7.org/CodeSystem/v3-ActSite", site,
                             {"LD": "left deltoid", "RD": "right deltoid"}[site])
            res["route"] = cc("http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
                              "IM", "Injection, intramuscular")
            res["doseQuantity"] = quantity(0.5, "mL", "mL")
        if reason_not_given:
            res["statusReason"] = cc("http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                     *reason_not_given)
        if dose is not None:
            res["protocolApplied"] = [{"doseNumberPositiveInt": dose,
                                       **({"seriesDosesPositiveInt": series} if series
                                          else {})}]
        return self.add(res)

    # orders ------------------------------------------------------------------------

    def prescribe(self, key: str, start: date, last: date, *, every: str = "12mo",
                  supply_days: int | None = 90, repeats: int | None = 3,
                  validity: str | None = "12mo", stopped: date | None = None,
                  who: str | None = None, reason: tuple[str, str] | None = None,
                  style: str = "codeable", authored: bool = True,
                  quantity_per_fill: float | None = None, form: str = "TAB",
                  outside: str | None = None, course: str | None = None) -> str:
        """A medication and its refill history: an order at `start`, renewed every `every`
        until the active order written on `last` (earlier orders completed). `style`:
        codeable (RxNorm), reference (a Medication resource, Epic style) or text (no
        coding at all). `outside`: prescribed elsewhere and entered from the patient's
        list (reported, requester is only a name). Returns the id of the current order."""
        code, name, text, sig = DRUGS[key]
        if not code and style != "text":
            raise ValueError(f"{key} has no RxNorm code; prescribe it with style='text'")
        dates = []
        day = start
        while day < last:
            dates.append(day)
            day = later(day, every)
        dates.append(last)
        # Charts converted from an older system keep the original order and the recent
        # renewals; the years in between were not migrated.
        keep_from = Duration(3, "y").before(last)
        dates = [d for n, d in enumerate(dates) if n == 0 or d >= keep_from]
        current = ""
        for n, authored_on in enumerate(dates):
            is_last = n == len(dates) - 1
            status = "active" if is_last else "completed"
            if is_last and stopped is not None:
                status = "stopped"
            mid = self.next_id("medrx")
            res: dict[str, Any] = {
                "resourceType": "MedicationRequest", "id": mid, "status": status,
                "intent": "order",
                "category": [cc(MED_CATEGORY, "community", "Community")],
                "subject": self.subject, "requester": self.requester(who),
                "dosageInstruction": [{"sequence": 1, "text": sig}],
            }
            if outside:
                res["reportedBoolean"] = True
                res["requester"] = {"display": outside}
            if course:
                res["courseOfTherapyType"] = cc(
                    "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
                    course, {"acute": "Short course (acute) therapy",
                             "continuous": "Continuous long term therapy",
                             "seasonal": "Seasonal"}[course])
            if style == "codeable":
                res["medicationCodeableConcept"] = {
                    "coding": [{"system": RXNORM, "code": code, "display": name}],
                    "text": text}
            elif style == "reference":
                # QUIRK: Epic sends the drug as a reference to a Medication resource.
                med_id = f"{self.slug}-med-{key}"
                if not any(r.get("id") == med_id for r in self.resources):
                    self.add({"resourceType": "Medication", "id": med_id,
                              "code": {"coding": [{"system": RXNORM, "code": code,
                                                   "display": name}], "text": text},
                              "status": "active"})
                res["medicationReference"] = {"reference": f"Medication/{med_id}",
                                              "display": text}
            else:
                # QUIRK: a free-text medication (no RxNorm coding), as reconciled from
                # an outside list; only the ingredient name in the text identifies it.
                res["medicationCodeableConcept"] = {"text": text}
            if authored:
                res["authoredOn"] = stamp(authored_on, 10, 12)
            if reason:
                res["reasonCode"] = [cc(SNOMED, *reason)]
            dispense: dict[str, Any] = {}
            if validity:
                dispense["validityPeriod"] = {"start": authored_on.isoformat(),
                                              "end": later(authored_on, validity).isoformat()}
            if repeats is not None:
                dispense["numberOfRepeatsAllowed"] = repeats
            if supply_days is not None:
                dispense["expectedSupplyDuration"] = {"value": supply_days, "unit": "days",
                                                      "system": UCUM, "code": "d"}
                per_fill = quantity_per_fill or supply_days
                if float(per_fill).is_integer():
                    per_fill = int(per_fill)
                dispense["quantity"] = {
                    "value": per_fill, "unit": {"TAB": "tablet", "CAP": "capsule",
                                                "INH": "inhaler"}[form],
                    "system": "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm",
                    "code": form}
            if dispense:
                res["dispenseRequest"] = dispense
            self.add(res)
            current = mid
        return current

    def dispense(self, key: str, day: date, prescription: str, *, days_supply: int = 90,
                 quantity_value: int | None = None) -> None:
        """What the pharmacy handed over (a completed MedicationDispense) for a prescription."""
        code, name, text, sig = DRUGS[key]
        self.add({
            "resourceType": "MedicationDispense", "id": self.next_id("disp"),
            "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code,
                                                      "display": name}], "text": text},
            "subject": self.subject,
            "authorizingPrescription": [{"reference": f"MedicationRequest/{prescription}"}],
            "quantity": {"value": quantity_value or days_supply, "unit": "tablet",
                         "system": "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm",
                         "code": "TAB"},
            "daysSupply": {"value": days_supply, "unit": "days", "system": UCUM, "code": "d"},
            "whenPrepared": stamp(day, 10, 5), "whenHandedOver": stamp(day, 17, 40),
            "dosageInstruction": [{"sequence": 1, "text": sig}],
            "performer": [{"actor": {"display": "Walgreens #04321, Berwyn IL"}}]})

    def hospice_encounter(self, start: date) -> None:
        """A home hospice stay still going on: how an EHR with a hospice module records it
        (an Encounter of a Hospice Encounter type), with no hospice diagnosis or assessment."""
        self.add({
            "resourceType": "Encounter", "id": self.next_id("enc"), "status": "in-progress",
            "class": {"system": ACT_CODE, "code": "HH", "display": "home health"},
            "type": [cc(SNOMED, "305336008", "Admission to hospice")],
            "subject": self.subject,
            "period": {"start": stamp(start, 13)},
            "serviceProvider": {"display": "Heartland Home Hospice"}})

    def service_request(self, code: str, display: str, day: date, *, system: str = LOINC,
                        status: str = "active", category: str = "laboratory",
                        who: str | None = None, occurrence: date | None = None,
                        note: str | None = None) -> None:
        cat = {"laboratory": ("108252007", "Laboratory procedure"),
               "imaging": ("363679005", "Imaging"),
               "procedure": ("387713003", "Surgical procedure")}[category]
        res: dict[str, Any] = {
            "resourceType": "ServiceRequest", "id": self.next_id("sr"), "status": status,
            "intent": "order", "category": [cc(SNOMED, *cat)],
            "code": cc(system, code, display), "subject": self.subject,
            "authoredOn": stamp(day, 15, 30), "requester": self.requester(who)}
        if occurrence:
            res["occurrenceDateTime"] = occurrence.isoformat()
        if note:
            res["note"] = [{"text": note}]
        self.add(res)

    # output --------------------------------------------------------------------------

    def bundle(self) -> dict[str, Any]:
        entries = []
        for res in self.resources:
            url = f"{res['resourceType']}/{res['id']}"
            entries.append({
                "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{BASE}/{url}')}",
                "resource": res,
                "request": {"method": "PUT", "url": url}})
        return {"resourceType": "Bundle", "id": f"bundle-{self.pid}", "type": "transaction",
                "entry": entries}


# Reference ranges the lab reports alongside the value (adult, as printed).
RANGES: dict[str, dict[str, float]] = {
    "hba1c": {"low": 4.0, "high": 5.6},
    "creatinine": {"low": 0.57, "high": 1.11},
    "potassium": {"low": 3.5, "high": 5.1},
    "sodium": {"low": 136, "high": 145},
    "egfr": {"low": 60},
    "uacr": {"high": 30},
    "uacr24": {"high": 30},
    "ldl": {"high": 99},
    "ldl_direct": {"high": 99},
    "cholesterol": {"high": 199},
    "hdl": {"low": 40},
    "triglycerides": {"high": 149},
    "tsh": {"low": 0.45, "high": 4.5},
    "inr": {"low": 0.9, "high": 1.1},
    "inr_poc": {"low": 0.9, "high": 1.1},
    "b12": {"low": 232, "high": 1245},
    "lithium": {"low": 0.6, "high": 1.2},
    "alt": {"high": 44},
    "wbc": {"low": 3.4, "high": 10.8},
    "hgb": {"low": 11.1, "high": 15.9},
    "plt": {"low": 150, "high": 450},
}


def lab(chart: Chart, key: str, day: date, value: float, **kw: Any) -> str:
    """A result with the lab's printed reference range and H/L flag."""
    return chart.lab(key, day, value, **{**RANGES.get(key, {}), **kw})


PERSONAS: list[Callable[[], Chart]] = []


# --- the schedule ----------------------------------------------------------------------

VISIT_KINDS: dict[str, tuple[str, str, str, str]] = {
    # key: (clinic visit-type code, display, v2-0276 appointment type, display)
    "awv": ("AWV", "Medicare annual wellness visit", "CHECKUP", "A routine check-up, such "
            "as an annual physical"),
    "physical": ("PHYS", "Annual physical / preventive visit", "CHECKUP",
                 "A routine check-up, such as an annual physical"),
    "chronic": ("CCFU", "Chronic care follow-up", "FOLLOWUP",
                "A follow up visit from a previous appointment"),
    "acute": ("ACUTE", "Acute / same-day visit", "WALKIN",
              "A previously unscheduled walk-in visit"),
    "nurse": ("RNVIS", "Nurse visit", "ROUTINE",
              "Routine appointment - default if not valued"),
    "lab": ("RNLAB", "Nurse visit / lab draw", "ROUTINE",
            "Routine appointment - default if not valued"),
    "new": ("NEWPT", "New patient visit", "ROUTINE",
            "Routine appointment - default if not valued"),
    "sports": ("SPORTS", "Sports / school physical", "CHECKUP",
               "A routine check-up, such as an annual physical"),
}


# A lab draw's visit type also carries the standard code an interface engine maps it to
# (SNOMED CT 396540005 Phlebotomy, in previsit's lab-only-appointment value set): that, not
# the time of day, is how a lab-only appointment is told from a visit.
STANDARD_SERVICE = {"lab": (SNOMED, "396540005", "Phlebotomy")}


def service_type(kind: str) -> dict[str, Any]:
    code, display, _, _ = VISIT_KINDS[kind]
    concept = cc(VISIT_TYPES, code, display)
    if kind in STANDARD_SERVICE:
        system, standard, name = STANDARD_SERVICE[kind]
        concept["coding"].append({"system": system, "code": standard, "display": name})
    return concept


def appointment(aid: str, chart_or_pid: Chart | tuple[str, str], day: date, hh: int, mm: int,
                minutes: int, kind: str, who: str | None, where: str, *,
                status: str = "booked", description: str,
                reason: tuple[str, str, str] | None = None, comment: str | None = None,
                cancelation: str | None = None) -> dict[str, Any]:
    if isinstance(chart_or_pid, Chart):
        pid, pname = chart_or_pid.pid, chart_or_pid.name
    else:
        pid, pname = chart_or_pid
    _, _, atype, atype_display = VISIT_KINDS[kind]
    start = datetime.combine(day, time(hh, mm), tzinfo=TZ)
    participants: list[dict[str, Any]] = [
        {"actor": {"reference": f"Patient/{pid}", "display": pname},
         "required": "required", "status": "accepted"}]
    if who:
        participants.append({
            "type": [cc("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF",
                        "primary performer")],
            "actor": {"reference": f"Practitioner/{who}", "display": practitioner_display(who)},
            "required": "required", "status": "accepted"})
    participants.append({"actor": {"reference": f"Location/{where}",
                                   "display": LOCATIONS[where]["name"]},
                         "required": "required", "status": "accepted"})
    res: dict[str, Any] = {
        "resourceType": "Appointment", "id": aid, "status": status,
        "serviceCategory": [cc("http://terminology.hl7.org/CodeSystem/service-category", "17",
                               "General Practice")],
        "serviceType": [service_type(kind)],
        "appointmentType": cc(APPT_REASON, atype, atype_display),
        "description": description,
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=minutes)).isoformat(),
        "minutesDuration": minutes,
        # booked 3-42 days ahead, varied by slot but fixed, like a real template
        "created": stamp(ago(f"{(hh * 7 + mm) % 40 + 3}d"), 14, 5),
        "participant": participants,
    }
    if reason:
        res["reasonCode"] = [cc(*reason)]
    if comment:
        res["comment"] = comment
    if cancelation:
        res["cancelationReason"] = cc(
            "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
            *cancelation.split("|", 1))
    return res


# --- output ----------------------------------------------------------------------------


def dump(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def build(out: Path) -> list[Path]:
    """Write the whole sample day below `out`; returns the files written."""
    charts = [make() for make in PERSONAS]
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)

    clinic = [ORGANIZATION, *(practitioner_resource(p) for p in sorted(PRACTITIONERS)),
              *(location_resource(loc) for loc in sorted(LOCATIONS))]
    write(out / "clinic.json", dump(_collection("clinic", clinic)))
    appointments = schedule({c.pid: c for c in charts})
    write(out / "appointments.json", dump(_collection("appointments", appointments)))
    for chart in charts:
        write(out / "patients" / f"{chart.pid}.json", dump(chart.bundle()))
    registry = registry_immunizations({c.pid: c for c in charts})
    write(out / "immunizations-registry.ndjson",
          "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in registry))
    return written


def _collection(name: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "id": f"bundle-{name}", "type": "transaction",
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{BASE}/{u}')}",
                       "resource": r, "request": {"method": "PUT", "url": u}}
                      for r in resources for u in [f"{r['resourceType']}/{r['id']}"]]}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else ROOT
    for stale in sorted((out / "patients").glob("*.json")) if (out / "patients").is_dir() \
            else []:
        stale.unlink()  # a persona that was renamed must not leave its old file behind
    written = build(out)
    size = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files ({size / 1e6:.2f} MB) to {out}")
    return 0


# --- personas ---------------------------------------------------------------------------
# Each function builds one patient's chart. Dates are relative to the clinic day: a
# result `ago("11mo")` on an annual rule falls due within 60 days of the visit (due-soon),
# `ago("13mo")` is overdue. The docstring says who the patient is and what the chart is
# meant to show on 2026-12-01; README.md has the table.

NEG = (SNOMED, "260385009", "Negative")
POS = (SNOMED, "10828004", "Positive")
NOT_DETECTED = (SNOMED, "260415000", "Not detected")
NILM = (SNOMED, "373887005", "Negative for intraepithelial lesion or malignancy")
NEVER = ("266919005", "Never smoked tobacco")
EX = ("8517006", "Ex-smoker")
CURRENT = ("449868002", "Smokes tobacco daily")
HEAVY = ("56771006", "Heavy smoker (over 20 per day)")

T2DM = (("44054006", "Diabetes mellitus type 2"),
        ("E11.9", "Type 2 diabetes mellitus without complications"))
T2DM_HYPER = (("44054006", "Diabetes mellitus type 2"),
              ("E11.65", "Type 2 diabetes mellitus with hyperglycemia"))
HTN = (("59621000", "Essential hypertension"), ("I10", "Essential (primary) hypertension"))
HLD = (("55822004", "Hyperlipidemia"), ("E78.5", "Hyperlipidemia, unspecified"))
HYPOTHYROID = (("40930008", "Hypothyroidism"), ("E03.9", "Hypothyroidism, unspecified"))
AFIB = (("49436004", "Atrial fibrillation"), ("I48.91", "Unspecified atrial fibrillation"))
RA = (("69896004", "Rheumatoid arthritis"), ("M06.9", "Rheumatoid arthritis, unspecified"))
BIPOLAR = (("13746004", "Bipolar disorder"), ("F31.9", "Bipolar disorder, unspecified"))
OBESITY = (("414916001", "Obesity"), ("E66.9", "Obesity, unspecified"))
GERD = (("235595009", "Gastroesophageal reflux disease"),
        ("K21.9", "Gastro-esophageal reflux disease without esophagitis"))


def persona(make: Callable[[], Chart]) -> Callable[[], Chart]:
    PERSONAS.append(make)
    return make


def dates(first: str | int, step: str, last: str | int = 0) -> list[date]:
    """Dates every `step` ending exactly `last` ago and starting no earlier than `first` ago
    (counted back from the last, so the most recent one is where the persona needs it)."""
    out, start = [], ago(first)
    n = 0
    while (day := Duration(-Duration.parse(step).amount * n,
                           Duration.parse(step).unit).after(ago(last))) >= start:
        out.append(day)
        n += 1
    return sorted(out)


def history(c: Chart, days: Iterable[date], *, weight: float, height: float,
            bp: tuple[int, int], kind: str = "follow-up", gain: float = 0.0,
            smoking: tuple[str, str] | None = None, who: str | None = None) -> dict[date, str]:
    """Office visits with vital signs (and smoking status): what every chart is made of."""
    encounters = {}
    for i, day in enumerate(days):
        enc = c.encounter(day, kind, who=who)
        c.vitals(day, weight=weight + gain * i, height=height, sbp=bp[0], dbp=bp[1],
                 encounter=enc)
        if smoking:
            c.smoking(day, *smoking, encounter=enc)
        encounters[day] = enc
    return encounters


def bmp(c: Chart, day: date, *, k: float, cr: float, egfr: float, na: float = 139) -> None:
    c.panel("bmp", day, {"sodium": na, "potassium": k, "creatinine": cr, "egfr": egfr})


def lipids(c: Chart, day: date, *, ldl: float, chol: float, hdl: float, tg: float,
           direct: bool = True) -> None:
    c.panel("lipid" if direct else "lipid_calc", day,
            {"cholesterol": chol, "hdl": hdl, "triglycerides": tg,
             "ldl_direct" if direct else "ldl": ldl})


def cbc(c: Chart, day: date, *, wbc: float = 6.4, hgb: float = 13.1, plt: float = 245) -> None:
    c.panel("cbc", day, {"wbc": wbc, "hgb": hgb, "plt": plt})


def mammogram(c: Chart, day: date, *, as_procedure: bool = False) -> None:
    if as_procedure:
        c.procedure("24623002", "Screening mammography", day,
                    extra_codings=[(CPT, "77067", "Screening mammography, bilateral")])
    else:
        c.imaging("24606-6", "MG Breast Screening", day,
                  "BI-RADS 1: Negative. Routine annual screening recommended.")


def pap(c: Chart, day: date, *, hpv: bool = False) -> None:
    c.coded_result("10524-7", "Microscopic observation [Identifier] in Cervix by Cyto stain",
                   day, NILM, text="Pap smear (ThinPrep)")
    if hpv:
        c.coded_result("30167-1", "Human papilloma virus 16+18+31+33+35+39+45+51+52+56+58+59"
                       "+68 DNA [Presence] in Cervix by Probe with signal amplification",
                       day, NOT_DETECTED, text="HPV high risk")


def fit(c: Chart, day: date, *, positive: bool = False) -> None:
    c.coded_result("29771-3", "Hemoglobin.gastrointestinal.lower [Presence] in Stool by "
                   "Immunoassay", day, POS if positive else NEG,
                   text="FIT (fecal immunochemical test)",
                   interpretation=("POS", "Positive") if positive else None)


def colonoscopy(c: Chart, day: date, finding: str = "No polyps") -> None:
    c.procedure("73761001", "Colonoscopy", day, text=f"Colonoscopy, screening — {finding}",
                performer="Riverside GI Associates",
                extra_codings=[(CPT, "45378", "Colonoscopy, flexible; diagnostic")])


def aaa_ultrasound(c: Chart, day: date, finding: str) -> None:
    # Billed and filed under the CPT screening code (the rule's value set is CPT/HCPCS).
    c.procedure("76706", "Ultrasound, abdominal aorta, real time with image documentation, "
                "screening study for abdominal aortic aneurysm (AAA)", day, system=CPT,
                text=f"AAA screening ultrasound: {finding}")


def hospice_assessment(c: Chart, day: date) -> None:
    """The MDS hospice item answered Yes, as the CMS measures look for it."""
    c.coded_result("45755-6", "Hospice care [Minimum Data Set]", day,
                   (LOINC, "LA33-6", "Yes"), category="survey", text="Receiving hospice care")


def hcv(c: Chart, day: date) -> None:
    c.coded_result("13955-0", "Hepatitis C virus Ab [Presence] in Serum or Plasma by "
                   "Immunoassay", day, NEG, text="Hepatitis C antibody")


def hiv(c: Chart, day: date) -> None:
    c.coded_result("56888-1", "HIV 1+2 Ab+HIV1 p24 Ag [Presence] in Serum or Plasma by "
                   "Immunoassay", day, NEG, text="HIV-1/2 Ag/Ab 4th generation")


def flu_seasons(c: Chart, first_year: int, last_year: int, key: str = "flu",
                month: int = 10, day: int = 14) -> None:
    for year in range(first_year, last_year + 1):
        c.immunize(key, date(year, month, day))


@persona
def maria_lopez() -> Chart:
    """58 F, type 2 diabetes above goal on metformin + lisinopril + atorvastatin. The 9:20
    patient (lab draw at 8:00 first): HbA1c overdue (last 8.4 %, 4 months ago, and an
    open HbA1c order already on the chart), uACR overdue, B12 never checked, FIT and
    mammogram lapsed, flu and zoster dose 2 due, atorvastatin ran out."""
    c = Chart("pat-maria-lopez", given=["María", "Elena"], family="López", sex="female",
              born=date(1968, 3, 14), mrn="RFM-100234", pcp="prac-okafor",
              phone="(312) 555-0187", address="1418 W Cermak Rd, Apt 2", language="es")
    c.condition(*HTN, ago("14y+2mo"))
    c.condition(*T2DM_HYPER, date(2014, 5, 6))
    c.condition(*HLD, date(2014, 5, 6))
    c.condition(*OBESITY, date(2015, 9, 1))
    c.condition(("10509002", "Acute bronchitis"), ("J20.9", "Acute bronchitis, unspecified"),
                date(2023, 2, 8), status="resolved", abated=date(2023, 3, 1),
                category="encounter-diagnosis")
    visits = history(c, dates("7y", "6mo", "4mo"), weight=86, height=157, bp=(138, 84),
                     gain=0.25, smoking=NEVER)
    a1c = [7.2, 6.9, 7.3, 7.8, 7.4, 7.0, 7.2, 7.6, 7.9, 7.5, 7.7, 8.0, 7.8, 8.2, 8.1, 8.4]
    a1c = a1c[-len(visits):]
    for value, day in zip(a1c, list(visits)[-len(a1c):], strict=True):
        lab(c, "hba1c", day, value)
    for day in list(visits)[-9::2]:
        bmp(c, day, k=4.4, cr=0.82, egfr=84)
        lipids(c, day, ldl=104, chol=188, hdl=46, tg=176)
    lab(c, "uacr", ago("14mo"), 22.0)
    lab(c, "uacr", ago("2y+3mo"), 18.0)
    # QUIRK: a result filed then retracted by the lab (entered-in-error): never counts.
    c.lab("hba1c", ago("3mo"), 6.1, status="entered-in-error",
          note="Wrong patient — specimen mislabeled. See corrected report.")
    fit(c, ago("13mo"))
    fit(c, ago("2y+1mo"))
    mammogram(c, ago("2y+7mo"))
    mammogram(c, ago("4y+6mo"))
    pap(c, ago("3y+2mo"), hpv=True)
    hcv(c, date(2019, 6, 3))
    c.immunize("tdap", date(2018, 9, 12))
    flu_seasons(c, 2018, 2025)
    c.immunize("shingrix", ago("9mo"), dose=1, series=2)
    c.prescribe("metformin1000", date(2014, 5, 6), ago(300),
                reason=("44054006", "Diabetes mellitus type 2"))
    c.prescribe("lisinopril20", date(2016, 1, 12), ago(120))
    c.prescribe("atorvastatin40", date(2014, 6, 2), ago(380))
    # The MA already queued an HbA1c for this morning's 8:00 draw: our proposal must
    # be suppressed, not duplicated.
    c.service_request("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", ago(9),
                      occurrence=CLINIC_DAY, note="Draw at 8:00 nurse visit before 9:20 "
                      "appointment.")
    return c


@persona
def margaret_obrien() -> Chart:
    """50 F with hypothyroidism (on the problem list in ICD-10-CM only) on levothyroxine.
    Mammogram last done 3.5 years ago (overdue), cytology-only Pap 3.6 years ago
    (overdue), TSH from an outside lab coded with the LOINC OID, due in about a month.
    Her second Shingrix was given at a pharmacy 20 days after the first: too soon (minimum
    4 weeks), so it does not count, and the repeat dose is allowed only from 4 weeks after
    it (3 days after the visit): due-soon with that date, nothing proposed today."""
    c = Chart("pat-margaret-obrien", given=["Margaret", "Anne"], family="O'Brien",
              sex="female", born=date(1976, 9, 2), mrn="RFM-100871", pcp="prac-whitfield",
              phone="(708) 555-0112", address="77 Forest Ave")
    # QUIRK: a Condition coded only in ICD-10-CM (no SNOMED), as billing-driven
    # problem lists often are.
    c.condition(None, ("E03.9", "Hypothyroidism, unspecified"), date(2011, 4, 20))
    c.condition(*GERD, date(2019, 8, 14))
    history(c, dates("8y+1mo", "1y", "11mo"), kind="annual", weight=72, height=165,
            bp=(122, 78), gain=0.3, smoking=NEVER, who="prac-whitfield")
    for day in dates("7y+1mo", "1y", "2y+1mo"):
        lab(c, "tsh", day, 2.1)
    # QUIRK: the outside lab's interface codes LOINC by its OID.
    lab(c, "tsh", ago("11mo"), 2.6, system=LOINC_OID)
    lab(c, "hba1c", ago("2y+1mo"), 5.6)
    mammogram(c, ago("3y+6mo"))
    mammogram(c, ago("5y+7mo"))
    pap(c, ago("3y+7mo"))
    colonoscopy(c, date(2021, 6, 15), "Two small hyperplastic polyps removed")
    hcv(c, date(2020, 3, 9))
    hiv(c, date(2020, 3, 9))
    c.immunize("td", date(2016, 4, 11))
    flu_seasons(c, 2019, 2026, month=10, day=3)
    for n, day in enumerate([date(1999, 2, 1), date(1999, 3, 3), date(1999, 8, 9)], 1):
        c.immunize("hepb", day, dose=n, series=3)
    c.immunize("shingrix", ago(45), dose=1, series=2)
    c.immunize("shingrix", ago(25), dose=2, series=2, primary=False)
    c.prescribe("levothyroxine100", date(2011, 4, 20), ago(200),
                reason=("40930008", "Hypothyroidism"), who="prac-whitfield")
    return c


@persona
def harold_jensen() -> Chart:
    """72 M, COPD, ex-smoker (45 pack-years, quit 2014) on losartan + HCTZ and
    atorvastatin. Annual wellness visit: low-dose CT lapsed (13 months), AAA ultrasound
    never done, RSV vaccine due (COPD), electrolytes and lipids due next month. A potassium
    of 0.4 mmol/L from a point-of-care meter 2 weeks ago is impossible (a decimal slip): it
    is listed as "check this value" and does not satisfy the potassium monitoring."""
    c = Chart("pat-harold-jensen", given=["Harold", "Eugene"], family="Jensen", sex="male",
              born=date(1954, 6, 21), mrn="RFM-100412", pcp="prac-okafor",
              phone="(312) 555-0143", address="905 S Harlem Ave")
    c.condition(("13645005", "Chronic obstructive lung disease"),
                ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
                date(2015, 2, 3))
    c.condition(*HTN, date(2010, 7, 1))
    c.condition(*HLD, date(2012, 3, 9))
    c.condition(("233604007", "Pneumonia"), ("J18.9", "Pneumonia, unspecified organism"),
                date(2022, 1, 10), status="resolved", abated=date(2022, 2, 2),
                category="encounter-diagnosis")
    visits = history(c, dates("7y", "6mo", "10mo+16d"), weight=91, height=180,
                     bp=(134, 80), smoking=EX)
    last = list(visits)[-1]
    c.smoking(last, *EX, pack_years=45, quit_date=date(2014, 3, 1))
    for day in list(visits)[-11::2]:
        bmp(c, day, k=4.1, cr=1.05, egfr=71)
        lipids(c, day, ldl=88, chol=162, hdl=41, tg=166)
    lab(c, "potassium", ago(14), 0.4, hour=11, note="i-STAT, entered by hand")
    c.procedure("16334891000119106", "Low dose computed tomography of thorax", ago("13mo"),
                extra_codings=[(CPT, "71271", "CT thorax low dose lung cancer screening")],
                text="LDCT lung cancer screening — Lung-RADS 2, benign appearance")
    c.procedure("16334891000119106", "Low dose computed tomography of thorax",
                ago("2y+1mo"), text="LDCT lung cancer screening — Lung-RADS 1")
    colonoscopy(c, date(2017, 3, 22), "Tubular adenoma x1, removed")
    hcv(c, date(2018, 5, 2))
    c.immunize("tdap", date(2017, 10, 2))
    flu_seasons(c, 2017, 2025, key="flu_hd", month=9, day=22)
    c.immunize("flu_hd", date(2026, 9, 21))
    c.immunize("pcv15", date(2023, 10, 9))
    c.immunize("shingrix", date(2021, 3, 1), dose=1, series=2)
    c.immunize("shingrix", date(2021, 6, 2), dose=2, series=2)
    c.prescribe("losartan50", date(2016, 5, 1), ago(150))
    c.prescribe("hctz25", date(2016, 5, 1), ago(150))
    c.prescribe("atorvastatin20", date(2012, 3, 9), ago(150))
    c.prescribe("albuterol", date(2015, 2, 3), ago(150), supply_days=30, repeats=5,
                quantity_per_fill=1, form="INH")
    return c


@persona
def walter_kowalski() -> Chart:
    """79 M, atrial fibrillation on warfarin and amiodarone, heart failure on furosemide.
    INR last checked 32 days ago (overdue on a 4-week interval), amiodarone TSH/ALT due
    within the month; his flu shot this season is only in the state registry."""
    c = Chart("pat-walter-kowalski", given=["Walter"], family="Kowalski", sex="male",
              born=date(1947, 2, 11), mrn="RFM-100055", pcp="prac-whitfield",
              phone="(708) 555-0166", address="3320 Cicero Ave", language="pl")
    c.condition(*AFIB, date(2019, 1, 14))
    c.condition(("84114007", "Heart failure"),
                ("I50.32", "Chronic diastolic (congestive) heart failure"), date(2020, 2, 20))
    c.condition(*HTN, date(2005, 6, 1))
    history(c, dates("6y", "6mo", "2mo"), weight=82, height=174, bp=(128, 72),
            smoking=NEVER, who="prac-whitfield")
    for n, day in enumerate(dates("1y", "4w", 32)):
        lab(c, "inr" if n % 3 else "inr_poc", day, [2.4, 2.8, 2.1, 3.1, 2.6][n % 5])
    for day in dates("3y+5mo", "6mo", "5mo"):
        lab(c, "tsh", day, 3.2)
        lab(c, "alt", day, 31)
    for day in dates("3y+2mo", "6mo", "2mo"):
        bmp(c, day, k=4.3, cr=1.24, egfr=57)
    hcv(c, date(2016, 11, 2))
    c.immunize("rsv_arexvy", date(2024, 9, 26))
    c.immunize("pcv20", date(2022, 10, 10))
    c.immunize("zostavax", date(2012, 10, 1))
    c.immunize("td", date(2018, 7, 30))
    flu_seasons(c, 2019, 2025, key="flu_hd", month=9, day=30)
    c.prescribe("warfarin5", date(2019, 1, 14), ago(75), every="3mo", supply_days=90,
                repeats=0, who="prac-whitfield", reason=("49436004", "Atrial fibrillation"))
    c.prescribe("amiodarone200", date(2020, 3, 2), ago(75), who="prac-whitfield")
    c.prescribe("furosemide40", date(2020, 2, 20), ago(75), who="prac-whitfield")
    c.prescribe("metoprolol25", date(2019, 1, 14), ago(75), who="prac-whitfield",
                quantity_per_fill=180)
    return c


@persona
def denise_carter() -> Chart:
    """41 F, bipolar I on lithium since 2009, lithium-induced hypothyroidism on
    levothyroxine. Lithium level due in about two weeks (every 3 months); the last
    HbA1c screen (weight gain on lithium, BMI 31) is just over 3 years old."""
    c = Chart("pat-denise-carter", given=["Denise", "Marie"], family="Carter", sex="female",
              born=date(1985, 7, 19), mrn="RFM-101190", pcp="prac-okafor",
              phone="(773) 555-0109", address="6120 S Kedzie Ave")
    c.condition(*BIPOLAR, date(2008, 10, 2))
    c.condition(("40930008", "Hypothyroidism"),
                ("E03.2", "Hypothyroidism due to medicaments and other exogenous substances"),
                date(2019, 5, 13))
    history(c, dates("6y", "6mo", "75d"), weight=78, height=158, bp=(118, 76),
            gain=0.4, smoking=NEVER)
    for day in dates("2y", "3mo", 75):
        lab(c, "lithium", day, 0.8)
    for day in dates("2y+1mo", "6mo", "4mo"):
        lab(c, "tsh", day, 2.9)
        bmp(c, day, k=4.0, cr=0.9, egfr=83)
    lab(c, "hba1c", ago("3y+1mo"), 5.8)
    mammogram(c, ago("1y+9mo"), as_procedure=True)
    pap(c, ago("3y+10mo"), hpv=True)
    hcv(c, date(2016, 8, 1))
    hiv(c, date(2016, 8, 1))
    c.immunize("tdap", date(2017, 6, 5))
    flu_seasons(c, 2020, 2025, month=11, day=2)
    c.prescribe("lithium300", date(2009, 1, 6), ago(60), every="6mo", form="CAP",
                quantity_per_fill=270, reason=("13746004", "Bipolar disorder"))
    c.prescribe("levothyroxine25", date(2019, 5, 13), ago(60))
    return c


@persona
def eleanor_whitaker() -> Chart:
    """64 F, metastatic pancreatic cancer, enrolled in hospice in September; type 2
    diabetes with neuropathy (metformin stopped at enrolment), former smoker. Every
    screening, diabetes lab and vaccine that honours hospice is excluded; her oxycodone
    runs out in 10 days (controlled substance: physician review, not a 12-month
    renewal)."""
    c = Chart("pat-eleanor-whitaker", given=["Eleanor", "Ruth"], family="Whitaker",
              sex="female", born=date(1962, 4, 30), mrn="RFM-100388", pcp="prac-okafor",
              phone="(312) 555-0150", address="48 Ridgeland Ave")
    c.condition(*T2DM, date(2010, 11, 3))
    c.condition(("1511000119107", "Peripheral neuropathy due to type 2 diabetes mellitus"),
                ("E11.42", "Type 2 diabetes mellitus with diabetic polyneuropathy"),
                date(2019, 4, 16))
    c.condition(("363418001", "Malignant tumor of pancreas"),
                ("C25.9", "Malignant neoplasm of pancreas, unspecified"), ago("9mo"))
    c.condition(("94381002", "Metastatic malignant neoplasm to liver"),
                ("C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct"),
                ago("9mo"))
    c.condition(("170935008", "Full care by hospice"), None, ago(76))
    c.procedure("305336008", "Admission to hospice", ago(76),
                text="Admitted to Heartland Home Hospice")
    hospice_assessment(c, ago(76))
    history(c, dates("6y", "6mo", 80), weight=68, height=163, bp=(124, 74), gain=-0.6,
            smoking=EX)
    c.smoking(ago(80), *EX, pack_years=30, quit_date=date(2015, 6, 1))
    for day in dates("3y", "6mo", "5mo"):
        lab(c, "hba1c", day, 7.1)
        bmp(c, day, k=4.2, cr=0.9, egfr=68)
    hcv(c, date(2016, 4, 4))
    hiv(c, date(2016, 4, 4))
    c.immunize("td", date(2014, 5, 19))
    c.prescribe("metformin500", date(2010, 11, 3), ago("13mo"), stopped=ago(76))
    c.prescribe("oxycodone_apap", ago(20), ago(20), supply_days=30, repeats=0,
                validity="30d", quantity_per_fill=90,
                reason=("363418001", "Malignant tumor of pancreas"))
    return c


@persona
def robert_nakamura() -> Chart:
    """61 M, ulcerative colitis, total proctocolectomy in 2019 (colorectal screening
    excluded). No active prescriptions. Former light smoker (15 pack-years, quit 2000):
    not a lung-screening candidate. HbA1c screen falls due next month; Td lapsed."""
    c = Chart("pat-robert-nakamura", given=["Robert", "Ken"], family="Nakamura", sex="male",
              born=date(1965, 1, 8), mrn="RFM-100921", pcp="prac-okafor",
              phone="(312) 555-0133", address="2711 N Lincoln Ave")
    c.condition(("64766004", "Ulcerative colitis"), ("K51.90", "Ulcerative colitis, "
                "unspecified, without complications"), date(1998, 4, 2), status="inactive")
    c.procedure("26390003", "Total colectomy", date(2019, 6, 18),
                text="Total proctocolectomy with ileal pouch-anal anastomosis (J-pouch)",
                extra_codings=[(CPT, "44158", "Colectomy, total, abdominal, with proctectomy;"
                                " with ileoanal anastomosis, creation of ileal reservoir")])
    history(c, dates("8y", "1y", "2y+11mo"), kind="annual", weight=83, height=176,
            bp=(126, 80), smoking=EX)
    history(c, dates("1y+11mo", "1y", 300), kind="annual", weight=84, height=176,
            bp=(128, 80), smoking=EX)
    c.smoking(ago(300), *EX, pack_years=15, quit_date=date(2000, 1, 1))
    lab(c, "hba1c", ago("2y+11mo"), 5.4)
    lipids(c, ago("2y+11mo"), ldl=118, chol=196, hdl=52, tg=130)
    hcv(c, date(2015, 9, 14))
    hiv(c, date(2015, 9, 14))
    c.immunize("td", date(2015, 9, 14))
    c.immunize("shingrix", date(2023, 10, 2), dose=1, series=2)
    c.immunize("shingrix", date(2024, 1, 8), dose=2, series=2)
    c.immunize("pcv20", date(2025, 10, 20))
    flu_seasons(c, 2020, 2026, month=10, day=20)
    # Stopped after myalgias; lipids since managed with diet.
    c.prescribe("simvastatin20", date(2018, 1, 9), date(2020, 1, 10), stopped=date(2021, 2, 1))
    return c


@persona
def susan_greenberg() -> Chart:
    """54 F, total hysterectomy for fibroids in 2015 (cervical screening excluded),
    hypothyroid on levothyroxine with the last TSH 14 months ago; Td falls due on
    2026-12-20 (give it now); first Shingrix dose only."""
    c = Chart("pat-susan-greenberg", given=["Susan", "Leah"], family="Greenberg",
              sex="female", born=date(1972, 10, 5), mrn="RFM-100507", pcp="prac-whitfield",
              phone="(708) 555-0198", address="19 Longcommon Rd")
    c.condition(("95315005", "Uterine leiomyoma"), ("D25.9", "Leiomyoma of uterus, "
                "unspecified"), date(2013, 6, 4), status="resolved", abated=date(2015, 2, 10))
    c.condition(*HYPOTHYROID, date(2012, 9, 18))
    c.procedure("116140006", "Total hysterectomy", date(2015, 2, 10),
                text="Total abdominal hysterectomy with bilateral salpingectomy",
                extra_codings=[(CPT, "58150", "Total abdominal hysterectomy (corpus and "
                                "cervix)")], reason=("95315005", "Uterine leiomyoma"))
    history(c, dates("8y", "1y", "14mo"), kind="annual", weight=63, height=167, bp=(116, 74),
            smoking=NEVER, who="prac-whitfield")
    for day in dates("8y", "1y", "14mo"):
        lab(c, "tsh", day, 1.8)
    mammogram(c, ago("10mo"), as_procedure=True)
    mammogram(c, ago("2y+10mo"), as_procedure=True)
    colonoscopy(c, date(2022, 4, 19))
    hcv(c, date(2018, 3, 5))
    hiv(c, date(2018, 3, 5))
    c.immunize("tdap", date(2016, 12, 20))
    c.immunize("shingrix", ago("5mo"), dose=1, series=2)
    flu_seasons(c, 2021, 2026, month=10, day=20)
    c.prescribe("levothyroxine125", date(2012, 9, 18), ago(340), who="prac-whitfield")
    return c


@persona
def patricia_hale() -> Chart:
    """63 F, BRCA1 carrier after prophylactic bilateral mastectomy (breast screening
    excluded); psoriatic arthritis on weekly methotrexate with labs due in 10 days;
    Cologuard 35 months ago (due-soon); HPV co-test 5 years ago (overdue)."""
    c = Chart("pat-patricia-hale", given=["Patricia"], family="Hale", sex="female",
              born=date(1963, 5, 17), mrn="RFM-100633", pcp="prac-okafor",
              phone="(312) 555-0121", address="1200 Oak Park Ave")
    c.condition(None, ("Z15.01", "Genetic susceptibility to malignant neoplasm of breast"),
                date(2019, 11, 5), text="BRCA1 pathogenic variant carrier")
    c.condition(("428529004", "History of bilateral mastectomy"),
                ("Z90.13", "Acquired absence of bilateral breasts and nipples"),
                date(2020, 8, 11))
    c.condition(("33339001", "Psoriasis with arthropathy"),
                ("L40.50", "Arthropathic psoriasis, unspecified"), date(2017, 3, 30))
    c.condition(*HTN, date(2018, 2, 2))
    c.procedure("726636007", "Prophylactic bilateral mastectomy", date(2020, 8, 11),
                text="Bilateral prophylactic nipple-sparing mastectomy with reconstruction")
    history(c, dates("6y", "6mo", 80), weight=66, height=162, bp=(132, 82), smoking=NEVER)
    for day in dates("2y", "3mo", 80):
        cbc(c, day, wbc=5.9, hgb=12.8, plt=231)
        lab(c, "alt", day, 24)
        bmp(c, day, k=4.3, cr=0.78, egfr=86)
    pap(c, ago("5y+1mo"), hpv=True)
    c.coded_result("77353-1", "Noninvasive colorectal cancer DNA and occult blood "
                   "screening [Interpretation] in Stool Narrative", ago("2y+11mo"), NEG,
                   text="Cologuard (multitarget stool DNA)")
    hcv(c, date(2017, 3, 30))
    hiv(c, date(2017, 3, 30))
    c.immunize("tdap", date(2020, 7, 1))
    c.immunize("shingrix", date(2022, 2, 14), dose=1, series=2)
    c.immunize("shingrix", date(2022, 5, 16), dose=2, series=2)
    c.immunize("pcv20", date(2024, 10, 7))
    flu_seasons(c, 2019, 2026, month=10, day=7)
    c.prescribe("methotrexate2.5", date(2017, 4, 10), ago(80), every="3mo", supply_days=84,
                repeats=0, quantity_per_fill=72, reason=("33339001", "Psoriasis with "
                                                          "arthropathy"))
    c.prescribe("folic1", date(2017, 4, 10), ago(80), style="text")
    c.prescribe("losartan50", date(2018, 2, 2), ago(80))
    return c


@persona
def james_whitehorse() -> Chart:
    """56 M, chronic low back pain on oxycodone-acetaminophen under an opioid agreement
    (controlled: physician review), current smoker (38 pack-years) with a recent LDCT,
    on lisinopril for 6 years with no potassium/creatinine ever on file, never tested
    for hepatitis C or HIV, colonoscopy 10 years ago."""
    c = Chart("pat-james-whitehorse", given=["James", "Robert"], family="Whitehorse",
              sex="male", born=date(1970, 11, 29), mrn="RFM-101005", pcp="prac-whitfield",
              phone="(708) 555-0145", address="5501 W 35th St")
    c.condition(("278860009", "Chronic low back pain"), ("M54.50", "Low back pain, "
                "unspecified"), date(2016, 3, 1))
    c.condition(("18347007", "Spinal stenosis of lumbar region"),
                ("M48.061", "Spinal stenosis, lumbar region without neurogenic claudication"),
                date(2018, 9, 12))
    c.condition(*HTN, date(2020, 4, 6))
    c.condition(("65568007", "Cigarette smoker"), ("F17.210", "Nicotine dependence, "
                "cigarettes, uncomplicated"), date(2016, 3, 1))
    history(c, dates("5y", "6mo", 27), weight=98, height=183, bp=(142, 88), smoking=CURRENT,
            who="prac-whitfield")
    c.smoking(ago(27), *CURRENT, pack_years=38)
    colonoscopy(c, ago("10y+2mo"), "Normal; repeat in 10 years")
    c.procedure("16334891000119106", "Low dose computed tomography of thorax", ago("5mo"),
                text="LDCT lung cancer screening — Lung-RADS 2")
    # Monthly controlled-substance prescriptions, each a new order (no refills allowed).
    c.prescribe("oxycodone_apap", ago("2y"), ago(25), every="1mo", supply_days=30, repeats=0,
                validity="30d", quantity_per_fill=90, who="prac-whitfield",
                reason=("278860009", "Chronic low back pain"))
    c.prescribe("gabapentin300", date(2018, 9, 12), ago(100), who="prac-whitfield",
                form="CAP", quantity_per_fill=270)
    c.prescribe("lisinopril10", date(2020, 4, 6), ago(400), who="prac-whitfield")
    return c


@persona
def kevin_tran() -> Chart:
    """44 M, healthy, same-day visit for a cough. Too young for colorectal screening
    (45), BMI 23.8 (no diabetes screen); declined this season's flu shot at his October
    visit (Immunization status not-done). His only prescription is a 10-day amoxicillin
    course from an urgent-care visit 6 days ago (courseOfTherapyType acute): it runs out in
    4 days, and is never proposed for a 12-month renewal."""
    c = Chart("pat-kevin-tran", given=["Kevin", "Minh"], family="Tran", sex="male",
              born=date(1982, 6, 15), mrn="RFM-101377", pcp="prac-whitfield",
              phone="(773) 555-0190", address="4410 N Broadway, Unit 3")
    visits = history(c, dates("5y", "1y", 50), kind="annual18", weight=73, height=175,
                     bp=(118, 76), smoking=NEVER, who="prac-whitfield")
    lipids(c, list(visits)[-2], ldl=112, chol=181, hdl=55, tg=98, direct=False)
    hcv(c, date(2021, 11, 1))
    hiv(c, date(2021, 11, 1))
    c.immunize("tdap", date(2019, 8, 20))
    for n, day in enumerate([date(1995, 1, 9), date(1995, 2, 13), date(1995, 7, 10)], 1):
        c.immunize("hepb", day, dose=n, series=3, primary=False)
    c.immunize("flu", date(2024, 10, 15))
    # QUIRK: a vaccine offered and declined is recorded as not-done with a reason; it
    # must never count as given.
    c.immunize("flu", ago(50), status="not-done", reason_not_given=("PATOBJ",
                                                                     "patient objection"))
    c.prescribe("amoxicillin500", ago(6), ago(6), supply_days=10, repeats=0, validity="30d",
                quantity_per_fill=30, course="acute", who="prac-whitfield",
                reason=("36971009", "Sinusitis"))
    return c


@persona
def aisha_rahman() -> Chart:
    """45 F, annual physical. Just turned eligible for colorectal screening (never done);
    mammogram due next month; co-test 4 years ago still good; no hepatitis B vaccine on
    record."""
    c = Chart("pat-aisha-rahman", given=["Aisha"], family="Rahman", sex="female",
              born=date(1981, 11, 20), mrn="RFM-101422", pcp="prac-okafor",
              phone="(312) 555-0168", address="3030 W Devon Ave")
    c.condition(("72892002", "Normal pregnancy"), ("Z34.90", "Encounter for supervision of "
                "normal pregnancy, unspecified, unspecified trimester"), date(2021, 3, 1),
                status="resolved", abated=date(2021, 10, 28), category="encounter-diagnosis")
    history(c, dates("6y", "1y", "1y"), kind="annual", weight=62, height=160, bp=(112, 70),
            smoking=NEVER)
    mammogram(c, ago("1y+11mo"))
    mammogram(c, ago("3y+11mo"))
    pap(c, ago("4y"), hpv=True)
    hcv(c, date(2021, 4, 2))
    hiv(c, date(2021, 4, 2))
    c.immunize("tdap", date(2021, 8, 30))
    flu_seasons(c, 2021, 2026, month=10, day=9)
    return c


@persona
def tyler_brooks() -> Chart:
    """17 M, sports physical. Adolescent: most adult rules do not apply; HIV screening
    does from 15; Tdap given at 11; albuterol for exercise-induced bronchospasm."""
    c = Chart("pat-tyler-brooks", given=["Tyler", "James"], family="Brooks", sex="male",
              born=date(2009, 4, 3), mrn="RFM-101588", pcp="prac-whitfield",
              phone="(708) 555-0102", address="812 Park Ave")
    c.condition(("31387002", "Exercise-induced asthma"), ("J45.990", "Exercise induced "
                "bronchospasm"), date(2022, 3, 15))
    history(c, dates("5y", "1y", "1y"), kind="adolescent", weight=52, height=160,
            bp=(110, 66), gain=5.5, who="prac-whitfield")
    for n, day in enumerate([date(2009, 4, 4), date(2009, 6, 5), date(2009, 10, 6)], 1):
        c.immunize("hepb", day, dose=n, series=3)
    c.immunize("tdap", date(2020, 5, 4))
    c.immunize("menacwy", date(2020, 5, 4))
    c.immunize("hpv", date(2020, 5, 4), dose=1, series=2)
    c.immunize("hpv", date(2020, 11, 16), dose=2, series=2)
    c.immunize("flu", date(2025, 10, 17))
    c.prescribe("albuterol", date(2022, 3, 15), ago(100), supply_days=30, repeats=11,
                quantity_per_fill=1, form="INH", who="prac-whitfield")
    return c


@persona
def jose_nunez() -> Chart:
    """67 M, type 2 diabetes at goal on metformin (sent Epic-style as a Medication
    reference) and lisinopril; former smoker (quit 21 years ago: no lung screening; AAA
    ultrasound done). HbA1c and the kidney panel fall due within weeks; the 24-hour urine
    albumin has an effectivePeriod; his pharmacy flu shot and second Shingrix dose are
    only in the state registry; lisinopril runs out in 20 days. An HbA1c drawn 3 weeks ago
    came back without a value (haemolysed specimen, dataAbsentReason error): it does not
    count, so the HbA1c is still due-soon."""
    c = Chart("pat-jose-nunez", given=["José", "Luis"], family="Núñez", sex="male",
              born=date(1959, 8, 9), mrn="RFM-100777", pcp="prac-okafor",
              phone="(773) 555-0177", address="2548 S Sawyer Ave", language="es")
    c.condition(*T2DM, date(2016, 2, 22))
    c.condition(*HTN, date(2013, 5, 1))
    c.condition(("239873007", "Osteoarthritis of knee"), ("M17.11", "Unilateral primary "
                "osteoarthritis, right knee"), date(2021, 9, 9))
    visits = history(c, dates("7y", "6mo", 170), weight=86, height=170, bp=(130, 78),
                     smoking=EX)
    c.smoking(ago(170), *EX, pack_years=25, quit_date=date(2005, 3, 1))
    for day, value in zip(list(visits)[-10:], [6.9, 7.2, 6.8, 6.7, 6.9, 6.5, 6.6, 6.8, 6.4,
                                                6.6], strict=True):
        lab(c, "hba1c", day, value)
        bmp(c, day, k=4.5, cr=1.02, egfr=77)
    lipids(c, ago(170), ldl=92, chol=170, hdl=44, tg=150)
    lipids(c, ago("1y+5mo"), ldl=99, chol=179, hdl=43, tg=168)
    lab(c, "egfr", ago("11mo"), 76)
    # QUIRK: a timed (24-hour) urine collection carries an effectivePeriod, not a
    # dateTime; its start is the day it counts from.
    lab(c, "uacr24", ago("11mo"), 41.0, when="period")
    lab(c, "uacr", ago("1y+11mo"), 36.0)
    lab(c, "b12", ago("8mo"), 412)
    lab(c, "hba1c", ago(21), None, absent=("error", "Error"),
        note="Specimen haemolysed; recollect.")
    aaa_ultrasound(c, date(2024, 2, 20), "aorta 2.1 cm, normal")
    colonoscopy(c, date(2019, 7, 30))
    hcv(c, date(2016, 2, 22))
    c.immunize("pcv20", date(2024, 11, 4))
    c.immunize("shingrix", date(2025, 1, 13), dose=1, series=2)
    flu_seasons(c, 2017, 2025, key="flu_hd", month=10, day=1)
    c.prescribe("metformin500", date(2016, 2, 22), ago(100), style="reference",
                reason=("44054006", "Diabetes mellitus type 2"), quantity_per_fill=180)
    c.prescribe("lisinopril10", date(2013, 5, 1), ago(340))
    c.prescribe("atorvastatin20", date(2016, 3, 7), ago(100))
    return c


@persona
def ruth_adeyemi() -> Chart:
    """Adult F (age unknown: no birth date, registration from a closed practice was never
    completed), type 2 diabetes on metformin and lisinopril. Every age-based rule is
    `unknown`; HbA1c due within the month; B12 lapsed; one outside HbA1c has no date at
    all (reported as a data issue)."""
    c = Chart("pat-ruth-adeyemi", given=["Ruth", "Folake"], family="Adeyemi", sex="female",
              born=None, mrn="RFM-102004", pcp="prac-okafor", phone="(312) 555-0115",
              address="6633 N Sheridan Rd, Apt 12B")
    c.condition(*T2DM, date(2015, 1, 1))
    c.condition(*HTN, date(2015, 1, 1))
    history(c, dates("2y+9mo", "4mo", 70), weight=76, height=166, bp=(136, 82),
            smoking=NEVER)
    # QUIRK: a result abstracted from outside records with no date at all; previsit must
    # report it as a data issue, not crash and not guess.
    c.lab("hba1c", CLINIC_DAY, 7.9, when="none",
          note="Abstracted from outside records (Uptown Family Practice); date not stated.")
    for day, value in zip(dates("2y+9mo", "4mo", 70), [7.1, 7.6, 7.3, 7.0, 7.5, 7.2, 6.9, 7.4,
                                                       7.4], strict=False):
        lab(c, "hba1c", day, value)
    bmp(c, ago("6mo"), k=4.6, cr=0.95, egfr=74)
    lipids(c, ago("6mo"), ldl=97, chol=176, hdl=50, tg=144)
    lab(c, "uacr", ago("6mo"), 12)
    lab(c, "b12", ago("13mo"), 298)
    c.immunize("flu", date(2025, 10, 28))
    c.prescribe("metformin1000", ago("2y+9mo"), ago(200),
                reason=("44054006", "Diabetes mellitus type 2"))
    c.prescribe("lisinopril10", ago("2y+9mo"), ago(200))
    return c


@persona
def jordan_reyes() -> Chart:
    """52, administrative gender `unknown` (not captured at registration), type 2 diabetes
    at goal on metformin; smoker whose pack-years were never recorded. Sex-specific rules
    are `unknown`; lung screening is `unknown` (pack-years missing); B12 due next month.
    PPSV23 alone 7 months ago: the pneumococcal conjugate dose is due-soon, allowed only from
    a year after it (nothing proposed today)."""
    c = Chart("pat-jordan-reyes", given=["Jordan", "A."], family="Reyes", sex="unknown",
              born=date(1974, 2, 28), mrn="RFM-101842", pcp="prac-okafor",
              phone="(773) 555-0124", address="1700 W Division St")
    c.condition(*T2DM, date(2019, 6, 10))
    visits = history(c, dates("6y", "6mo", 60), weight=88, height=172, bp=(128, 80),
                     smoking=CURRENT)
    for day in list(visits)[-8:]:
        lab(c, "hba1c", day, 6.8)
    bmp(c, ago("5mo"), k=4.2, cr=0.88, egfr=92)
    lab(c, "uacr", ago("5mo"), 9)
    lipids(c, ago("5mo"), ldl=84, chol=160, hdl=48, tg=139)
    lab(c, "b12", ago("11mo"), 388)
    lab(c, "b12", ago("2y"), 405)
    colonoscopy(c, date(2024, 5, 2))
    hcv(c, date(2019, 6, 10))
    hiv(c, date(2019, 6, 10))
    c.immunize("tdap", date(2022, 1, 10))
    # PPSV23 alone, 7 months ago (a pharmacy, for diabetes and smoking): the conjugate
    # vaccine that completes the series is allowed only a year after it (ACIP).
    c.immunize("ppsv23", ago("7mo"), primary=False)
    flu_seasons(c, 2019, 2026, month=10, day=12)
    c.prescribe("metformin500", date(2019, 6, 10), ago(60), quantity_per_fill=180)
    return c


@persona
def dorothy_jackson() -> Chart:
    """71 F, Medicare annual wellness visit. DXA due in 3 weeks, colonoscopy 11 years ago
    and a positive FIT 10 weeks ago with no colonoscopy since (follow-up colonoscopy for
    the physician, not "screened"), potassium/creatinine (HCTZ) and lipids (simvastatin)
    lapsed; flu shot recorded both by the clinic and, again, by the state registry. Her
    amlodipine prescription's arithmetic says it runs out in 2 months, but she collected
    her refills late (MedicationDispense): two fills are left and last until after the
    renewal horizon."""
    c = Chart("pat-dorothy-jackson", given=["Dorothy", "Mae"], family="Jackson",
              sex="female", born=date(1955, 3, 12), mrn="RFM-100199", pcp="prac-whitfield",
              phone="(708) 555-0131", address="401 Burlington Ave")
    c.condition(*HTN, date(2008, 4, 15))
    c.condition(*HLD, date(2011, 1, 20))
    c.condition(("312894000", "Osteopenia"), ("M85.80", "Other specified disorders of bone "
                "density and structure, unspecified site"), ago("23mo"))
    history(c, dates("8y", "1y", "1y+1mo"), kind="annual65", weight=70, height=161,
            bp=(138, 78), smoking=NEVER, who="prac-whitfield")
    bmp(c, ago("13mo"), k=3.9, cr=0.86, egfr=72)
    bmp(c, ago("2y+1mo"), k=3.7, cr=0.84, egfr=74)
    lipids(c, ago("1y+8mo"), ldl=101, chol=192, hdl=61, tg=150)
    c.procedure("312681000", "Bone density scan", ago("23mo"),
                extra_codings=[(CPT, "77080", "Dual-energy X-ray absorptiometry (DXA), bone "
                                "density study, axial skeleton")],
                text="DXA: lumbar spine T-score -1.8, femoral neck -1.6 (osteopenia)")
    c.imaging("38267-1", "DXA Lumbar spine [T-score] Bone density", ago("23mo"), "-1.8")
    mammogram(c, ago("13mo"))
    colonoscopy(c, date(2015, 12, 3))
    fit(c, ago(70), positive=True)
    hcv(c, date(2016, 5, 10))
    c.immunize("ppsv23", date(2015, 4, 6))
    c.immunize("td", date(2013, 3, 25))
    c.immunize("shingrix", date(2020, 11, 2), dose=1, series=2)
    c.immunize("shingrix", date(2021, 2, 1), dose=2, series=2)
    flu_seasons(c, 2018, 2025, key="flu_hd", month=9, day=18)
    c.immunize("flu_hd", date(2026, 9, 17), lot="HD3391")
    c.prescribe("hctz25", date(2008, 4, 15), ago(200), who="prac-whitfield")
    amlodipine = c.prescribe("amlodipine5", date(2014, 8, 1), ago(300), who="prac-whitfield")
    for day in (ago(300), ago(150)):  # 90 days each, the second fill two months late
        c.dispense("amlodipine5", day, amlodipine)
    c.prescribe("simvastatin20", date(2011, 1, 20), ago(200), who="prac-whitfield")
    return c


@persona
def gloria_esposito() -> Chart:
    """76 F, rheumatoid arthritis on weekly methotrexate: CBC, ALT and creatinine last
    drawn 100 days ago (overdue on a 3-month interval); last DXA 5 years ago; no RSV
    vaccine yet at 76."""
    c = Chart("pat-gloria-esposito", given=["Gloria"], family="Esposito", sex="female",
              born=date(1950, 7, 25), mrn="RFM-100043", pcp="prac-okafor",
              phone="(708) 555-0184", address="2215 N 76th Ave")
    c.condition(*RA, date(2015, 5, 5))
    c.condition(("64859006", "Osteoporosis"), ("M81.0", "Age-related osteoporosis without "
                "current pathological fracture"), date(2021, 6, 1))
    history(c, dates("6y", "6mo", 100), weight=60, height=158, bp=(130, 76), smoking=NEVER)
    for day in dates("3y", "3mo", 100):
        cbc(c, day, wbc=5.2, hgb=12.1, plt=210)
        lab(c, "alt", day, 19)
        bmp(c, day, k=4.4, cr=0.92, egfr=62)
    c.procedure("312681000", "Bone density scan", date(2021, 6, 1),
                text="DXA: femoral neck T-score -2.7 (osteoporosis)")
    hcv(c, date(2017, 9, 12))
    c.immunize("pcv15", date(2024, 1, 22))
    c.immunize("ppsv23", date(2025, 2, 3))
    c.immunize("shingrix", date(2019, 5, 6), dose=1, series=2)
    c.immunize("shingrix", date(2019, 8, 5), dose=2, series=2)
    c.immunize("tdap", date(2019, 5, 6))
    flu_seasons(c, 2018, 2026, key="flu_hd", month=10, day=6)
    c.prescribe("methotrexate2.5", date(2015, 5, 5), ago(100), every="3mo", supply_days=84,
                repeats=0, quantity_per_fill=96, reason=("69896004", "Rheumatoid arthritis"))
    c.prescribe("folic1", date(2015, 5, 5), ago(100), style="text")
    c.prescribe("alendronate10", date(2021, 6, 1), ago(100))
    return c


@persona
def frank_deluca() -> Chart:
    """69 M (birthday yesterday), atrial fibrillation on warfarin and amiodarone, current
    heavy smoker (50 pack-years). INR due in 4 days, amiodarone TSH/ALT overdue, never
    had a low-dose CT; AAA ultrasound done."""
    c = Chart("pat-frank-deluca", given=["Frank", "Anthony"], family="DeLuca", sex="male",
              born=date(1957, 11, 30), mrn="RFM-100301", pcp="prac-whitfield",
              phone="(708) 555-0159", address="7420 W Roosevelt Rd")
    c.condition(*AFIB, date(2021, 8, 3))
    c.condition(*HTN, date(2012, 10, 1))
    c.condition(("65568007", "Cigarette smoker"), ("F17.210", "Nicotine dependence, "
                "cigarettes, uncomplicated"), date(2012, 10, 1))
    history(c, dates("5y", "6mo", 24), weight=95, height=178, bp=(136, 84), smoking=HEAVY,
            who="prac-whitfield")
    c.smoking(ago(24), *HEAVY, pack_years=50)
    for n, day in enumerate(dates("1y", "4w", 24)):
        lab(c, "inr", day, [2.2, 2.7, 3.0, 2.5][n % 4])
    for day in dates("2y+7mo", "6mo", "7mo"):
        lab(c, "tsh", day, 4.1)
        lab(c, "alt", day, 38)
    bmp(c, ago("3mo"), k=4.6, cr=1.1, egfr=70)
    bmp(c, ago("1y+3mo"), k=4.4, cr=1.0, egfr=76)
    aaa_ultrasound(c, date(2023, 3, 14), "aorta 2.6 cm, normal")
    colonoscopy(c, date(2018, 1, 16))
    hcv(c, date(2019, 4, 1))
    c.immunize("pcv20", date(2023, 3, 14))
    c.immunize("td", date(2020, 2, 10))
    flu_seasons(c, 2021, 2026, key="flu_hd", month=10, day=2)
    c.prescribe("warfarin2.5", date(2021, 8, 3), ago(60), every="3mo", repeats=0,
                who="prac-whitfield", reason=("49436004", "Atrial fibrillation"))
    c.prescribe("amiodarone200", date(2021, 9, 1), ago(60), who="prac-whitfield")
    c.prescribe("lisinopril10", date(2012, 10, 1), ago(60), who="prac-whitfield")
    return c


@persona
def linh_pham() -> Chart:
    """66 F, rheumatoid arthritis on methotrexate with labs 6 weeks ago (satisfied); has
    so far declined mammography and a bone density scan (neither ever done)."""
    c = Chart("pat-linh-pham", given=["Linh", "Thi"], family="Pham", sex="female",
              born=date(1960, 2, 14), mrn="RFM-101256", pcp="prac-okafor",
              phone="(773) 555-0141", address="1132 W Argyle St", language="vi")
    c.condition(*RA, date(2018, 10, 22))
    history(c, dates("6y", "6mo", 42), weight=53, height=152, bp=(124, 76), smoking=NEVER)
    for day in dates("2y", "3mo", 42):
        cbc(c, day, wbc=6.1, hgb=12.4, plt=260)
        lab(c, "alt", day, 22)
        bmp(c, day, k=4.1, cr=0.71, egfr=93)
    pap(c, ago("2y"), hpv=True)
    colonoscopy(c, date(2020, 9, 29))
    hcv(c, date(2018, 10, 22))
    hiv(c, date(2018, 10, 22))
    c.immunize("tdap", date(2018, 10, 22))
    c.immunize("pcv20", date(2025, 3, 3))
    c.immunize("shingrix", date(2024, 9, 9), dose=1, series=2)
    c.immunize("shingrix", date(2024, 12, 9), dose=2, series=2)
    flu_seasons(c, 2019, 2026, month=10, day=16)
    c.prescribe("methotrexate2.5", date(2018, 11, 1), ago(42), every="3mo", supply_days=84,
                repeats=0, quantity_per_fill=72, reason=("69896004", "Rheumatoid arthritis"))
    c.prescribe("folic1", date(2018, 11, 1), ago(42), style="text")
    return c


@persona
def carlos_mendoza() -> Chart:
    """48 M, type 2 diabetes diagnosed 6 weeks ago (HbA1c 7.9 %), started metformin and
    lisinopril then: baseline labs done, so his diabetes labs are satisfied; too new on
    the drugs for the B12 (1 year) and potassium (6 months) monitoring rules."""
    c = Chart("pat-carlos-mendoza", given=["Carlos", "Alberto"], family="Mendoza",
              sex="male", born=date(1978, 3, 22), mrn="RFM-101733", pcp="prac-whitfield",
              phone="(773) 555-0106", address="3819 W 26th St")
    c.condition(*T2DM_HYPER, ago(45))
    c.condition(*HTN, ago(45))
    history(c, dates("4y", "1y", 45), kind="annual", weight=97, height=173, bp=(142, 90),
            smoking=NEVER, who="prac-whitfield")
    lab(c, "hba1c", ago("2y+1mo"), 6.1)
    lab(c, "hba1c", ago(45), 7.9)
    bmp(c, ago(45), k=4.2, cr=0.95, egfr=96)
    lab(c, "uacr", ago(45), 18)
    lipids(c, ago(45), ldl=131, chol=211, hdl=39, tg=205)
    fit(c, ago(200))
    hcv(c, date(2022, 12, 5))
    hiv(c, date(2022, 12, 5))
    c.immunize("tdap", date(2022, 12, 5))
    c.immunize("flu", date(2026, 10, 21))
    c.prescribe("metformin500", ago(45), ago(45), quantity_per_fill=180, who="prac-whitfield")
    c.prescribe("lisinopril10", ago(45), ago(45), who="prac-whitfield")
    return c


@persona
def betty_olson() -> Chart:
    """86 F, atrial fibrillation on warfarin and amiodarone, osteoporosis on alendronate:
    the well-monitored patient (INR 10 days ago, TSH/ALT 2 months ago, DXA a year ago,
    RSV vaccinated)."""
    c = Chart("pat-betty-olson", given=["Elizabeth", "Jean"], family="Olson", sex="female",
              born=date(1940, 9, 9), mrn="RFM-100012", pcp="prac-okafor",
              phone="(708) 555-0127", address="Riverside Senior Residences, 100 Quincy St",
              name_text="Betty Olson")
    c.condition(*AFIB, date(2017, 2, 7))
    c.condition(("64859006", "Osteoporosis"), ("M81.0", "Age-related osteoporosis without "
                "current pathological fracture"), date(2016, 8, 30))
    c.condition(*HYPOTHYROID, date(2021, 3, 3), status="resolved", abated=date(2022, 4, 1),
                text="Subclinical hypothyroidism (amiodarone), resolved")
    history(c, dates("6y", "6mo", 10), weight=58, height=155, bp=(126, 70), gain=-0.05,
            smoking=NEVER)
    for n, day in enumerate(dates("6mo", "4w", 10)):
        lab(c, "inr_poc", day, [2.3, 2.6, 2.4, 2.9, 2.2][n % 5])
    for day in dates("3y+2mo", "6mo", "2mo"):
        lab(c, "tsh", day, 2.2)
        lab(c, "alt", day, 17)
        bmp(c, day, k=4.4, cr=1.0, egfr=52)
    c.procedure("312681000", "Bone density scan", ago("1y"), text="DXA: total hip T-score "
                "-2.6, stable vs prior")
    c.procedure("312681000", "Bone density scan", ago("3y"))
    c.immunize("rsv_abrysvo", date(2024, 10, 14))
    c.immunize("pcv20", date(2022, 11, 7))
    c.immunize("shingrix", date(2019, 1, 7), dose=1, series=2)
    c.immunize("shingrix", date(2019, 4, 8), dose=2, series=2)
    c.immunize("td", date(2019, 1, 7))
    flu_seasons(c, 2018, 2026, key="flu_hd", month=9, day=24)
    c.prescribe("warfarin2.5", date(2017, 2, 7), ago(30), every="3mo", repeats=0,
                reason=("49436004", "Atrial fibrillation"))
    c.prescribe("amiodarone200", date(2017, 3, 1), ago(30))
    c.prescribe("alendronate10", date(2016, 8, 30), ago(30))
    return c


@persona
def samuel_okoro() -> Chart:
    """35 M, new to the practice for a physical, BMI 31: screening HbA1c due (35-70 with
    overweight), HIV test on file from urgent care, hepatitis C never tested."""
    c = Chart("pat-samuel-okoro", given=["Samuel", "Chidi"], family="Okoro", sex="male",
              born=date(1991, 5, 2), mrn="RFM-102118", pcp="prac-whitfield",
              phone="(773) 555-0152", address="901 S Clinton St, Apt 1406")
    history(c, [ago(21)], kind="acute", weight=101, height=180, bp=(134, 86),
            smoking=NEVER, who="prac-whitfield")
    hiv(c, date(2022, 7, 19))
    return c


@persona
def emily_schultz() -> Chart:
    """29 F, bipolar II stable on lithium (levels, TSH and creatinine all current), here
    for a UTI. Pap (cytology alone under 30) 35 months ago: due next month."""
    c = Chart("pat-emily-schultz", given=["Emily", "Rose"], family="Schultz", sex="female",
              born=date(1997, 8, 18), mrn="RFM-101960", pcp="prac-okafor",
              phone="(312) 555-0193", address="2650 N Halsted St, Apt 3F")
    c.condition(("83225003", "Bipolar II disorder"), ("F31.81", "Bipolar II disorder"),
                date(2019, 2, 11))
    history(c, dates("5y", "6mo", 40), weight=61, height=168, bp=(110, 70), smoking=NEVER)
    for day in dates("1y+6mo", "3mo", 40):
        lab(c, "lithium", day, 0.7)
    for day in dates("1y+6mo", "6mo", 40):
        lab(c, "tsh", day, 1.9)
        bmp(c, day, k=4.0, cr=0.74, egfr=112)
    pap(c, ago("2y+11mo"))
    hcv(c, date(2019, 2, 11))
    hiv(c, date(2019, 2, 11))
    for n, day in enumerate([date(1997, 8, 19), date(1997, 10, 20), date(1998, 2, 23)], 1):
        c.immunize("hepb", day, dose=n, series=3, primary=False)
    c.immunize("tdap", date(2016, 9, 6))
    c.immunize("flu", date(2026, 10, 30))
    c.prescribe("lithium300", date(2019, 2, 11), ago(40), every="6mo", form="CAP",
                quantity_per_fill=180, reason=("83225003", "Bipolar II disorder"))
    return c


@persona
def raymond_fischer() -> Chart:
    """65 M, bipolar I on lithium for 30 years: lithium level 4 months old (overdue on a
    3-month interval), TSH and creatinine current. Former smoker (30 pack-years, quit
    2012): last low-dose CT 11 months ago (due next month); AAA ultrasound never done."""
    c = Chart("pat-raymond-fischer", given=["Raymond", "Paul"], family="Fischer", sex="male",
              born=date(1960, 12, 20), mrn="RFM-100460", pcp="prac-whitfield",
              phone="(708) 555-0173", address="15 Northgate Rd")
    c.condition(*BIPOLAR, date(1994, 6, 1))
    c.condition(("433144002", "Chronic kidney disease stage 3"),
                ("N18.30", "Chronic kidney disease, stage 3 unspecified"), date(2021, 4, 12))
    history(c, dates("6y", "6mo", "4mo"), weight=88, height=181, bp=(128, 80), smoking=EX,
            who="prac-whitfield")
    c.smoking(ago("4mo"), *EX, pack_years=30, quit_date=date(2012, 7, 1))
    for day in dates("2y+4mo", "3mo", "4mo"):
        lab(c, "lithium", day, 0.9)
    for day in dates("2y+4mo", "6mo", "4mo"):
        lab(c, "tsh", day, 3.8)
        bmp(c, day, k=4.5, cr=1.32, egfr=58)
    c.procedure("16334891000119106", "Low dose computed tomography of thorax", ago("11mo"),
                text="LDCT lung cancer screening — Lung-RADS 1")
    colonoscopy(c, date(2021, 2, 2))
    hcv(c, date(2016, 1, 20))
    c.immunize("pcv20", ago("1y+1mo"))
    c.immunize("td", date(2017, 5, 15))
    flu_seasons(c, 2020, 2026, month=10, day=8)
    c.prescribe("lithium300", date(1995, 1, 1), ago("4mo"), every="1y", form="CAP",
                quantity_per_fill=270, who="prac-whitfield",
                reason=("13746004", "Bipolar disorder"))
    return c


@persona
def thomas_begay() -> Chart:
    """66 M, new patient transferring from the Gallup IHS clinic: atrial fibrillation,
    type 2 diabetes, hypertension. His medications were entered from the bottles he
    brought (no dates, no dispense details; metformin as text only), no results are on
    our chart yet and intake (vitals, smoking history) is not done: labs are due,
    renewals and duration-based rules cannot be decided."""
    c = Chart("pat-thomas-begay", given=["Thomas"], family="Begay", sex="male",
              born=date(1960, 9, 1), mrn="RFM-102201", pcp="prac-whitfield",
              phone="(505) 555-0138", address="4120 Harlem Ave, Apt 2")
    c.condition(*AFIB, ago(9), category="encounter-diagnosis")
    c.condition(*T2DM, ago(9), category="encounter-diagnosis")
    c.condition(*HTN, ago(9), category="encounter-diagnosis")
    outside = "Gallup Indian Medical Center (outside prescriber)"
    for key in ("warfarin5", "amiodarone200", "lisinopril20", "atorvastatin40"):
        c.prescribe(key, ago(9), ago(9), authored=False, supply_days=None, repeats=None,
                    validity=None, outside=outside)
    c.prescribe("metformin500", ago(9), ago(9), authored=False, supply_days=None,
                repeats=None, validity=None, outside=outside, style="text")
    return c


@persona
def marcus_bell() -> Chart:
    """27 M, new patient after a psychiatric admission 3 weeks ago: started on lithium
    in hospital (levels there, none on our chart yet). Lithium monitoring due."""
    c = Chart("pat-marcus-bell", given=["Marcus", "Dwayne"], family="Bell", sex="male",
              born=date(1999, 1, 27), mrn="RFM-102230", pcp="prac-whitfield",
              phone="(773) 555-0199", address="5320 S Michigan Ave")
    c.condition(("13746004", "Bipolar disorder"), ("F31.2", "Bipolar disorder, current "
                "episode manic severe with psychotic features"), ago(30))
    c.prescribe("lithium300", ago(24), ago(24), form="CAP", supply_days=30, repeats=2,
                quantity_per_fill=90,
                outside="Hannah Goldberg, MD (Lakeshore Behavioral Hospital)")
    c.immunize("tdap", date(2017, 8, 14))
    return c


@persona
def nadia_haddad() -> Chart:
    """33 F, new patient: plaque psoriasis on methotrexate from her dermatologist and
    Hashimoto's thyroiditis on levothyroxine from her endocrinologist; none of their labs
    are on our chart, and no cervical screening on record."""
    c = Chart("pat-nadia-haddad", given=["Nadia"], family="Haddad", sex="female",
              born=date(1993, 6, 8), mrn="RFM-102245", pcp="prac-okafor",
              phone="(312) 555-0171", address="1845 N Milwaukee Ave")
    c.condition(("200965009", "Plaque psoriasis"), ("L40.0", "Psoriasis vulgaris"),
                date(2020, 5, 1))
    c.condition(("21983002", "Hashimoto thyroiditis"), ("E06.3", "Autoimmune thyroiditis"),
                date(2022, 1, 15))
    history(c, [ago(16)], kind="acute", weight=64, height=170, bp=(114, 72), smoking=NEVER)
    c.prescribe("methotrexate2.5", ago(70), ago(70), every="3mo", supply_days=84, repeats=1,
                quantity_per_fill=72, outside="Priya Raman, MD (North Shore Dermatology)")
    c.prescribe("levothyroxine25", ago(150), ago(150),
                outside="Daniel Cho, MD (Lakeview Endocrinology)")
    return c


@persona
def andre_williams() -> Chart:
    """39 M, HIV infection well controlled on Biktarvy (HIV screening excluded: already
    diagnosed); hepatitis B immune by vaccination. Seen by video since the pandemic: his
    last weight and height are 2.5 years old, so diabetes screening (35-70 with a BMI of
    25 or more in the last 2 years) cannot be decided."""
    c = Chart("pat-andre-williams", given=["Andre", "Lamont"], family="Williams", sex="male",
              born=date(1987, 3, 3), mrn="RFM-101611", pcp="prac-okafor",
              phone="(773) 555-0164", address="4700 N Kenmore Ave")
    c.condition(("86406008", "Human immunodeficiency virus infection"),
                ("B20", "Human immunodeficiency virus [HIV] disease"), date(2014, 9, 2))
    history(c, dates("6y", "6mo", "30mo"), weight=79, height=183, bp=(120, 76),
            smoking=NEVER)
    for day in dates("2y", "6mo", 90):
        bmp(c, day, k=4.1, cr=1.08, egfr=88)
    hcv(c, date(2014, 9, 2))
    for n, day in enumerate([date(2015, 1, 5), date(2015, 2, 2)], 1):
        c.immunize("hepb_heplisav", day, dose=n, series=2)
    c.immunize("pcv20", date(2023, 4, 3))
    c.immunize("tdap", date(2021, 6, 7))
    flu_seasons(c, 2019, 2026, month=10, day=27)
    c.prescribe("biktarvy", date(2014, 10, 1), ago(90), supply_days=30, repeats=11,
                quantity_per_fill=30, reason=("86406008", "Human immunodeficiency virus "
                                                         "infection"))
    return c


@persona
def michelle_novak() -> Chart:
    """56 F, metastatic breast cancer (left mastectomy 2021, bone metastases), in home
    hospice since October: the younger hospice patient, so the rules that stop at 59
    (hepatitis B) show the hospice exclusion too. Her hospice is recorded only as the
    hospice's Encounter (no hospice diagnosis or assessment), which is what excludes her.
    Video visit; her morphine ER runs out before the next visit (controlled: physician
    review)."""
    c = Chart("pat-michelle-novak", given=["Michelle", "Lynn"], family="Novak", sex="female",
              born=date(1970, 4, 22), mrn="RFM-101077", pcp="prac-okafor",
              phone="(708) 555-0118", address="3214 Maple Ave")
    c.condition(("372064008", "Malignant neoplasm of female breast"),
                ("C50.912", "Malignant neoplasm of unspecified site of left female breast"),
                date(2021, 2, 9))
    c.condition(("94222008", "Metastatic malignant neoplasm to bone"),
                ("C79.51", "Secondary malignant neoplasm of bone"), ago("7mo"))
    c.procedure("19303", "Mastectomy, simple, complete", date(2021, 3, 16), system=CPT,
                text="Left simple mastectomy with sentinel node biopsy")
    # Her hospice care is on the chart only as the hospice's Encounter (and as an
    # "Admission to hospice" Procedure, which the CMS Hospice library does not count).
    c.hospice_encounter(ago(48))
    c.procedure("305336008", "Admission to hospice", ago(48),
                text="Admitted to Heartland Home Hospice")
    history(c, dates("5y", "6mo", 50), weight=64, height=166, bp=(118, 72), gain=-0.5,
            smoking=NEVER)
    mammogram(c, date(2020, 12, 1))
    pap(c, date(2019, 6, 3), hpv=True)
    colonoscopy(c, date(2020, 6, 30))
    hcv(c, date(2019, 6, 3))
    hiv(c, date(2019, 6, 3))
    c.immunize("tdap", date(2021, 1, 11))
    flu_seasons(c, 2020, 2025, month=10, day=11)
    c.prescribe("morphine_er15", ago(14), ago(14), supply_days=14, repeats=0, validity="30d",
                quantity_per_fill=28, reason=("94222008", "Metastatic malignant neoplasm to "
                                                          "bone"))
    return c


@persona
def stanley_wojcik() -> Chart:
    """84 M, type 2 diabetes, heart failure: died in hospital on 2026-10-19, but the
    follow-up booked in September was never cancelled. A stale booking: no plan, no order;
    listed under input problems ("cancel it")."""
    c = Chart("pat-stanley-wojcik", given=["Stanley"], family="Wojcik", sex="male",
              born=date(1942, 1, 30), mrn="RFM-100021", pcp="prac-whitfield",
              phone="(708) 555-0105", address="2940 S Oak Park Ave", language="pl",
              died=date(2026, 10, 19))
    c.condition(*T2DM, date(2009, 3, 2))
    c.condition(*HTN, date(2001, 5, 1))
    c.condition(("84114007", "Heart failure"),
                ("I50.22", "Chronic systolic (congestive) heart failure"), date(2021, 8, 3))
    visits = history(c, dates("4y", "6mo", "3mo"), weight=77, height=172, bp=(132, 70),
                     smoking=EX, who="prac-whitfield")
    for day in list(visits)[-4:]:
        lab(c, "hba1c", day, 7.6)
        bmp(c, day, k=4.8, cr=1.41, egfr=48)
    c.immunize("pcv20", date(2023, 10, 2))
    flu_seasons(c, 2021, 2025, key="flu_hd", month=9, day=29)
    c.prescribe("metformin500", date(2009, 3, 2), ago("5mo"), who="prac-whitfield")
    c.prescribe("lisinopril10", date(2001, 5, 1), ago("5mo"), who="prac-whitfield")
    c.prescribe("furosemide40", date(2021, 8, 3), ago("5mo"), who="prac-whitfield")
    return c


# --- the day's schedule ---------------------------------------------------------------


def schedule(charts: dict[str, Chart]) -> list[dict[str, Any]]:
    """Appointments: the booked day on 2026-12-01, and the ones a planner must ignore."""
    c = charts
    day = CLINIC_DAY
    ok, wf, rn = "prac-okafor", "prac-whitfield", "prac-lindqvist"
    main, east = "loc-main", "loc-eastgate"
    dm = (SNOMED, "44054006", "Diabetes mellitus type 2")
    out = [
        # Dr. Okafor, Main St
        appointment("appt-1201-0800-lopez-lab", c["pat-maria-lopez"], day, 8, 0, 15, "lab",
                    rn, main, description="Fasting lab draw before 9:20 visit",
                    reason=dm, comment="Orders: HbA1c (placed 11/22). Check for other "
                                       "pre-visit labs."),
        appointment("appt-1201-0820-esposito", c["pat-gloria-esposito"], day, 8, 20, 20,
                    "chronic", ok, main, description="RA follow-up, methotrexate",
                    reason=(SNOMED, "69896004", "Rheumatoid arthritis")),
        appointment("appt-1201-0840-jensen", c["pat-harold-jensen"], day, 8, 40, 40, "awv",
                    ok, main, description="Medicare annual wellness visit (subsequent)"),
        appointment("appt-1201-0920-lopez", c["pat-maria-lopez"], day, 9, 20, 30, "chronic",
                    ok, main, description="Diabetes / HTN follow-up", reason=dm,
                    comment="Pt requests Spanish interpreter."),
        appointment("appt-1201-0950-pham", c["pat-linh-pham"], day, 9, 50, 20, "chronic", ok,
                    main, description="RA follow-up; Vietnamese interpreter booked",
                    reason=(SNOMED, "69896004", "Rheumatoid arthritis")),
        appointment("appt-1201-1010-carter", c["pat-denise-carter"], day, 10, 10, 20,
                    "chronic", ok, main, description="Med check (lithium, levothyroxine)",
                    reason=(SNOMED, "13746004", "Bipolar disorder")),
        appointment("appt-1201-1030-rahman", c["pat-aisha-rahman"], day, 10, 30, 40,
                    "physical", ok, main, description="Annual physical"),
        appointment("appt-1201-1110-schultz", c["pat-emily-schultz"], day, 11, 10, 20, "acute",
                    ok, main, description="Dysuria x2 days",
                    reason=(SNOMED, "49650001", "Dysuria")),
        appointment("appt-1201-1130-nunez", c["pat-jose-nunez"], day, 11, 30, 30, "chronic", ok,
                    main, description="Diabetes follow-up", reason=dm),
        appointment("appt-1201-1300-hale", c["pat-patricia-hale"], day, 13, 0, 20, "chronic",
                    ok, main, description="Psoriatic arthritis / BP follow-up"),
        appointment("appt-1201-1320-nakamura", c["pat-robert-nakamura"], day, 13, 20, 40,
                    "physical", ok, main, description="Annual physical"),
        appointment("appt-1201-1400-adeyemi", c["pat-ruth-adeyemi"], day, 14, 0, 20, "chronic",
                    ok, main, description="Diabetes follow-up", reason=dm,
                    comment="Registration incomplete: DOB needed at check-in."),
        appointment("appt-1201-1420-whitaker", c["pat-eleanor-whitaker"], day, 14, 20, 30,
                    "chronic", ok, main, description="Hospice co-management, symptom review",
                    reason=(SNOMED, "363418001", "Malignant tumor of pancreas")),
        appointment("appt-1201-1450-olson", c["pat-betty-olson"], day, 14, 50, 20, "chronic", ok,
                    main, description="AF / anticoagulation follow-up",
                    reason=(SNOMED, "49436004", "Atrial fibrillation")),
        appointment("appt-1201-1510-reyes", c["pat-jordan-reyes"], day, 15, 10, 20, "chronic",
                    ok, main, description="Diabetes follow-up", reason=dm,
                    status="pending"),
        appointment("appt-1201-1530-haddad", c["pat-nadia-haddad"], day, 15, 30, 40, "new", ok,
                    main, description="New patient: establish care"),
        appointment("appt-1201-1610-williams", c["pat-andre-williams"], day, 16, 10, 20,
                    "chronic", ok, main, description="HIV care follow-up",
                    reason=(SNOMED, "86406008", "Human immunodeficiency virus infection")),
        appointment("appt-1201-1630-novak", c["pat-michelle-novak"], day, 16, 30, 20,
                    "chronic", ok, main, description="Video visit: hospice co-management, "
                    "pain control", reason=(SNOMED, "372064008", "Malignant neoplasm of "
                                                                 "female breast")),
        # Dr. Whitfield, Eastgate
        appointment("appt-1201-0800-kowalski", c["pat-walter-kowalski"], day, 8, 0, 20,
                    "chronic", wf, east, description="AF / heart failure follow-up",
                    status="arrived", reason=(SNOMED, "49436004", "Atrial fibrillation")),
        appointment("appt-1201-0820-deluca", c["pat-frank-deluca"], day, 8, 20, 20, "chronic",
                    wf, east, description="Anticoagulation / AF follow-up",
                    reason=(SNOMED, "49436004", "Atrial fibrillation")),
        appointment("appt-1201-0840-obrien", c["pat-margaret-obrien"], day, 8, 40, 40,
                    "physical", wf, east, description="Annual physical"),
        appointment("appt-1201-0920-greenberg", c["pat-susan-greenberg"], day, 9, 20, 40,
                    "physical", wf, east, description="Annual physical"),
        appointment("appt-1201-1000-whitehorse", c["pat-james-whitehorse"], day, 10, 0, 30,
                    "chronic", wf, east, description="Chronic pain follow-up; opioid "
                    "agreement renewal, UDS due",
                    reason=(SNOMED, "278860009", "Chronic low back pain")),
        appointment("appt-1201-1030-jackson", c["pat-dorothy-jackson"], day, 10, 30, 40, "awv",
                    wf, east, description="Medicare annual wellness visit (subsequent)"),
        appointment("appt-1201-1110-tran", c["pat-kevin-tran"], day, 11, 10, 20, "acute", wf,
                    east, description="Cough x10 days",
                    reason=(SNOMED, "49727002", "Cough")),
        appointment("appt-1201-1130-begay", c["pat-thomas-begay"], day, 11, 30, 40, "new", wf,
                    east, description="New patient: transfer of care (records requested "
                    "from Gallup IHS)"),
        appointment("appt-1201-1300-fischer", c["pat-raymond-fischer"], day, 13, 0, 20,
                    "chronic", wf, east, description="Lithium / CKD follow-up",
                    reason=(SNOMED, "13746004", "Bipolar disorder")),
        # A lab draw booked AFTER the physician visit: the lab appointment's type says it is
        # lab-only, so it draws the labs and the 13:00 visit keeps the screenings.
        appointment("appt-1201-1340-fischer-lab", c["pat-raymond-fischer"], day, 13, 40, 15,
                    "lab", None, east, description="Lab draw (lithium level) after the "
                    "visit", reason=(SNOMED, "13746004", "Bipolar disorder")),
        # QUIRK: the patient died in October; nobody cancelled the booking.
        appointment("appt-1201-1050-wojcik", c["pat-stanley-wojcik"], day, 10, 50, 20,
                    "chronic", wf, east, description="Diabetes / heart failure follow-up",
                    reason=dm),
        appointment("appt-1201-1320-mendoza", c["pat-carlos-mendoza"], day, 13, 20, 20,
                    "chronic", wf, east, description="New diabetes: 6-week follow-up",
                    reason=dm),
        appointment("appt-1201-1340-okoro", c["pat-samuel-okoro"], day, 13, 40, 40,
                    "physical", wf, east, description="Establish care: first physical"),
        appointment("appt-1201-1420-bell", c["pat-marcus-bell"], day, 14, 20, 40, "new", wf,
                    east, description="Hospital follow-up: establish care after psychiatric "
                    "admission", reason=(SNOMED, "13746004", "Bipolar disorder")),
    ]
    # QUIRK: one scheduling feed sends times in UTC. 22:40Z is 16:40 in Chicago on the
    # clinic day; taking the UTC date naively would still land on 12-01 here, but the
    # next one below would not.
    sports = appointment("appt-1201-1640-brooks", c["pat-tyler-brooks"], day, 16, 40, 20,
                         "sports", wf, east, description="Sports physical (basketball)")
    sports["start"], sports["end"] = "2026-12-01T22:40:00Z", "2026-12-01T23:00:00Z"
    out.append(sports)

    # --- appointments a planner must ignore -------------------------------------------
    out += [
        appointment("appt-1201-1400-greenberg-cx", c["pat-susan-greenberg"], day, 14, 0, 40,
                    "physical", wf, east, description="Annual physical", status="cancelled",
                    cancelation="pat|Patient",
                    comment="Pt called to move to the 9:20 slot."),
        appointment("appt-1201-0740-esposito-lab", c["pat-gloria-esposito"], day, 7, 40, 15,
                    "lab", rn, main, description="Methotrexate labs", status="noshow"),
        appointment("appt-1201-0840-jensen-dup", c["pat-harold-jensen"], day, 8, 40, 40, "awv",
                    ok, main, description="Medicare annual wellness visit",
                    status="entered-in-error", comment="Duplicate booking."),
        appointment("appt-1130-1500-williams", c["pat-andre-williams"], ago(1), 15, 0, 20,
                    "acute", ok, main, description="Rash", status="fulfilled"),
        # QUIRK: yesterday's appointment never checked out, still "booked": the date, not
        # the status, must keep it out.
        appointment("appt-1130-1620-mendoza", c["pat-carlos-mendoza"], ago(1), 16, 20, 20,
                    "nurse", rn, main, description="BP check", status="booked"),
        appointment("appt-1202-0800-tran", c["pat-kevin-tran"], later(day, 1), 8, 0, 20,
                    "acute", wf, east, description="Cough recheck"),
        appointment("appt-1202-0900-haddad-lab", c["pat-nadia-haddad"], later(day, 1), 9, 0, 15,
                    "lab", rn, main, description="Lab draw"),
        appointment("appt-1202-1000-whitaker", c["pat-eleanor-whitaker"], later(day, 1), 10, 0,
                    30, "chronic", ok, main, description="Family meeting", status="pending"),
    ]
    # QUIRK: 03:30Z on 12-01 is 21:30 on 11-30 in Chicago: a video visit the evening
    # before, which a planner reading the UTC date would wrongly put on the clinic day.
    evening = appointment("appt-1130-2130-reyes-video", c["pat-jordan-reyes"], ago(1), 21, 30,
                          15, "acute", ok, main, description="Video visit: glucose readings")
    evening["start"], evening["end"] = "2026-12-01T03:30:00Z", "2026-12-01T03:45:00Z"
    out.append(evening)
    return out


def registry_immunizations(charts: dict[str, Chart]) -> list[dict[str, Any]]:
    """Doses reported by the state registry (I-CARE) that the clinic did not give: the
    NDJSON file a registry query returns, one Immunization per line."""
    records = [
        ("pat-walter-kowalski", "flu_hd", date(2026, 9, 28), "Walgreens #04321, Berwyn IL"),
        ("pat-jose-nunez", "flu_hd", date(2026, 10, 5), "CVS Pharmacy #8812, Chicago IL"),
        ("pat-jose-nunez", "shingrix", date(2025, 4, 14), "CVS Pharmacy #8812, Chicago IL"),
        # The same dose the clinic recorded: a registry echo must not count twice.
        ("pat-dorothy-jackson", "flu_hd", date(2026, 9, 17), "Riverside Family Medicine"),
        ("pat-samuel-okoro", "tdap", date(2019, 3, 11), "Northwestern Urgent Care"),
        ("pat-samuel-okoro", "flu", date(2024, 11, 2), "Jewel-Osco Pharmacy #3150"),
    ]
    out = []
    for n, (pid, key, when, performer) in enumerate(records, 1):
        cvx, display = VACCINES[key]
        out.append({
            "resourceType": "Immunization", "id": f"icare-{n:04d}", "status": "completed",
            "identifier": [{"system": "https://icare.dph.illinois.gov/immunization",
                            "value": f"IL{2026_000_000 + n * 7919}"}],
            "vaccineCode": cc(CVX, cvx, display),
            "patient": {"reference": f"Patient/{pid}", "display": charts[pid].name},
            "occurrenceDateTime": when.isoformat(),
            "primarySource": False,
            "reportOrigin": cc("http://terminology.hl7.org/CodeSystem/immunization-origin",
                               "record", "Written Record"),
            "performer": [{"actor": {"display": performer}}],
            "note": [{"text": "Imported from I-CARE (Illinois immunization registry)"}],
        })
    return out


if __name__ == "__main__":
    raise SystemExit(main())
