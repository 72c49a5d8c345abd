"""Implausible results: values no patient can have, which a rule must never use.

A value outside these bounds is almost surely a unit, decimal, specimen or wrong-test error
(an HbA1c of 2.8 %, a potassium of 0.4 mmol/L). Such a result is shown on the sheet as
"check this value" and does not satisfy (or decide) a rule. The bounds are deliberately
wide — far outside critical limits — so that a real critical value is never called
impossible; they are a clinical rationale (case reports of extreme survived values,
analysers' reportable ranges: docs/research/clinical-facts.md section 6), not a published
standard, so a clinic can change them ([planning] implausible in the configuration).

A bound applies only in its unit (UCUM code as LOINC gives it): a result in another unit
is not judged, never called implausible. A value with a comparator ("< 0.01", "> 90") is a
bound the lab reported, not a measurement, and is never implausible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from previsit.codes import LOINC
from previsit.record import Observation


@dataclass(frozen=True)
class Bounds:
    """The plausible range of one test in one unit (inclusive); None: no bound that side."""

    unit: str  # UCUM code
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        low = f"{self.low:g}" if self.low is not None else ""
        high = f"{self.high:g}" if self.high is not None else ""
        if low and high:
            return f"{low}–{high} {self.unit}"
        return f"≥ {low} {self.unit}" if low else f"≤ {high} {self.unit}"


# LOINC code -> bounds. Sources and rationale per row: clinical-facts.md section 6.
DEFAULT_BOUNDS: dict[str, Bounds] = {
    # HbA1c (NGSP %): analysers report about 4-18 %
    "4548-4": Bounds("%", 3, 20), "17856-6": Bounds("%", 3, 20),
    "59261-8": Bounds("mmol/mol", 9, 195),  # HbA1c (IFCC)
    # potassium: survival outside is exceptional; > 9 is a haemolysed or EDTA sample
    "2823-3": Bounds("mmol/L", 1.5, 9), "6298-4": Bounds("mmol/L", 1.5, 9),
    "39789-3": Bounds("mmol/L", 1.5, 9),
    "2951-2": Bounds("mmol/L", 95, 190), "2947-0": Bounds("mmol/L", 95, 190),  # sodium
    "2160-0": Bounds("mg/dL", 0.1, 30), "14682-9": Bounds("umol/L", 9, 2650),  # creatinine
    # eGFR ("> 90" comes with a comparator and is never implausible)
    "98979-8": Bounds("mL/min/{1.73_m2}", 1, 200), "62238-1": Bounds("mL/min/{1.73_m2}", 1, 200),
    "33914-3": Bounds("mL/min/{1.73_m2}", 1, 200),
    "3016-3": Bounds("m[IU]/L", None, 1000),  # TSH: 0 and "< 0.01" are real
    "3024-7": Bounds("ng/dL", 0.1, 10),  # free T4
    "6301-6": Bounds("{INR}", 0.5, 20), "34714-6": Bounds("{INR}", 0.5, 20),  # INR
    "13457-7": Bounds("mg/dL", 0, 1000), "18262-6": Bounds("mg/dL", 0, 1000),  # LDL
    "2093-3": Bounds("mg/dL", 30, 1500),  # total cholesterol
    "1742-6": Bounds("U/L", None, 20000),  # ALT
    "2132-9": Bounds("pg/mL", 30, 30000),  # vitamin B12
    "14334-7": Bounds("mmol/L", None, 10),  # lithium
    "2345-7": Bounds("mg/dL", 10, 2500), "2339-0": Bounds("mg/dL", 10, 2500),  # glucose
    "14749-6": Bounds("mmol/L", 0.6, 140),
    # urine albumin/creatinine: 0 is real; beyond 30000 mg/g is mg/mmol <-> mg/g confusion
    "9318-7": Bounds("mg/g{creat}", None, 30000), "14959-1": Bounds("mg/g{creat}", None, 30000),
    "718-7": Bounds("g/dL", 2, 25),  # haemoglobin
}


# Unit spellings EHRs send for the UCUM codes above (the display unit where the interface
# sends no code): folded to the code before comparing.
_UNIT_SYNONYMS = {"miu/l": "m[iu]/l", "uiu/ml": "m[iu]/l", "µiu/ml": "m[iu]/l",
                  "inr": "{inr}", "ml/min/1.73m2": "ml/min/{1.73_m2}",
                  "mg/g": "mg/g{creat}", "µmol/l": "umol/l"}


def _normalised(unit: str | None) -> str | None:
    if not unit:
        return None
    key = unit.strip().lower()
    return _UNIT_SYNONYMS.get(key, key)


def implausible(obs: Observation, bounds: Mapping[str, Bounds]) -> str | None:
    """Why a result cannot be believed ("check this value: …"), or None."""
    quantity = obs.value_quantity
    if quantity is None or quantity.comparator:
        return None
    for coding in obs.code.codings:
        if coding.system != LOINC or coding.code not in bounds:
            continue
        bound = bounds[coding.code]
        units = {_normalised(quantity.code), _normalised(quantity.unit)} - {None}
        if _normalised(bound.unit) not in units:
            return None  # another unit: not judged
        if (bound.low is not None and quantity.value < bound.low) or \
                (bound.high is not None and quantity.value > bound.high):
            return (f"check this value: {obs.code.label()} {quantity} on "
                    f"{obs.day.isoformat()} is outside {bound.describe()}, the range a "
                    "patient can have; it was not used")
    return None
