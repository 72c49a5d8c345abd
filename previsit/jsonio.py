"""JSON in and out: the one place previsit parses and writes JSON.

Every read of FHIR JSON — a server's answer, a bundle file, a plan.json — goes through
`loads` or `object_or_none`, so that limits on what a hostile or broken source can make
previsit do (nesting depth, size, number parsing) are enforced in one place. Outputs are
written by `dumps` with sorted keys, so the same run gives byte-identical files.
"""

from __future__ import annotations

import json
from typing import Any


class JsonError(ValueError):
    """Text that is not JSON (or not the JSON expected)."""


def loads(data: bytes | str) -> Any:
    """Parse JSON text; JsonError when it cannot be parsed."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonError(f"not valid JSON: {type(exc).__name__}") from None


def object_or_none(data: bytes | str) -> dict[str, Any] | None:
    """The JSON object in `data`, or None when it is not JSON or not an object."""
    try:
        body = loads(data)
    except JsonError:
        return None
    return body if isinstance(body, dict) else None


def dumps(data: Any) -> str:
    """An output file's text: indented, keys sorted, UTF-8 as is, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
