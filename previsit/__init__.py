"""previsit: FHIR-based pre-visit planning for primary care.

The public surface: load a rule library, build a PatientRecord from FHIR JSON, evaluate
it for a visit, and run a whole clinic day against a Source (a folder of Bundles, or a
FHIR server through HttpSource). docs/ARCHITECTURE.md maps the modules.
"""

from previsit.context import EvaluationContext, Settings
from previsit.errors import PrevisitError
from previsit.evaluate import evaluate
from previsit.plan import DayPlan, Finding, Kind, Role, Status, Visit, VisitPlan
from previsit.record import PatientRecord, build_record
from previsit.report import RunReport
from previsit.ruleset import RuleSet, load_ruleset
from previsit.run import RunOptions, RunResult, run_day
from previsit.sources import Source, VisitWindow
from previsit.sources.bundles import BundleSource
from previsit.sources.http import HttpSource

__all__ = [
    "BundleSource",
    "DayPlan",
    "EvaluationContext",
    "Finding",
    "HttpSource",
    "Kind",
    "PatientRecord",
    "PrevisitError",
    "Role",
    "RuleSet",
    "RunOptions",
    "RunReport",
    "RunResult",
    "Settings",
    "Source",
    "Status",
    "Visit",
    "VisitPlan",
    "VisitWindow",
    "build_record",
    "evaluate",
    "load_ruleset",
    "run_day",
]
__version__ = "0.1.0"
