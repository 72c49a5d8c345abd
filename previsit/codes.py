"""Codes and value sets: the one place where a coded FHIR element is matched against a set.

Rules name value sets by canonical URL. A `ValueSetRegistry` holds the sets a rule folder
ships (or a clinic drops in: fresh VSAC expansions replace ours by URL) and answers
"is any coding of this concept in that set?".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from previsit.errors import ValueSetError
from previsit.jsonio import JsonError, loads

# Systems as EHRs actually send them: the canonical URI, its OID form, and a few
# legacy spellings seen in exports. Everything is folded to the canonical URI.
SYSTEM_ALIASES: dict[str, str] = {
    "urn:oid:2.16.840.1.113883.6.1": "http://loinc.org",
    "http://loinc.org/": "http://loinc.org",
    "urn:oid:2.16.840.1.113883.6.96": "http://snomed.info/sct",
    "http://snomed.info/sct/": "http://snomed.info/sct",
    "urn:oid:2.16.840.1.113883.6.88": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "urn:oid:2.16.840.1.113883.12.292": "http://hl7.org/fhir/sid/cvx",
    "urn:oid:2.16.840.1.113883.6.90": "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-10": "http://hl7.org/fhir/sid/icd-10-cm",
    "urn:oid:2.16.840.1.113883.6.12": "http://www.ama-assn.org/go/cpt",
    # HCPCS: VSAC (and so every CMS measure value set) spells it with the NLM URI
    "urn:oid:2.16.840.1.113883.6.285": "http://www.nlm.nih.gov/research/umls/hcpcs",
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets":
        "http://www.nlm.nih.gov/research/umls/hcpcs",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets":
        "http://www.nlm.nih.gov/research/umls/hcpcs",
    "urn:oid:2.16.840.1.113883.6.4": "http://www.cms.gov/Medicare/Coding/ICD10",
}

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def canonical_system(system: str | None) -> str:
    if not system:
        return ""
    return SYSTEM_ALIASES.get(system, system)


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str | None = None

    def key(self) -> tuple[str, str]:
        return (self.system, self.code)


@dataclass(frozen=True, slots=True)
class Concept:
    """A CodeableConcept: its codings and its free text."""

    codings: tuple[Coding, ...] = ()
    text: str | None = None

    @classmethod
    def from_json(cls, value: Any) -> Concept:
        """The concept of a CodeableConcept's JSON (nothing usable: no codings, no text).

        Charts repeat the same few hundred concepts thousands of times (every blood
        pressure, every encounter type), so a concept of plain strings is made once and
        shared (concepts are immutable): a record costs less to build and to hold.
        """
        if not isinstance(value, dict):
            return _NO_CONCEPT
        key = _concept_key(value)
        if key is None:
            return cls._parse(value)
        concept = _CONCEPTS.get(key)
        if concept is None:
            concept = cls._parse(value)
            if len(_CONCEPTS) >= _CONCEPTS_MAX:
                _CONCEPTS.clear()
            _CONCEPTS[key] = concept
        return concept

    @classmethod
    def _parse(cls, value: dict[str, Any]) -> Concept:
        codings = []
        for raw in value.get("coding") or ():
            if isinstance(raw, dict) and isinstance(raw.get("code"), str):
                display = raw.get("display")
                codings.append(Coding(canonical_system(raw.get("system")), raw["code"],
                                      display if isinstance(display, str) else None))
        text = value.get("text")
        return cls(tuple(codings), text if isinstance(text, str) else None)

    def label(self) -> str:
        """What a person would call it: the text, else the first display, else a code."""
        if self.text:
            return self.text
        for coding in self.codings:
            if coding.display:
                return coding.display
        return self.codings[0].code if self.codings else "(uncoded)"

    def words(self) -> str:
        """Lower-cased text and displays, for the ingredient-name fallback."""
        parts = [self.text or ""] + [c.display or "" for c in self.codings]
        return " ".join(parts).lower()


_NO_CONCEPT = Concept()
# Concepts made from JSON, by _concept_key; emptied when full (a bound on memory, not an
# eviction policy: the same concepts come back at once).
_CONCEPTS: dict[tuple[str | None, ...], Concept] = {}
_CONCEPTS_MAX = 16384  # a few MB at most; a chart repeats a few hundred


def _concept_key(value: dict[str, Any]) -> tuple[str | None, ...] | None:
    """(text, system, code, display, system, code, display...) of a CodeableConcept whose
    text and codings' fields are each a string or absent, which is all that makes its
    Concept; None for anything else (made every time, never shared)."""
    text = value.get("text")
    if text is not None and type(text) is not str:
        return None
    raws = value.get("coding")
    if raws is None:
        return (text,)
    if type(raws) is not list:
        return None
    key: list[str | None] = [text]
    for raw in raws:
        if type(raw) is not dict:
            return None
        system, code, display = raw.get("system"), raw.get("code"), raw.get("display")
        if (system is not None and type(system) is not str) or \
                (code is not None and type(code) is not str) or \
                (display is not None and type(display) is not str):
            return None
        key += (system, code, display)
    return tuple(key)


@dataclass(frozen=True)
class Group:
    """An entry of an expansion that holds others: "Schedule II" (v2-0477 II), or a
    code-less abstract group such as "exempted products"."""

    system: str
    code: str  # "" for a group without a code
    display: str


@dataclass(frozen=True)
class ValueSet:
    url: str
    title: str
    codes: frozenset[tuple[str, str]]
    displays: dict[tuple[str, str], str] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""
    # For a hierarchical expansion: each code's enclosing groups, nearest first. This is how
    # a set says *why* a drug is in it (its DEA schedule, its high-risk category) in plain
    # FHIR R4 (expansion.contains.contains), with no extension.
    groups: dict[tuple[str, str], tuple[Group, ...]] = field(
        default_factory=dict, compare=False, hash=False)

    def __contains__(self, coding: object) -> bool:
        return isinstance(coding, Coding) and coding.key() in self.codes

    def matches(self, concept: Concept) -> bool:
        return any(c.key() in self.codes for c in concept.codings)

    def groups_of(self, concept: Concept) -> tuple[Group, ...]:
        """The groups enclosing the first of the concept's codings that is in the set,
        nearest first; () when none is, or the set is flat."""
        for coding in concept.codings:
            if coding.key() in self.codes:
                return self.groups.get(coding.key(), ())
        return ()


def _walk_contains(items: Iterable[Any], parents: tuple[Group, ...] = ()
                   ) -> Iterator[tuple[dict[str, Any], tuple[Group, ...]]]:
    """Every entry of an expansion with its enclosing groups, nearest first."""
    for item in items:
        if isinstance(item, dict):
            yield item, parents
            children = item.get("contains") or ()
            if children:
                system, code = item.get("system"), item.get("code")
                display = item.get("display")
                group = Group(canonical_system(system if isinstance(system, str) else None),
                              code if isinstance(code, str) else "",
                              display if isinstance(display, str) else "")
                yield from _walk_contains(children, (group, *parents))


def valueset_from_json(data: Any, source: str = "") -> ValueSet:
    """Read a FHIR ValueSet: its expansion if it has one, else its compose.include concepts.

    An intensional compose (filters, or includes of other value sets) cannot be evaluated
    without a terminology server, so it is refused rather than silently matching nothing.
    """
    if not isinstance(data, dict) or data.get("resourceType") != "ValueSet":
        raise ValueSetError(f"{source}: not a FHIR ValueSet resource")
    url = data.get("url")
    if not isinstance(url, str) or not url:
        raise ValueSetError(f"{source}: ValueSet has no canonical url")
    codes: set[tuple[str, str]] = set()
    displays: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, str], tuple[Group, ...]] = {}

    def take(system: Any, code: Any, display: Any, parents: tuple[Group, ...] = ()) -> None:
        if isinstance(code, str) and code:
            key = (canonical_system(system if isinstance(system, str) else None), code)
            codes.add(key)
            if isinstance(display, str):
                displays[key] = display
            if parents:
                groups.setdefault(key, parents)

    expansion = data.get("expansion")
    if isinstance(expansion, dict) and isinstance(expansion.get("contains"), list) \
            and expansion["contains"]:
        for item, parents in _walk_contains(expansion["contains"]):
            take(item.get("system"), item.get("code"), item.get("display"), parents)
    else:
        compose = data.get("compose") or {}
        includes = compose.get("include", []) if isinstance(compose, dict) else None
        if not isinstance(includes, list) or not all(isinstance(i, dict) for i in includes):
            raise ValueSetError(f"{source}: {url} has neither an expansion.contains list nor "
                                "a compose.include list of objects")
        for include in includes:
            if include.get("filter") or include.get("valueSet"):
                raise ValueSetError(
                    f"{source}: {url} uses filters or nested value sets in compose.include; "
                    "provide an expansion (for example the VSAC $expand output) instead"
                )
            for concept in include.get("concept") or ():
                if not isinstance(concept, dict):
                    raise ValueSetError(f"{source}: {url} has a compose concept that is not "
                                        "an object")
                take(include.get("system"), concept.get("code"), concept.get("display"))
    if not codes:
        raise ValueSetError(f"{source}: {url} has no codes (empty expansion and compose)")
    title = data.get("title") or data.get("name") or url
    return ValueSet(url=url, title=str(title), codes=frozenset(codes), displays=displays,
                    source=source, groups=groups)


class ValueSetRegistry:
    """Value sets by canonical URL. Later folders override earlier ones with the same URL."""

    def __init__(self, valuesets: Iterable[ValueSet] = ()) -> None:
        self._by_url: dict[str, ValueSet] = {}
        for vs in valuesets:
            self.add(vs)

    def add(self, valueset: ValueSet) -> None:
        self._by_url[valueset.url] = valueset

    def load_folder(self, folder: Path) -> list[ValueSet]:
        loaded = []
        for path in sorted(folder.glob("*.json")):
            try:
                data = loads(path.read_bytes())  # jsonio: a 5,000-digit number is a JsonError
            except (OSError, JsonError) as exc:
                raise ValueSetError(f"{path}: cannot read JSON: {exc}") from exc
            vs = valueset_from_json(data, source=str(path))
            self.add(vs)
            loaded.append(vs)
        return loaded

    def get(self, url: str) -> ValueSet:
        try:
            return self._by_url[url]
        except KeyError:
            raise ValueSetError(f"no value set with url {url}") from None

    def __contains__(self, url: object) -> bool:
        return url in self._by_url

    def __iter__(self) -> Iterator[ValueSet]:
        return iter(self._by_url.values())

    def __len__(self) -> int:
        return len(self._by_url)
