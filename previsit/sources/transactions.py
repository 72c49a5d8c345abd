"""A transaction in the parts a server accepts: sizes, references across parts, conflicts.

Servers cap transactions. Medplum refuses one that holds a conditional create with more
than 8 entries (400 "Transaction requires strict isolation but has too many entries") or
more than 50 updates; others state a maximum ("exceeds the maximum of 500"), or answer
413. The HTTP source writes a Bundle as consecutive transactions of at most
`source.max_transaction_entries` entries, and a refusal for size (which wrote nothing)
gives the smaller size to use from then on (`smaller_size`).

Entries refer to each other by their `urn:uuid:` fullUrls; within one transaction the
server resolves them. Once a part is written, the parts after it refer to what its
entries became on the server (`rewrite_references`); a reference to an entry of a *later*
part cannot be resolved, so the entries must be in an order where references point back
(`previsit upload` orders them so).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from previsit.operation_outcome import outcome_issues

# Words of a refusal for size (Medplum, HAPI/Smile, Azure, generic gateways).
_TOO_LARGE = re.compile(
    r"too many entries|more update operations than allowed|too large|too big|"
    r"exceeds? (?:the )?(?:maximum|max|limit)|maximum (?:number of )?entries|"
    r"(?:maximum|limit) of \d+ entries", re.IGNORECASE)
# A number the refusal states as the most it accepts: "the maximum of 10", "limit is 500".
_STATED = re.compile(r"(?:maximum|max|limit|at most)\D{0,16}?(\d{1,6})", re.IGNORECASE)
# Medplum retrying its own serialisation failure under two concurrent writers of the same
# conditional update; the same write succeeds when sent again.
_RESOLVED_ID = "did not match resolved id"


def _words(body: Any) -> str:
    return " ".join(issue.text or "" for issue in outcome_issues(body)).lower()


def smaller_size(status: int, body: Any, size: int) -> int | None:
    """The entries per transaction to try after the server refused `size` entries for being
    too many (the number it states, else half); None when the refusal is about something
    else, or there is nothing smaller to try."""
    if size <= 1:
        return None
    if status == 413:
        return size // 2
    if status not in (400, 422):
        return None
    words = _words(body)
    if not _TOO_LARGE.search(words):
        return None
    stated = _STATED.search(words)
    if stated and 0 < int(stated.group(1)) < size:
        return int(stated.group(1))
    return size // 2


def is_transient_conflict(status: int, body: Any) -> bool:
    """A write that collided with another writer and may succeed when sent again: 409, or
    Medplum's 400 "Resource ID did not match resolved ID". (HAPI's 412 for a conditional
    create matching several resources is not transient: it stays until data changes.)"""
    return status == 409 or (status == 400 and _RESOLVED_ID in _words(body))


def references(value: Any) -> Iterator[str]:
    """Every `reference` string anywhere in a resource (contained resources included)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def rewrite_references(value: Any, targets: Mapping[str, str]) -> Any:
    """A copy with each `reference` found in `targets` replaced (other strings untouched)."""
    if isinstance(value, Mapping):
        return {key: (targets.get(item, item) if key == "reference" and isinstance(item, str)
                      else rewrite_references(item, targets)) for key, item in value.items()}
    if isinstance(value, list):
        return [rewrite_references(item, targets) for item in value]
    return value


def forward_reference(entries: Sequence[Mapping[str, Any]], part: Sequence[int],
                      later: Sequence[int]) -> tuple[int, int] | None:
    """(entry, the later entry it refers to) when an entry of `part` refers to the fullUrl
    of an entry not written until a later part; None when the part can be written."""
    later_urls = {entries[i].get("fullUrl"): i for i in later if entries[i].get("fullUrl")}
    if not later_urls:
        return None
    for index in part:
        for reference in references(entries[index].get("resource")):
            if reference in later_urls:
                return index, later_urls[reference]
    return None


def transaction_of(entries: Sequence[Mapping[str, Any]], part: Sequence[int],
                   written: Mapping[str, str]) -> dict[str, Any]:
    """The transaction Bundle of one part, references to written entries rewritten."""
    out = []
    for index in part:
        entry = dict(entries[index])
        if written and "resource" in entry:
            entry["resource"] = rewrite_references(entry["resource"], written)
        out.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}
