"""FHIR references: the id a reference points at, read one way everywhere."""

from __future__ import annotations


def bare_id(reference: str) -> str:
    """The last path segment of a reference or id ("Location/2" and "2" both give "2"),
    for matching configured filters against references."""
    return reference.rsplit("/", 1)[-1]
