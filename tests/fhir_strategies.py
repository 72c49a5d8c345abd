"""Hypothesis strategies for FHIR R4 JSON as charts and exports really contain it.

Three qualities of each resource (Patient, Observation, MedicationRequest, Condition,
Appointment), chosen with `quality=`:

- "valid": what a careful EHR sends (FHIR ids, real dates, plausible values, printable text);
- "edge": legal-looking values at the boundaries (0001-01-01 and 9999-12-31, UTC offsets of
  +14:00 and -12:00, 1e308, 10**400, 10**18, lone surrogates, bidi overrides, terminal
  escapes, CR LF, 100,000-character strings, 100,000-deep nesting);
- "malformed": wrong types, missing required fields, nulls, NaN, numbers with 5,000 digits.

Every edge or malformed resource is `Labelled`: the resource and the classes of bad input
it carries ("huge-number", "lone-surrogate", "deep-nesting", …), so a property test can say
which classes of input a run survived.

`clinic_days()` builds a whole small day as a bundle folder: a few pristine patients (valid
charts, one booked appointment each, which must always be planned), degraded patients (a
valid appointment, a chart with bad records: their visit may fail, alone), bad appointments
(hostile patient references, boundary starts, hostile ids) and, for folders, broken files
(deep nesting, truncated JSON, invalid UTF-8, a BOM, duplicate ids, not a resource). It
records the truth: which patient each appointment is for, or None when it must not be
planned at all.

Values that Python's json cannot or will not write (100,000-deep arrays, 5,000-digit
numbers) are `hostile_server.RawJSON` pieces; `hostile_server.dumps` writes them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostile_server import RawJSON, deep_json, dumps
from hypothesis import strategies as st

DAY = "2026-12-01"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"

Quality = str  # "valid" | "edge" | "malformed"


@dataclass(frozen=True)
class Labelled:
    """A generated resource and the classes of bad input it carries (empty when valid)."""

    resource: dict[str, Any]
    labels: frozenset[str] = frozenset()


# --- scalar values -----------------------------------------------------------------------------

ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."


def fhir_ids() -> st.SearchStrategy[str]:
    """Valid FHIR ids: [A-Za-z0-9-.]{1,64}."""
    return st.text(ID_CHARS, min_size=1, max_size=64)


HOSTILE_IDS: dict[str, str] = {
    "long-id": "a" * 300,
    "slash-id": "a/b",
    "underscore-id": "a_b",
    "colon-id": "a:b",
    "dot-dot-id": "..",
    "space-id": "a b",
    "unicode-id": "ид-\u202e1",
}

TERMINAL_ESCAPES = ("\x1b[5;41mblink\x1b[25;49m", "\x1b[2J",
                    "\x1b]8;;https://evil.example/\x07link\x1b]8;;\x07", "\x1b]0;title\x07",
                    "line\roverwritten", "a\r\nFORGED: ok", "\x9b2J", "bell\x07",
                    "nul\x00byte")
BIDI_TEXTS = ("\u202eevil\u202c", "12\u202e-31\u202c", "\u2067rtl\u2069", "\u200fmark")


def printable_texts(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.characters(categories=("L", "N", "Zs"), max_codepoint=0x2FFF),
                   min_size=1, max_size=max_size)


def lone_surrogates() -> st.SearchStrategy[str]:
    return st.builds(lambda a, s, b: a + s + b, printable_texts(8),
                     st.characters(categories=["Cs"]), printable_texts(8))


def edge_texts(long_sizes: tuple[int, ...] = (300, 10_000, 100_000)
               ) -> st.SearchStrategy[tuple[str, str]]:
    """(label, text): strings that are legal JSON but hostile to whoever shows them."""
    return st.one_of(
        lone_surrogates().map(lambda t: ("lone-surrogate", t)),
        st.sampled_from(BIDI_TEXTS).map(lambda t: ("bidi", t)),
        st.sampled_from(TERMINAL_ESCAPES).map(lambda t: ("terminal-escape", t)),
        st.sampled_from(long_sizes).map(lambda n: ("long-string", "x" * n)),
        st.just(("empty-string", "")),
        st.text(st.characters(categories=("Mn", "So", "Co")), min_size=1, max_size=20)
        .map(lambda t: ("odd-unicode", t)),
    )


EDGE_NUMBERS: dict[str, Any] = {
    "huge-float": 1e308,
    "negative-huge-float": -1e308,
    "tiny-float": 5e-324,
    "negative-zero": -0.0,
    "zero": 0,
    "huge-int": 10**18,
    "enormous-int": 10**400,
    "negative-int": -1,
}
MALFORMED_NUMBERS: dict[str, Any] = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "5000-digit-number": RawJSON("9" * 5000),
    "boolean-as-number": True,
    "string-as-number": "12",
}


def edge_numbers() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(sorted(EDGE_NUMBERS.items()))


def malformed_numbers() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(sorted(MALFORMED_NUMBERS.items(), key=lambda kv: kv[0]))


def valid_dates(start: int = 1930, end: int = 2026) -> st.SearchStrategy[str]:
    return st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}",
                     st.integers(start, end), st.integers(1, 12), st.integers(1, 28))


EDGE_DATES = ("0001-01-01", "9999-12-31", "2024-02-29", "1975", "1975-06", DAY,
              "2026-12-02", "1900-01-01")
MALFORMED_DATES: tuple[Any, ...] = ("2023-02-30", "20231301", "", "not a date", 20230101,
                                    "2026-12-01T25:00:00", "２０２６-１２-０１", ["2026-12-01"])
EDGE_DATETIMES = ("0001-01-01T00:00:00+14:00", "0001-01-01T00:00+14:00",
                  "9999-12-31T23:59:59-12:00", f"{DAY}T00:00:00+14:00",
                  f"{DAY}T23:59:59-12:00", f"{DAY}T09:00:00", f"{DAY}T09:00:00Z",
                  f"{DAY}T09:00:00.123456789-06:00")
MALFORMED_DATETIMES: tuple[Any, ...] = (f"{DAY}T09:00:00+25:00", "T09:00", f"{DAY}T9:0",
                                        1764601200, None, {"start": DAY})


def wrong_types() -> st.SearchStrategy[Any]:
    """A JSON value of some type, for a field that wants another."""
    return st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3),
                     st.lists(st.integers(0, 3), max_size=2),
                     st.dictionaries(st.sampled_from(["a", "value"]), st.integers(0, 2),
                                     max_size=1))


def deep_nestings(depths: tuple[int, ...] = (1_000, 100_000)) -> st.SearchStrategy[RawJSON]:
    return st.sampled_from(depths).map(lambda n: RawJSON(deep_json(n)))


# --- mutations ---------------------------------------------------------------------------------
# An edge or malformed resource is a valid one with one or two fields replaced. A mutation is
# (path, strategy of (label, new value)); the value _DROP removes the field.

_DROP = object()
FieldPath = tuple[str | int, ...]
Mutation = tuple[FieldPath, st.SearchStrategy[tuple[str, Any]]]


def tagged(label: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, Any]]:
    return values.map(lambda v: (label, v))


def _set(resource: dict[str, Any], path: FieldPath, value: Any) -> dict[str, Any]:
    """A copy of `resource` with `path` set to `value` (or removed), creating objects."""
    out: dict[str, Any] = _copy(resource)
    node: Any = out
    for key, following in itertools.pairwise(path):
        if isinstance(key, int):
            while len(node) <= key:
                node.append({} if isinstance(following, str) else [])
            if not isinstance(node[key], (dict, list)):
                node[key] = {} if isinstance(following, str) else []
            node = node[key]
        else:
            if not isinstance(node.get(key), (dict, list)) or \
                    isinstance(node.get(key), list) != isinstance(following, int):
                node[key] = [] if isinstance(following, int) else {}
            node = node[key]
    last = path[-1]
    if value is _DROP:
        if isinstance(node, dict):
            node.pop(last, None)
    elif isinstance(last, int):
        while len(node) <= last:
            node.append(None)
        node[last] = value
    else:
        node[last] = value
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _common_mutations(quality: Quality, text_paths: tuple[FieldPath, ...]) -> list[Mutation]:
    """Hostile text in display fields and deep nesting (edge); wrong types (malformed)."""
    if quality == "edge":
        return [*((path, edge_texts()) for path in text_paths),
                (("extension",), tagged("deep-nesting", deep_nestings()))]
    return [(("id",), tagged("wrong-type", st.sampled_from([12, None, ["x"]]))),
            (("meta",), tagged("null", st.none())),
            (("extension",), tagged("wrong-type", wrong_types()))]


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any], mutations: list[Mutation]) -> Labelled:
    chosen = draw(st.lists(st.sampled_from(mutations), min_size=1, max_size=2,
                           unique_by=lambda m: m[0]))
    resource, labels = base, set()
    for path, values in chosen:
        label, value = draw(values)
        resource = _set(resource, path, value)
        labels.add(label)
    return Labelled(resource, frozenset(labels))


def _numbers(quality: Quality) -> st.SearchStrategy[tuple[str, Any]]:
    return edge_numbers() if quality == "edge" else malformed_numbers()


def _dates(quality: Quality) -> st.SearchStrategy[tuple[str, Any]]:
    if quality == "edge":
        return tagged("boundary-date", st.sampled_from(EDGE_DATES))
    return tagged("malformed-date", st.sampled_from(MALFORMED_DATES))


def _datetimes(quality: Quality) -> st.SearchStrategy[tuple[str, Any]]:
    if quality == "edge":
        return tagged("boundary-datetime", st.sampled_from(EDGE_DATETIMES))
    return tagged("malformed-datetime", st.sampled_from(MALFORMED_DATETIMES))


# --- resources ---------------------------------------------------------------------------------


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


@st.composite
def valid_patients(draw: st.DrawFn, pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid,
            "name": [{"use": "official", "family": draw(printable_texts(20)),
                      "given": [draw(printable_texts(15))]}],
            "gender": draw(st.sampled_from(["female", "male", "other", "unknown"])),
            "birthDate": draw(valid_dates(1930, 2008)),
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:mrn",
                            "value": f"MRN-{pid}"}]}


def patients(pid: str, quality: Quality = "valid") -> st.SearchStrategy[Labelled]:
    if quality == "valid":
        return valid_patients(pid).map(Labelled)
    if quality == "edge":
        mutations: list[Mutation] = [
            (("name", 0, "family"), edge_texts()),
            (("name", 0, "text"), edge_texts()),
            (("birthDate",), _dates("edge")),
            (("birthDate",), tagged("future-birth-date",
                                    st.sampled_from(["2030-06-01", "9999-12-31"]))),
            (("identifier", 0, "value"), edge_texts()),
            *_common_mutations("edge", ()),
        ]
    else:
        mutations = [
            (("name",), tagged("wrong-type", wrong_types())),
            (("name", 0, "given"), tagged("wrong-type", wrong_types())),
            (("birthDate",), _dates("malformed")),
            (("gender",), tagged("wrong-type", wrong_types())),
            (("birthDate",), tagged("missing-field", st.just(_DROP))),
            (("identifier",), tagged("wrong-type", wrong_types())),
            (("name", 0), tagged("null", st.none())),
            (("deceasedBoolean",), tagged("wrong-type", st.sampled_from(["yes", 1, None]))),
        ]
    return valid_patients(pid).flatmap(lambda base: _mutated(base, mutations))


@st.composite
def valid_observations(draw: st.DrawFn, pid: str, oid: str) -> dict[str, Any]:
    code, display, unit = draw(st.sampled_from([
        ("4548-4", "Hemoglobin A1c", "%"), ("2823-3", "Potassium", "mmol/L"),
        ("2160-0", "Creatinine", "mg/dL"), ("3016-3", "TSH", "m[IU]/L"),
        ("29771-3", "FIT", None)]))
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": _coding(LOINC, code, display), "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": draw(valid_dates(2018, 2026))}
    if unit is not None:
        resource["valueQuantity"] = {"value": draw(st.floats(0.1, 500, allow_nan=False)),
                                     "unit": unit, "system": UCUM, "code": unit}
    return resource


def observations(pid: str, oid: str, quality: Quality = "valid") -> st.SearchStrategy[Labelled]:
    if quality == "valid":
        return valid_observations(pid, oid).map(Labelled)
    mutations: list[Mutation] = [
        (("valueQuantity", "value"), _numbers(quality)),
        (("effectiveDateTime",), _dates(quality)),
        *_common_mutations(quality, (("code", "text"), ("valueQuantity", "unit"))),
    ]
    if quality == "malformed":
        mutations += [(("code",), tagged("wrong-type", wrong_types())),
                      (("valueQuantity",), tagged("wrong-type", wrong_types())),
                      (("effectiveDateTime",), tagged("missing-field", st.just(_DROP))),
                      (("subject",), tagged("wrong-type",
                                            st.sampled_from([None, "Patient/x"]))),
                      (("hasMember",), tagged("wrong-type", wrong_types())),
                      (("effectivePeriod",), tagged("wrong-type", wrong_types()))]
    else:
        mutations += [(("effectiveDateTime",), _datetimes("edge"))]
    return valid_observations(pid, oid).flatmap(lambda base: _mutated(base, mutations))


@st.composite
def valid_conditions(draw: st.DrawFn, pid: str, cid: str) -> dict[str, Any]:
    code, display = draw(st.sampled_from([
        ("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertension"),
        ("40930008", "Hypothyroidism"), ("13644009", "Hypercholesterolemia")]))
    return {"resourceType": "Condition", "id": cid,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                     "condition-clinical", "code": "active"}]},
            "code": _coding(SNOMED, code, display), "subject": {"reference": f"Patient/{pid}"},
            "onsetDateTime": draw(valid_dates(1990, 2026))}


def conditions(pid: str, cid: str, quality: Quality = "valid") -> st.SearchStrategy[Labelled]:
    if quality == "valid":
        return valid_conditions(pid, cid).map(Labelled)
    mutations: list[Mutation] = [
        (("onsetDateTime",), _dates(quality)),
        (("abatementDateTime",), _dates(quality)),
        *_common_mutations(quality, (("code", "text"),)),
    ]
    if quality == "malformed":
        mutations += [(("clinicalStatus",), tagged("wrong-type", wrong_types())),
                      (("code",), tagged("wrong-type", wrong_types())),
                      (("code", "coding"), tagged("wrong-type", wrong_types())),
                      (("verificationStatus",), tagged("null", st.none()))]
    return valid_conditions(pid, cid).flatmap(lambda base: _mutated(base, mutations))


@st.composite
def valid_medication_requests(draw: st.DrawFn, pid: str, mid: str) -> dict[str, Any]:
    code, display = draw(st.sampled_from([
        ("314076", "lisinopril 10 mg tablet"), ("860975", "metformin 500 mg tablet"),
        ("966247", "levothyroxine 50 mcg tablet"), ("617312", "atorvastatin 10 mg tablet")]))
    return {"resourceType": "MedicationRequest", "id": mid, "status": "active",
            "intent": "order", "medicationCodeableConcept": _coding(RXNORM, code, display),
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": draw(valid_dates(2025, 2026)),
            "dosageInstruction": [{"text": "1 tablet daily"}],
            "dispenseRequest": {"numberOfRepeatsAllowed": draw(st.integers(0, 5)),
                                "expectedSupplyDuration": {
                                    "value": draw(st.sampled_from([30, 90])),
                                    "unit": "days", "system": UCUM, "code": "d"}}}


def medication_requests(pid: str, mid: str, quality: Quality = "valid"
                        ) -> st.SearchStrategy[Labelled]:
    if quality == "valid":
        return valid_medication_requests(pid, mid).map(Labelled)
    supply = ("dispenseRequest", "expectedSupplyDuration")
    mutations: list[Mutation] = [
        ((*supply, "value"), _numbers(quality)),
        (("dispenseRequest", "numberOfRepeatsAllowed"), _numbers(quality)),
        (("authoredOn",), _dates(quality)),
        (("dispenseRequest", "validityPeriod", "end"), _dates(quality)),
        *_common_mutations(quality, (("medicationCodeableConcept", "text"),
                                     ("dosageInstruction", 0, "text"))),
    ]
    if quality == "edge":
        mutations += [(supply, tagged("huge-supply-months", st.just(
            {"value": 1e308, "unit": "months", "code": "mo"})))]
    else:
        mutations += [(("dispenseRequest",), tagged("wrong-type", wrong_types())),
                      (("dosageInstruction",), tagged("wrong-type", wrong_types())),
                      (("medicationReference",), tagged("wrong-type", wrong_types())),
                      (("medicationCodeableConcept",),
                       tagged("missing-field", st.just(_DROP))),
                      ((*supply, "code"), tagged("wrong-type", wrong_types()))]
    return valid_medication_requests(pid, mid).flatmap(lambda base: _mutated(base, mutations))


def appointment_resource(aid: str, reference: str, start: str, status: str = "booked"
                         ) -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": aid, "status": status, "start": start,
            "participant": [{"actor": {"reference": reference}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/dr-a", "display": "Dr A"},
                             "status": "accepted"}]}


# Appointment mutations that change whom it is for: (label, make reference from the patient id,
# whether the visit may then be planned for that patient).
REFERENCE_MUTATIONS: dict[str, tuple[Callable[[str], str], bool]] = {
    "versioned-reference": (lambda pid: f"Patient/{pid}/_history/2", True),
    "traversing-reference": (lambda pid: "Patient/../../metadata", False),
    "foreign-reference": (lambda pid: f"https://other-ehr.example/fhir/Patient/{pid}", False),
    "relative-dot-reference": (lambda pid: f"./Patient/{pid}", False),
    "query-reference": (lambda pid: f"Patient?identifier=MRN-{pid}", False),
    "contained-reference": (lambda pid: "#p1", False),
}


@dataclass(frozen=True)
class GeneratedAppointment:
    resource: dict[str, Any]
    labels: frozenset[str]
    patient: str | None  # the patient it may be planned for; None: for no one


@st.composite
def appointments(draw: st.DrawFn, aid: str, pid: str, quality: Quality = "valid",
                 minute: int = 0, id_suffix: str = "") -> GeneratedAppointment:
    """An appointment for `pid` at 09:00 + `minute` on DAY (valid), or a hostile one.

    `id_suffix` keeps hostile ids of one day distinct (two "a/b" would be one appointment
    twice, and the truth could not say whose it is)."""
    start = f"{DAY}T{9 + minute // 60:02d}:{minute % 60:02d}:00-06:00"
    base = appointment_resource(aid, f"Patient/{pid}", start)
    if quality == "valid":
        return GeneratedAppointment(base, frozenset(), pid)
    kind = draw(st.sampled_from(["reference", "start", "id", "other"]))
    if kind == "reference":
        label = draw(st.sampled_from(sorted(REFERENCE_MUTATIONS)))
        make, keeps = REFERENCE_MUTATIONS[label]
        resource = _set(base, ("participant", 0, "actor", "reference"), make(pid))
        return GeneratedAppointment(resource, frozenset({label}), pid if keeps else None)
    if kind == "start":
        label, value = draw(_datetimes(quality))
        return GeneratedAppointment(_set(base, ("start",), value), frozenset({label}), pid)
    if kind == "id":
        label = draw(st.sampled_from(sorted(HOSTILE_IDS)))
        return GeneratedAppointment(_set(base, ("id",), HOSTILE_IDS[label] + id_suffix),
                                    frozenset({label}), pid)
    if quality == "edge":
        label, text = draw(edge_texts())
        return GeneratedAppointment(_set(base, ("description",), text), frozenset({label}),
                                    pid)
    path, value = draw(st.sampled_from([
        (("participant",), {"actor": "Patient/x"}), (("participant", 0, "actor"), None),
        (("status",), ["booked"]), (("serviceType",), "checkup"),
        (("reasonCode",), [None]), (("participant", 0, "actor", "reference"), 42)]))
    return GeneratedAppointment(_set(base, path, value), frozenset({"wrong-type"}), pid)


# --- a whole clinic day --------------------------------------------------------------------


FILE_FAULTS = ("deep-nesting-file", "truncated-json", "invalid-utf8", "utf8-bom",
               "not-a-resource", "empty-file", "nan-token", "duplicate-id")


class ClinicDay:
    """A day as files (bundle folder) and as resources (a server's chart), with the truth.

    A plain class, not a dataclass, so that Hypothesis reports a failing day by its summary
    (__repr__) rather than by every byte of every file.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.resources: list[dict[str, Any]] = []  # for a server's chart
        self.truth: dict[str, str | None] = {}  # appointment -> its patient; None: no one
        self.pristine: dict[str, str] = {}  # appointment -> patient: must be planned
        self.classes: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        # Hypothesis prints a failing example: say what the day is, not every byte of it.
        files = ", ".join(f"{name} ({len(data)} B)" for name, data in self.files.items())
        return (f"ClinicDay(classes={sorted(self.classes)}, truth={self.truth}, "
                f"pristine={sorted(self.pristine)}, files=[{files}])")

    def write(self, folder: Path) -> Path:
        for name, data in self.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return folder


def _bundle(resources: list[dict[str, Any]]) -> bytes:
    return dumps({"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": r} for r in resources]}).encode("utf-8")


@st.composite
def _chart(draw: st.DrawFn, pid: str, quality: Quality) -> Labelled:
    """A patient and a few records; for edge/malformed, one to three of them bad."""
    parts: list[Labelled] = [draw(patients(pid, "valid"))]
    builders = [lambda i: observations(pid, f"{pid}-obs-{i}", "valid"),
                lambda i: conditions(pid, f"{pid}-cond-{i}", "valid"),
                lambda i: medication_requests(pid, f"{pid}-med-{i}", "valid")]
    for i in range(draw(st.integers(1, 4))):
        parts.append(draw(draw(st.sampled_from(builders))(i)))
    if quality != "valid":
        bad = [lambda i, q: patients(pid, q),
               lambda i, q: observations(pid, f"{pid}-bad-obs-{i}", q),
               lambda i, q: conditions(pid, f"{pid}-bad-cond-{i}", q),
               lambda i, q: medication_requests(pid, f"{pid}-bad-med-{i}", q)]
        for i in range(draw(st.integers(1, 3))):
            q = draw(st.sampled_from(["edge", "malformed"]))
            which = draw(st.integers(0, len(bad) - 1))
            item = draw(bad[which](i, q))
            if which == 0:  # a bad Patient replaces the good one
                parts[0] = item
            else:
                parts.append(item)
    labels = frozenset().union(*(p.labels for p in parts))
    return Labelled({"resourceType": "Bundle", "type": "collection",
                     "entry": [{"resource": p.resource} for p in parts]}, labels)


@st.composite
def clinic_days(draw: st.DrawFn, *, files: bool = True) -> ClinicDay:
    """A small clinic day mixing good and bad records; `files=False` leaves out what only a
    folder can carry (broken files), for serving the day from a server's chart."""
    day = ClinicDay()
    classes: set[str] = set()
    appointments_file: list[dict[str, Any]] = []
    minute = 0

    def chart_file(pid: str, chart: Labelled) -> None:
        entries = [e["resource"] for e in chart.resource["entry"]]
        day.files[f"patients/{pid}.json"] = _bundle(entries)
        day.resources.extend(entries)

    for n in range(draw(st.integers(1, 3))):  # pristine: must be planned
        pid, aid = f"good-{n}", f"appt-good-{n}"
        chart_file(pid, draw(_chart(pid, "valid")))
        made = draw(appointments(aid, pid, "valid", minute))
        appointments_file.append(made.resource)
        day.truth[aid] = day.pristine[aid] = pid
        minute += 20

    for n in range(draw(st.integers(0, 2))):  # degraded charts, valid appointments
        pid, aid = f"degraded-{n}", f"appt-degraded-{n}"
        chart = draw(_chart(pid, "malformed" if draw(st.booleans()) else "edge"))
        classes |= chart.labels
        chart_file(pid, chart)
        made = draw(appointments(aid, pid, "valid", minute))
        appointments_file.append(made.resource)
        day.truth[aid] = pid
        minute += 20

    trap_added = False
    for n in range(draw(st.integers(0, 2))):  # hostile appointments, each in its own file
        pid, aid = f"target-{n}", f"appt-hostile-{n}"
        chart_file(pid, draw(_chart(pid, "valid")))
        made = draw(appointments(aid, pid, draw(st.sampled_from(["edge", "malformed"])),
                                 minute, id_suffix=f"-{n}" if n else ""))
        minute += 20
        classes |= made.labels
        rid = made.resource.get("id")
        if isinstance(rid, str):
            day.truth[rid] = made.patient
        name = f"appointments-hostile-{n}.json"
        day.files[name] = _bundle([made.resource])
        day.resources.append(made.resource)
        if not trap_added and made.patient is None:
            # What a traversing reference lands on today: a patient the visit is not for.
            trap = draw(_chart("metadata", "valid"))
            chart_file("metadata", trap)
            trap_added = True

    day.files["appointments.json"] = _bundle(appointments_file)
    day.resources.extend(appointments_file)

    if files:
        for n, fault in enumerate(draw(st.lists(st.sampled_from(FILE_FAULTS), max_size=2,
                                                unique=True))):
            classes.add(fault)
            day.files[f"broken-{n}-{fault}.json"] = _broken_file(fault, day)
    day.classes = frozenset(classes)
    return day


def _broken_file(fault: str, day: ClinicDay) -> bytes:
    if fault == "deep-nesting-file":
        return ('{"resourceType":"Bundle","type":"collection","entry":[{"resource":'
                '{"resourceType":"Basic","id":"deep","extension":'
                f'{deep_json(100_000)}}}}}]}}').encode()
    if fault == "truncated-json":
        return b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"reso'
    if fault == "invalid-utf8":
        return b'{"resourceType":"Basic","id":"bad-utf8","code":{"text":"\xff\xfe\xc3"}}'
    if fault == "utf8-bom":
        return b"\xef\xbb\xbf" + _bundle([{"resourceType": "Basic", "id": "bom-basic"}])
    if fault == "not-a-resource":
        return b'[1, "two", null]'
    if fault == "empty-file":
        return b""
    if fault == "nan-token":
        return b'{"resourceType":"Basic","id":"nan-basic","extension":[NaN, Infinity]}'
    if fault == "duplicate-id":
        # The first resource of a pristine chart again (same id): harmless, reported once.
        first = next((n for n in sorted(day.files) if n.startswith("patients/good-")), None)
        if first is None:
            return b"{}"
        bundle = json.loads(day.files[first])
        return _bundle(bundle["entry"][1:2] or bundle["entry"][:1])
    raise ValueError(fault)
