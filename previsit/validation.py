"""Validating what previsit writes with fhir.resources, once per resource shape.

Every proposal, transaction Bundle and sheet document is checked against the FHIR R4B
model before it is written: a broken rule or order template must fail that patient
loudly, never put an invalid resource on a server. Model validation costs about 0.3 ms a
resource (more for a Bundle, which validates its entries again), and a night writes the
same few shapes thousands of times, so a shape seen valid is not validated again.

A resource's shape is its structure: resource type, the tree of keys, each value's JSON
type (a number's sign, which positiveInt and unsignedInt care about), lists with their
length collapsed to the set of their items' shapes, and, for a string, what FHIR's
primitive patterns look at (empty, whitespace at either end, whitespace at all, two
whitespace characters in a row: string and code). Values that come from the rule library
or are copied from the patient's chart (`BY_VALUE`: codes, categories, a renewal's drug and
dosage...) are part of the shape as they are, so a new code or a chart's odd dosage is
validated when first met. What is left out of the shape are values previsit makes itself
the same way every time (ids, references, dates from isoformat, notes), which is what makes
the cache hit.

The cache is bounded (oldest shapes forgotten first) and safe to share between threads;
each process of a pool has its own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable, Mapping
from typing import Any, Protocol

import orjson

# Keys whose values are part of the shape as they are (at any depth).
BY_VALUE = frozenset({
    # what a model dispatches on or checks against a value set
    "resourceType", "status", "intent", "docStatus", "method", "contentType", "language",
    # from the rule library and fixed tables
    "code", "category", "performerType", "type", "system",
    # copied from the chart into a renewal
    "medicationCodeableConcept", "medicationReference", "dosageInstruction", "quantity",
    "expectedSupplyDuration",
})
DEFAULT_SIZE = 1024  # a night writes a few hundred shapes

_WHITESPACE = re.compile(r"\s")
_TWO_WHITESPACE = re.compile(r"\s\s")


class Model(Protocol):
    """A fhir.resources model class (what is used of it)."""

    @classmethod
    def model_validate(cls, obj: Any) -> Any: ...


def _string(value: str) -> tuple[bool, ...]:
    if not value:
        return (False,)
    return (value[0].isspace(), value[-1].isspace(), _WHITESPACE.search(value) is not None,
            _TWO_WHITESPACE.search(value) is not None)


def shape(value: Any, by_value: frozenset[str] = BY_VALUE) -> Hashable:
    """The shape of a JSON value (see the module docstring): equal shapes validate alike."""
    if isinstance(value, dict):
        return tuple(sorted(
            (key, ("=", orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
             if key in by_value else shape(item, by_value))
            for key, item in value.items()))
    if isinstance(value, list):
        return ("[", frozenset(shape(item, by_value) for item in value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return (type(value).__name__, (value > 0) - (value < 0))
    return type(value).__name__


class ShapeCache:
    """Validates a resource with its model unless a resource of the same shape passed."""

    def __init__(self, size: int = DEFAULT_SIZE, by_value: frozenset[str] = BY_VALUE) -> None:
        self.size = size
        self.by_value = by_value
        self._valid: dict[tuple[str, Hashable], None] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def validate(self, model: Model, resource: Mapping[str, Any]) -> bool:
        """Raise what `model.model_validate` raises when the resource is invalid; True when
        the model was run, False when its shape was already seen valid."""
        try:
            key = (getattr(model, "__name__", repr(model)), shape(resource, self.by_value))
        except (TypeError, orjson.JSONEncodeError):
            # Not plain JSON (a value orjson cannot write, a non-string key): no shape.
            model.model_validate(resource)
            return True
        with self._lock:
            if key in self._valid:
                return False
        model.model_validate(resource)
        with self._lock:
            if len(self._valid) >= self.size:
                del self._valid[next(iter(self._valid))]
            self._valid[key] = None
        return True

    def clear(self) -> None:
        with self._lock:
            self._valid.clear()


# The one cache outputs are validated through (per process).
SHAPES = ShapeCache()
