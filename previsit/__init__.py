"""previsit: FHIR-based pre-visit planning for primary care.

The public surface: load a rule library, build a PatientRecord from FHIR JSON, evaluate
it for a visit, and run a whole clinic day against a Source.
"""

from previsit.errors import RuleError
from previsit.evaluate import Settings, evaluate
from previsit.plan import DayPlan, Finding, Kind, Role, Status, Visit, VisitPlan
from previsit.record import PatientRecord, build_record
from previsit.ruleset import RuleSet, load_ruleset

__all__ = [
    "DayPlan", "Finding", "Kind", "PatientRecord", "Role", "RuleError", "RuleSet", "Settings",
    "Status", "Visit", "VisitPlan", "build_record", "evaluate", "load_ruleset",
]
__version__ = "0.1.0"
