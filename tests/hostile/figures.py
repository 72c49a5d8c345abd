"""What the property tests tried and what survived, for the soak run's summary.

In the default profile a property test stops at the first violation (that is the test
failing). In soak mode (HYPOTHESIS_PROFILE=long, see soak.py) it records every case here and
goes on, so the summary can say: N clinic days tried, M survived every property, and per class
of bad input how many days carried it and how many of those survived.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import settings


def soak_mode() -> bool:
    return os.environ.get("HYPOTHESIS_PROFILE", "") in ("long", "hostile-long")


def property_settings() -> settings:
    """The profile registered in conftest: hostile-ci by default, hostile-long when soaking."""
    return settings.get_profile("hostile-long" if soak_mode() else "hostile-ci")


@dataclass
class _Tally:
    cases: int = 0
    survived: int = 0
    seconds: float = 0.0
    classes_tried: Counter[str] = field(default_factory=Counter)
    classes_survived: Counter[str] = field(default_factory=Counter)
    exit_codes: Counter[int] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # violation kind -> first message


class Figures:
    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    @property
    def cases(self) -> int:
        return sum(t.cases for t in self._tallies.values())

    def record(self, test: str, classes: Iterable[str], violations: list[str],
               exit_code: int, seconds: float) -> None:
        tally = self._tallies.setdefault(test, _Tally())
        classes = sorted(set(classes)) or ["(no bad input)"]
        tally.cases += 1
        tally.seconds += seconds
        tally.exit_codes[exit_code] += 1
        tally.classes_tried.update(classes)
        if not violations:
            tally.survived += 1
            tally.classes_survived.update(classes)
        for violation in violations:
            kind = violation.split(":", 1)[0]
            tally.violations[kind] += 1
            tally.examples.setdefault(kind, violation[:300])

    def violations(self, test: str) -> list[str]:
        tally = self._tallies.get(test)
        return [f"{kind} (x{count}): {tally.examples[kind]}"
                for kind, count in tally.violations.most_common()] if tally else []

    def summary(self) -> list[str]:
        lines = []
        for test, t in sorted(self._tallies.items()):
            lines.append(f"{test}: {t.cases} clinic days tried, {t.survived} survived every "
                         f"property ({t.seconds / max(t.cases, 1):.2f} s per day); exit codes "
                         + ", ".join(f"{code}: {n}" for code, n in sorted(t.exit_codes.items())))
            lines.append("  class of bad input            days   survived")
            for name, tried in sorted(t.classes_tried.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {name:<28} {tried:>5}   {t.classes_survived[name]:>5}")
            for kind, count in t.violations.most_common():
                lines.append(f"  violated: {kind} x{count} — e.g. {t.examples[kind][:160]!r}")
        return lines


FIGURES = Figures()
