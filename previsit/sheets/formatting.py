"""How values read on a sheet: dates, times, sexes, references, statuses, draft outcomes.

Fixed English names rather than strftime("%a"), which follows the process locale. Statuses
are shown as text and a symbol, never by colour alone: the sheets are printed in black and
white.
"""

from __future__ import annotations

from datetime import date, datetime

from previsit.plan import FindingFlag, Kind, ProposalOutcome, Ref, Status

STATUS_LABELS = {Status.OVERDUE: "Overdue", Status.DUE: "Due", Status.DUE_SOON: "Due soon",
                 Status.UNKNOWN: "Unknown", Status.SATISFIED: "Up to date",
                 Status.EXCLUDED: "Excluded", Status.NOT_APPLICABLE: "Not applicable"}
STATUS_MARKS = {Status.OVERDUE: "!!", Status.DUE: "!", Status.DUE_SOON: "›",
                Status.UNKNOWN: "?", Status.SATISFIED: "✓", Status.EXCLUDED: "–",
                Status.NOT_APPLICABLE: "·"}
KIND_ORDER = {kind: rank for rank, kind in enumerate(Kind)}
KIND_LABELS = {Kind.LAB: "Labs", Kind.SCREENING: "Screenings",
               Kind.IMMUNIZATION: "Immunizations", Kind.RENEWAL: "Renewals"}

# A proposal's outcome → what the sheet's "Draft order" column says, and a css token.
OUTCOME_WORDS: dict[ProposalOutcome, tuple[str, str]] = {
    ProposalOutcome.PROPOSED: ("Written", "written"),
    ProposalOutcome.ALREADY_OPEN: ("Already ordered", "open"),
    ProposalOutcome.ALREADY_WRITTEN: ("Written earlier", "earlier"),
    ProposalOutcome.EARLIER_VISIT: ("At the earlier visit today", "earlier"),
    ProposalOutcome.LATER_VISIT: ("At the later visit today", "later"),
    ProposalOutcome.LAB_ONLY: ("Not at a lab-only appointment", "lab-only"),
    ProposalOutcome.DECLINED: ("Declined earlier", "declined"),
    ProposalOutcome.DONE: ("Already done", "done"),
    ProposalOutcome.DRY_RUN: ("Not written (dry run)", "dry-run"),
}
NO_PROPOSAL = ("No draft", "none")

# Why a physician must look, in words, most pressing first (a finding can carry several
# flags; a one-line task names the first).
FLAG_WORDS = {FindingFlag.CONTROLLED_SUBSTANCE: "controlled substance",
              FindingFlag.POSITIVE_RESULT: "positive result: needs a follow-up test",
              FindingFlag.HIGH_RISK: "high-risk medicine",
              FindingFlag.ABNORMAL: "abnormal last value",
              FindingFlag.SHARED_DECISION: "shared decision"}

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
def format_day(day: date | None) -> str | None:
    if day is None:
        return None
    return f"{_WEEKDAYS[day.weekday()]} {_MONTHS[day.month - 1]} {day.day}, {day.year}"


def format_short_day(day: date | None) -> str | None:
    if day is None:
        return None
    return f"{_WEEKDAYS[day.weekday()]} {_MONTHS[day.month - 1]} {day.day}"


def format_time(start: datetime | None) -> str | None:
    """Clock time as stored (already the clinic's local time): '9:20 AM'."""
    if start is None:
        return None
    hour = start.hour % 12 or 12
    return f"{hour}:{start.minute:02d} {'AM' if start.hour < 12 else 'PM'}"


def sex_label(sex: str | None) -> str | None:
    if not sex or not sex.strip():
        return None
    # FHIR administrative gender "unknown" is a recorded value, but "Unknown" alone next
    # to an age reads like a missing name: say what is unknown.
    return "sex unknown" if sex.strip().lower() == "unknown" else sex.strip().capitalize()


def ref_label(ref: Ref | None) -> str | None:
    if ref is None:
        return None
    return ref.display or ref.reference
