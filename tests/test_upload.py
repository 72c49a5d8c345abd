"""`previsit upload`: a folder of Bundles / NDJSON read into resources with Type/id
references, then written as PUT Type/id transactions, referenced types first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from builders import bundle, write

from previsit.errors import UploadError
from previsit.upload import read_resources, transactions


def res(rtype: str, rid: str | None, **fields: Any) -> dict[str, Any]:
    """A minimal resource of a type, with an id (None: without one)."""
    return {"resourceType": rtype, **({"id": rid} if rid is not None else {}), **fields}


def ndjson(*resources: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in resources)


def entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def planned(resources: list[dict[str, Any]], size: int = 200) -> list[list[str]]:
    """Each transaction's request URLs."""
    return [[e["request"]["url"] for e in tx["entry"]] for tx in transactions(resources, size)]


# --- read_resources ---------------------------------------------------------------------


def test_full_url_references_become_type_and_id_wherever_they_are(tmp_path: Path) -> None:
    # A Synthea-style transaction: entries point at each other by urn:uuid fullUrl.
    write(tmp_path, "synthea.json", {"resourceType": "Bundle", "type": "transaction",
                                     "entry": [
        entry("urn:uuid:11111111-aaaa", res("Patient", "p1")),
        entry("urn:uuid:22222222-bbbb", res("Encounter", "e1",
              subject={"reference": "urn:uuid:11111111-aaaa"},
              participant=[{"individual": {"reference": "urn:uuid:33333333-cccc",
                                           "display": "Dr A"}}])),
        entry("urn:uuid:33333333-cccc", res("Practitioner", "dr-a")),
        entry("https://ehr.example/fhir/Medication/m1", res("Medication", "m1")),
        entry("urn:uuid:44444444-dddd", res(
            "MedicationRequest", "mr1",
            subject={"reference": "urn:uuid:11111111-aaaa"},
            encounter={"reference": "urn:uuid:22222222-bbbb"},
            medicationReference={"reference": "https://ehr.example/fhir/Medication/m1"},
            extension=[{"url": "https://example.org/prescriber",
                        "valueReference": {"reference": "urn:uuid:33333333-cccc"}}],
            # not a reference: a string that happens to equal a fullUrl stays as it is
            identifier=[{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:11111111-aaaa"}],
            # a reference to something outside the Bundle stays as it is
            requester={"reference": "Practitioner/elsewhere"}))]})
    by_id = {r["id"]: r for r in read_resources(tmp_path)}
    assert by_id["e1"]["subject"] == {"reference": "Patient/p1"}
    assert by_id["e1"]["participant"] == [{"individual": {"reference": "Practitioner/dr-a",
                                                          "display": "Dr A"}}]
    request = by_id["mr1"]
    assert request["subject"] == {"reference": "Patient/p1"}
    assert request["encounter"] == {"reference": "Encounter/e1"}
    assert request["medicationReference"] == {"reference": "Medication/m1"}
    assert request["extension"][0]["valueReference"] == {"reference": "Practitioner/dr-a"}
    assert request["identifier"][0]["value"] == "urn:uuid:11111111-aaaa"
    assert request["requester"] == {"reference": "Practitioner/elsewhere"}


def test_full_urls_are_resolved_only_within_their_own_bundle(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"resourceType": "Bundle", "type": "collection",
                               "entry": [entry("urn:uuid:p", res("Patient", "p1"))]})
    write(tmp_path, "b.json", bundle(res("Observation", "o1",
                                         subject={"reference": "urn:uuid:p"})))
    by_id = {r["id"]: r for r in read_resources(tmp_path)}
    assert by_id["o1"]["subject"] == {"reference": "urn:uuid:p"}


def test_ndjson_single_resources_and_bundles_are_all_read_in_path_order(
        tmp_path: Path) -> None:
    write(tmp_path, "b/observations.ndjson",
          ndjson(res("Observation", "o1"), res("Observation", "o2")) + "\n  \n")
    write(tmp_path, "a-patient.json", res("Patient", "p1"))
    write(tmp_path, "c.json", bundle(res("Condition", "c1"), res("Condition", "c2")))
    write(tmp_path, "notes.txt", "not read")
    write(tmp_path, "export.xml", "<Patient/>")
    assert [(r["resourceType"], r["id"]) for r in read_resources(tmp_path)] == [
        ("Patient", "p1"), ("Observation", "o1"), ("Observation", "o2"),
        ("Condition", "c1"), ("Condition", "c2")]


def test_a_json_file_that_is_not_fhir_is_skipped(tmp_path: Path) -> None:
    write(tmp_path, "package.json", {"name": "fhir-server", "version": "1.0.0"})
    write(tmp_path, "list.json", [1, 2, 3])
    write(tmp_path, "node_modules/x/fixture.json", {"broken": True})
    write(tmp_path, "patient.json", res("Patient", "p1"))
    assert read_resources(tmp_path) == [res("Patient", "p1")]


def test_an_empty_folder_has_nothing_to_upload(tmp_path: Path) -> None:
    assert read_resources(tmp_path) == []


@pytest.mark.parametrize(("name", "data"), [
    ("obs.ndjson", ndjson(res("Observation", "o1"), {"id": "o2", "status": "final"})),
    ("day.json", {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": res("Patient", "p1")},
                            {"resource": {"id": "o2", "status": "final"}}]}),
], ids=["ndjson-line", "bundle-entry"])
def test_a_resource_without_a_type_inside_fhir_data_is_refused(tmp_path: Path, name: str,
                                                               data: Any) -> None:
    write(tmp_path, name, data)
    with pytest.raises(UploadError, match="no resourceType"):
        read_resources(tmp_path)


def test_a_bad_ndjson_line_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "obs.ndjson", ndjson(res("Observation", "o1")) + "{oops\n")
    with pytest.raises(UploadError) as caught:
        read_resources(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'obs.ndjson'} line 2: not valid JSON: Expecting property name enclosed "
        "in double quotes at line 1 column 2")


def test_a_bad_json_file_names_the_file_and_where_in_it(tmp_path: Path) -> None:
    write(tmp_path, "day.json", '{"resourceType": "Bundle",\n "entry": [')
    with pytest.raises(UploadError) as caught:
        read_resources(tmp_path)
    assert str(caught.value).startswith(
        f"{tmp_path / 'day.json'}: not valid JSON: Expecting value at line 2 column 12")


def test_a_bundle_entry_without_a_resource_names_the_entry(tmp_path: Path) -> None:
    write(tmp_path, "day.json", {"resourceType": "Bundle", "type": "collection",
                                 "entry": [{"resource": res("Patient", "p1")},
                                           {"fullUrl": "urn:uuid:x"}]})
    with pytest.raises(UploadError) as caught:
        read_resources(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'day.json'} entry[1]: entry has no resource; skipped"


def test_resources_without_an_id_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "day.json", bundle(res("Patient", None), res("Observation", None),
                                       res("Observation", ""), res("Condition", "c1")))
    with pytest.raises(UploadError) as caught:
        read_resources(tmp_path)
    assert str(caught.value) == ("3 resources have no id (Observation, Patient); upload "
                                 "writes with PUT Type/id so ids must be given")


# --- transactions -----------------------------------------------------------------------


def test_referenced_types_are_written_first() -> None:
    resources = [res("Observation", "o1"), res("Patient", "p1"), res("Medication", "m1"),
                 res("PractitionerRole", "r1"), res("Encounter", "e1"),
                 res("Location", "l1"), res("Practitioner", "dr1"),
                 res("Organization", "org1"), res("Condition", "c1")]
    assert planned(resources) == [[
        "Organization/org1", "Practitioner/dr1", "Location/l1", "PractitionerRole/r1",
        "Patient/p1", "Medication/m1", "Condition/c1", "Encounter/e1", "Observation/o1"]]


def test_within_a_type_resources_are_ordered_by_id_as_text() -> None:
    resources = [res("Patient", "p2"), res("Patient", "p10"), res("Patient", "p1")]
    assert planned(resources) == [["Patient/p1", "Patient/p10", "Patient/p2"]]


def test_resources_are_chunked_in_order() -> None:
    resources = [res("Observation", f"o{i}") for i in range(1, 4)] + [res("Patient", "p1"),
                                                                       res("Patient", "p2")]
    assert planned(resources, size=2) == [["Patient/p1", "Patient/p2"],
                                          ["Observation/o1", "Observation/o2"],
                                          ["Observation/o3"]]


def test_the_default_chunk_is_two_hundred() -> None:
    resources = [res("Observation", f"o{i:03d}") for i in range(201)]
    chunks = planned(resources)
    assert [len(chunk) for chunk in chunks] == [200, 1]
    assert chunks[1] == ["Observation/o200"]


def test_each_entry_is_a_put_of_the_resource_by_type_and_id() -> None:
    patient = res("Patient", "p1", gender="female")
    (tx,) = transactions([patient])
    assert tx == {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female"},
         "request": {"method": "PUT", "url": "Patient/p1"}}]}


def test_nothing_to_upload_is_no_transaction() -> None:
    assert list(transactions([])) == []
