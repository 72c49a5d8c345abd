"""One patient on one visit date: the record, indexed for the questions rules ask.

`EvaluationContext` is what a criterion's `evaluate` and the requirement logic in
`previsit.evaluate` receive. It holds no clock and does no I/O: the visit day and the
clinic's settings are passed in. `Truth` is a criterion's three-valued answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Generic, TypeVar

from previsit.codes import Concept, ValueSet, ValueSetRegistry
from previsit.intervals import Duration, age_on
from previsit.plan import EvidenceRef
from previsit.plausibility import DEFAULT_BOUNDS, Bounds, implausible
from previsit.record import Observation, PatientRecord

# Results that count: final, amended or corrected (not preliminary, registered, cancelled).
DONE_OBSERVATION = frozenset({"final", "amended", "corrected"})

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """What a clinic may tune without touching rules (config: [planning])."""

    due_soon: Duration = Duration(60, "d")
    renewal_horizon: Duration | None = None  # overrides the renewal rule's horizon
    season_start_month: int = 8  # influenza seasons start in August (CDC)
    # The last month a season's vaccine is offered (its lots expire June 30); from the month
    # after it until the next season starts no dose is proposed (ACIP: adults are not
    # vaccinated in July-August unless they cannot be reached later).
    season_last_month: int = 6
    # Plausible ranges of results by LOINC code: a value outside is "check this value".
    plausible: Mapping[str, Bounds] = field(default_factory=lambda: dict(DEFAULT_BOUNDS),
                                            hash=False)


@dataclass
class Truth:
    """A criterion's three-valued result (None: cannot tell), with what decided it."""

    value: bool | None
    reason: str = ""
    evidence: list[EvidenceRef] = field(default_factory=list)


def fmt(day: date | None) -> str:
    return day.isoformat() if day else "an unknown date"


class CodeIndex(Generic[T]):
    """Items by (system, code), so a value-set lookup is a set intersection instead of a
    scan of every result (a real record holds thousands; bench/ measures the difference).
    Lookups return items in their original order."""

    def __init__(self, items: Sequence[T], concept: Callable[[T], Concept]) -> None:
        self._items = items
        self._positions: dict[tuple[str, str], list[int]] = {}
        for position, item in enumerate(items):
            for coding in concept(item).codings:
                self._positions.setdefault(coding.key(), []).append(position)
        self._cache: dict[str, list[T]] = {}

    def matching(self, vs: ValueSet) -> list[T]:
        found = self._cache.get(vs.url)
        if found is None:
            keys = self._positions.keys()
            common = (keys & vs.codes) if len(keys) < len(vs.codes) else \
                [k for k in vs.codes if k in self._positions]
            positions = sorted({p for key in common for p in self._positions[key]})
            found = self._cache[vs.url] = [self._items[p] for p in positions]
        return found


class EvaluationContext:
    """One patient on one visit date. Built once per (record, visit day); every rule of
    the visit is evaluated against it."""

    def __init__(self, record: PatientRecord, valuesets: ValueSetRegistry, visit_day: date,
                 settings: Settings) -> None:
        self.record = record
        self.valuesets = valuesets
        self.day = visit_day
        self.settings = settings
        birth = record.patient.birth_date
        self.age = age_on(birth, visit_day) if birth else None
        self.observations = CodeIndex(record.observations, lambda o: o.code)
        self.procedures = CodeIndex(record.procedures, lambda p: p.code)
        self.conditions = CodeIndex(record.conditions, lambda c: c.code)
        self.immunizations = CodeIndex(record.immunizations, lambda i: i.vaccine)
        self.encounters = CodeIndex(record.encounters, lambda e: e.type)
        self.service_requests = CodeIndex(
            [r for r in record.requests if r.resource_type == "ServiceRequest"],
            lambda r: r.code)
        # Results no patient can have: never used, shown as "check this value" (by ref).
        self.implausible: dict[str, str] = {}
        for obs in record.observations:
            if obs.day <= visit_day and (why := implausible(obs, settings.plausible)):
                self.implausible[obs.ref] = why

    def vs(self, url: str) -> ValueSet:
        return self.valuesets.get(url)

    def medication_matches(self, url: str, names: Iterable[str], concept: Concept) -> bool:
        """Whether a drug is in the value set (ingredients and clinical drugs), or — as a
        fallback for drugs recorded by name only — its text names one of `names`."""
        if self.vs(url).matches(concept):
            return True
        words = concept.words()
        return any(name in words for name in names)

    def usable(self, obs: Observation, *, needs_value: bool = True) -> bool:
        """Whether a result can decide anything: final (amended, corrected), believable,
        and — unless `needs_value` is off — carrying a value (CMS122 counts an HbA1c
        without one as a gap, CMS130 a stool test without one as not done)."""
        return obs.status in DONE_OBSERVATION and obs.ref not in self.implausible \
            and (obs.has_value or not needs_value)

    def latest_observation(self, url: str, lookback: Duration | None, *,
                           needs_value: bool = False) -> Observation | None:
        """The latest usable result in the set within the look-back, on or before the
        visit."""
        vs = self.vs(url)
        since = lookback.before(self.day) if lookback else date.min
        best: Observation | None = None
        for obs in self.observations.matching(vs):
            if self.usable(obs, needs_value=needs_value) and since < obs.day <= self.day \
                    and (best is None or obs.day > best.day):
                best = obs
        return best
