"""Which visits a sheet covers: by practitioner or location, in time order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from previsit.plan import DayPlan, Ref, Visit, VisitPlan
from previsit.references import bare_id


@dataclass(frozen=True)
class Group:
    """A practitioner or location a huddle can be selected by."""

    key: str  # what to pass as `practitioner=` / `location=`: the reference, e.g. "Location/2"
    label: str  # the display name, or the reference when there is none
    visits: int


def ref_matches(ref: Ref | None, wanted: str) -> bool:
    """A reference ("Location/2"), a bare id ("2") or the display name (any case)."""
    if ref is None:
        return False
    wanted = wanted.strip()
    if ref.reference and (ref.reference == wanted or bare_id(ref.reference) == bare_id(wanted)):
        return True
    display = ref.display
    return display is not None and display.strip().casefold() == wanted.casefold()


def _groups(plans: Iterable[VisitPlan], pick: Callable[[VisitPlan], Ref | None]) -> list[Group]:
    counts: dict[str, int] = {}
    labels: dict[str, str] = {}
    for plan in plans:
        ref = pick(plan)
        if ref is None or not (ref.reference or ref.display):
            continue
        key = ref.reference or ref.display or ""
        counts[key] = counts.get(key, 0) + 1
        labels.setdefault(key, ref.display or key)
    return sorted((Group(k, labels[k], n) for k, n in counts.items()),
                  key=lambda g: (g.label.casefold(), g.key))


def practitioners(day: DayPlan) -> list[Group]:
    """The practitioners with visits in the day, for choosing a huddle sheet."""
    return _groups(day.plans, lambda p: p.visit.practitioner)


def locations(day: DayPlan) -> list[Group]:
    """The locations with visits in the day, for choosing a huddle sheet."""
    return _groups(day.plans, lambda p: p.visit.location)


def select_plans(day: DayPlan, *, location: str | None = None,
                 practitioner: str | None = None) -> list[VisitPlan]:
    """The day's visits at `location` with `practitioner` (either may be None: all), in
    time order; visits with no recorded time come last."""
    chosen = [p for p in day.plans
              if (location is None or ref_matches(p.visit.location, location))
              and (practitioner is None or ref_matches(p.visit.practitioner, practitioner))]
    return sorted(chosen, key=lambda p: time_key(p.visit))


def time_key(visit: Visit) -> tuple[int, float, str]:
    """Sheets' order: by start time, visits with no recorded time last, then by id."""
    start = visit.start
    # Aware datetimes from different offsets compare correctly through timestamp().
    stamp = start.timestamp() if start and start.tzinfo else (
        start.replace(tzinfo=None).timestamp() if start else 0.0)
    return (0 if start else 1, stamp, visit.appointment_id)


def scope_labels(day: DayPlan, location: str | None, practitioner: str | None
                 ) -> tuple[str, str]:
    """What a sheet covers, as its header says it: the chosen location's and practitioner's
    display names ("all" when none was chosen)."""
    def label(groups: list[Group], wanted: str | None) -> str:
        if wanted is None:
            return "all"
        for g in groups:
            if ref_matches(Ref(g.key, g.label if g.label != g.key else None), wanted):
                return g.label
        return wanted

    return label(locations(day), location), label(practitioners(day), practitioner)
