"""Building blocks of the rule files' schema, shared by criteria and rules.

- `Strict`: the base of every schema model (unknown fields are errors: a typo names its
  file and field instead of silently switching a rule off);
- `Range`: inclusive numeric bounds (ages, values);
- `DurationField` / `LookbackField`: "10y", "27mo", "4w", "60d" (and "ever", "season");
- `ValueSetUrl`: a field that names a value set by canonical URL. `valueset_urls(model)`
  finds every such field in a model tree, so the loader can check that each one exists
  without a list of field names to keep in step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from previsit.errors import DurationError
from previsit.intervals import Duration


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    try:
        return Duration.parse(str(value))
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _optional_duration(value: Any) -> Duration | None:
    return None if value is None else parse_duration(value)


def _lookback(value: Any) -> Lookback:
    if value in ("ever", "season"):
        return value  # type: ignore[no-any-return]
    return parse_duration(value)


DurationField = Annotated[Duration, BeforeValidator(parse_duration)]
OptionalDuration = Annotated[Duration | None, BeforeValidator(_optional_duration)]
Lookback = Literal["ever", "season"] | Duration
LookbackField = Annotated[Lookback, BeforeValidator(_lookback)]


class _ValueSetMarker:
    """Metadata on a str field: it holds a value-set canonical URL."""


ValueSetUrl = Annotated[str, _ValueSetMarker()]
OptionalValueSetUrl = Annotated[str | None, _ValueSetMarker()]


class Range(Strict):
    """Inclusive numeric bounds (ages in completed years, values in the result's unit)."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self, unit: str = "") -> str:
        suffix = f" {unit}" if unit else ""
        if self.min is not None and self.max is not None:
            return f"{self.min:g}–{self.max:g}{suffix}"
        if self.min is not None:
            return f"≥ {self.min:g}{suffix}"
        return f"≤ {self.max:g}{suffix}"


def valueset_urls(value: Any) -> Iterator[str]:
    """Every value-set URL in a schema model and the models it holds, in field order."""
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            child = getattr(value, name)
            if any(isinstance(m, _ValueSetMarker) for m in info.metadata):
                if isinstance(child, str):
                    yield child
            else:
                yield from valueset_urls(child)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from valueset_urls(item)
