"""What the nightly run must not propose again: findings a clinician declined.

A clinician declines a finding in two places: in the app (dismissing a proposal, with a
coded reason) and in the EHR's CDS Hooks cards (overriding a card with a reason). Both are
kept in the web app's state database (`previsit.web.store`); a run that is given the same
database skips those findings for a configurable time (default 12 months) and the sheet
says "Declined on DATE" instead of proposing the work again.

Which declines suppress: every dismissal in the app (the clinician revoked our proposal on
purpose), and a CDS override only when its reason says the work is settled for now —
"patient declined" or "done elsewhere". "Not clinically appropriate" on a card is feedback
about the card, not about the patient's care, and does not silence the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

from previsit.intervals import Duration
from previsit.plan import Status, Visit, VisitPlan
from previsit.sheets.formatting import format_day

# Our own code system for why a proposal or card was declined (FHIR has no value set for
# "reason a proposed screening was declined" that fits all four).
DECLINE_REASON_SYSTEM = "https://previsit.dev/fhir/CodeSystem/decline-reason"


class DeclineReason(StrEnum):
    display: str

    def __new__(cls, value: str, display: str = "") -> DeclineReason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.display = display
        return member

    PATIENT_DECLINED = ("patient-declined", "Patient declined")
    DONE_ELSEWHERE = ("done-elsewhere", "Done elsewhere")
    NOT_APPROPRIATE = ("not-appropriate", "Not clinically appropriate")
    OTHER = ("other", "Other")


# The overrides that say the work is settled for this patient, for now.
SUPPRESSING = frozenset({DeclineReason.PATIENT_DECLINED, DeclineReason.DONE_ELSEWHERE})


@dataclass(frozen=True)
class Decline:
    """One finding a clinician declined for one patient."""

    rule_id: str
    day: date  # when, in the clinic's time zone
    reason: str  # in words ("Done elsewhere", or the clinician's own text)
    until: date  # the first day the finding may be proposed again


@dataclass(frozen=True)
class FeedbackView:
    """What suppression needs of a stored feedback record (previsit.web.store.FeedbackRecord
    has these fields; tests may pass their own)."""

    finding_key: str
    outcome: str  # accepted | overridden | dismissed
    reason_system: str | None
    reason_code: str | None
    reason_display: str | None
    outcome_at: float  # epoch seconds


def suppressing(record: FeedbackView) -> bool:
    if record.outcome == "dismissed":
        return True
    return (record.outcome == "overridden" and record.reason_system == DECLINE_REASON_SYSTEM
            and record.reason_code in {r.value for r in SUPPRESSING})


def declines(records: Iterable[FeedbackView], *, timezone: str, months: int,
             on: date) -> dict[str, Decline]:
    """The declines still in force on `on` (a visit day), newest per rule. A decline
    counts for a visit before it too (a past day planned again after the decline).

    A CDS card covers several findings: its `finding_key` lists their rule ids separated by
    spaces, and an override suppresses each of them."""
    tz = ZoneInfo(timezone)
    window = Duration(months, "mo")
    out: dict[str, Decline] = {}
    for record in records:
        if not suppressing(record):
            continue
        day = datetime.fromtimestamp(record.outcome_at, tz).date()
        until = window.after(day)
        if on >= until:
            continue
        reason = record.reason_display or _reason_words(record.reason_code) or "no reason given"
        for rule_id in record.finding_key.split():
            known = out.get(rule_id)
            if known is None or known.day < day:
                out[rule_id] = Decline(rule_id, day, reason, until)
    return out


def _reason_words(code: str | None) -> str | None:
    try:
        return DeclineReason(code).display if code else None
    except ValueError:
        return None


def decline_text(decline: Decline) -> str:
    return (f"Declined on {format_day(decline.day)}: {decline.reason}. Not proposed again "
            f"before {format_day(decline.until)}.")


def apply_declines(plan: VisitPlan, found: Mapping[str, Decline]) -> VisitPlan:
    """The plan with each declined, actionable finding set aside: no longer a task, nothing
    proposed for it, and listed with the decline ("Declined on …") among what is settled.

    Status `excluded` is the nearest the engine has: the quality measures count a
    patient's refusal as an exception, not a gap."""
    if not found:
        return plan
    findings = tuple(
        replace(f, status=Status.EXCLUDED, orders=(), flags=(),
                explanation=decline_text(found[f.rule_id]))
        if f.status.actionable and f.rule_id in found else f
        for f in plan.findings)
    return replace(plan, findings=findings)


# What a run asks for each visit: the declines in force for that patient on that day.
DeclineLookup = Callable[[Visit], Mapping[str, Decline]]


def store_declines(*, state_db: Path, keyring_file: Path, keyring_env: str | None,
                   env: Mapping[str, str], fhir_base: str, timezone: str,
                   months: int) -> DeclineLookup | None:
    """A lookup over the web app's state database, or None when there is none to read
    (the app was never run here): a nightly run without the app proposes as before.

    The database keys feedback by a keyed hash of (FHIR base, patient): the run must use
    the same FHIR base as the app's issuer and the same keyring."""
    from previsit.web.keyring import load_keyring
    from previsit.web.store import Store

    if not state_db.exists() or not (keyring_env or keyring_file.exists()):
        return None
    store = Store(state_db, load_keyring(file=keyring_file, env_name=keyring_env, env=env))

    def lookup(visit: Visit) -> Mapping[str, Decline]:
        if visit.day is None:
            return {}
        records = store.declines(issuer=fhir_base, patient_id=visit.patient_id, since=0.0)
        return declines((FeedbackView(r.finding_key, r.outcome,
                                      r.reason.system if r.reason else None,
                                      r.reason.code if r.reason else None,
                                      r.reason.display if r.reason else None, r.outcome_at)
                         for r in records), timezone=timezone, months=months, on=visit.day)

    return lookup
