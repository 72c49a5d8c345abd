"""`previsit upload`: a folder of Bundles / NDJSON read into resources with Type/id
references, then one transaction in which every resource is created by POST under a
urn:uuid fullUrl (the server assigns the id), conditional on an identifier naming its id in
the folder, references between them by fullUrl, what is referred to first. The HTTP source
splits it to the server's size (tests/test_write_back.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from builders import bundle, write

from previsit.errors import UploadError
from previsit.upload import (
    UPLOAD_SYSTEM,
    full_url,
    read_resources,
    resource_types,
    upload_transaction,
)


def res(rtype: str, rid: str | None, **fields: Any) -> dict[str, Any]:
    """A minimal resource of a type, with an id (None: without one)."""
    return {"resourceType": rtype, **({"id": rid} if rid is not None else {}), **fields}


def ndjson(*resources: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in resources)


def entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def planned(resources: list[dict[str, Any]]) -> list[str]:
    """The uploaded resources, as Type/id in the folder, in the order they are written."""
    return [f"{e['request']['url']}/{e['request']['ifNoneExist'].rsplit('|', 1)[1]}"
            for e in upload_transaction(resources)["entry"]]


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
                                 "identifies each resource by its id in the folder, so ids "
                                 "must be given")


# --- the upload transaction -------------------------------------------------------------


def test_each_resource_is_a_conditional_post_under_a_urn_uuid_without_its_id() -> None:
    patient = res("Patient", "pat-maria-lopez", gender="female",
                  identifier=[{"system": "urn:oid:1.2.3", "value": "RFM-1"}],
                  meta={"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z",
                        "profile": ["http://example.org/p"]})
    (entry,) = upload_transaction([patient])["entry"]
    assert entry["fullUrl"] == full_url("Patient", "pat-maria-lopez")
    assert entry["fullUrl"].startswith("urn:uuid:") and len(entry["fullUrl"]) == 45
    assert entry["request"] == {
        "method": "POST", "url": "Patient",
        "ifNoneExist": "identifier=urn:previsit:upload|pat-maria-lopez"}
    assert entry["resource"] == {
        "resourceType": "Patient", "gender": "female",
        # its own identifiers kept, the upload identifier added
        "identifier": [{"system": "urn:oid:1.2.3", "value": "RFM-1"},
                       {"system": UPLOAD_SYSTEM, "value": "pat-maria-lopez"}],
        # what the server sets itself is left to it
        "meta": {"profile": ["http://example.org/p"]}}


def test_the_full_url_is_stable_and_differs_per_type_and_id() -> None:
    assert full_url("Patient", "p1") == full_url("Patient", "p1")
    assert len({full_url("Patient", "p1"), full_url("Patient", "p2"),
                full_url("Observation", "p1")}) == 3


def test_references_between_uploaded_resources_point_at_their_full_urls() -> None:
    resources = [res("Patient", "p1"),
                 res("Observation", "o1", subject={"reference": "Patient/p1"},
                     performer=[{"reference": "Practitioner/elsewhere"}],
                     note=[{"text": "Patient/p1"}])]
    by_type = {e["request"]["url"]: e for e in upload_transaction(resources)["entry"]}
    observation = by_type["Observation"]["resource"]
    assert observation["subject"] == {"reference": by_type["Patient"]["fullUrl"]}
    assert observation["performer"] == [{"reference": "Practitioner/elsewhere"}]  # not ours
    assert observation["note"] == [{"text": "Patient/p1"}]  # text, not a reference


def test_what_a_resource_refers_to_is_written_before_it() -> None:
    # A panel refers to its members; an observation to its encounter; an encounter to the
    # patient; whatever the types' usual order says.
    resources = [res("Observation", "a-panel", hasMember=[{"reference": "Observation/z1"},
                                                          {"reference": "Observation/z2"}]),
                 res("Observation", "z1", encounter={"reference": "Encounter/e1"}),
                 res("Observation", "z2"), res("Encounter", "e1",
                                               subject={"reference": "Patient/p1"}),
                 res("Patient", "p1", managingOrganization={"reference": "Organization/o"}),
                 res("Organization", "o")]
    assert planned(resources) == ["Organization/o", "Patient/p1", "Encounter/e1",
                                  "Observation/z1", "Observation/z2", "Observation/a-panel"]


def test_without_references_referenced_types_come_first_then_type_then_id() -> None:
    resources = [res("Observation", "o1"), res("Patient", "p2"), res("Medication", "m1"),
                 res("PractitionerRole", "r1"), res("Encounter", "e1"),
                 res("Location", "l1"), res("Practitioner", "dr1"), res("Patient", "p10"),
                 res("Organization", "org1"), res("Condition", "c1")]
    assert planned(resources) == [
        "Organization/org1", "Practitioner/dr1", "Location/l1", "PractitionerRole/r1",
        "Patient/p10", "Patient/p2", "Medication/m1", "Condition/c1", "Encounter/e1",
        "Observation/o1"]


def test_a_reference_cycle_keeps_every_resource() -> None:
    resources = [res("Observation", "b", derivedFrom=[{"reference": "Observation/a"}]),
                 res("Observation", "a", derivedFrom=[{"reference": "Observation/b"}])]
    assert planned(resources) == ["Observation/a", "Observation/b"]


def test_a_type_with_one_identifier_gets_ours_when_it_has_none() -> None:
    (entry,) = upload_transaction([res("Bundle", "b1", type="collection")])["entry"]
    assert entry["resource"]["identifier"] == {"system": UPLOAD_SYSTEM, "value": "b1"}
    with pytest.raises(UploadError, match="already has its one identifier"):
        upload_transaction([res("Bundle", "b2", type="collection",
                                identifier={"system": "urn:x", "value": "1"})])


def test_a_type_that_cannot_carry_an_identifier_is_refused() -> None:
    with pytest.raises(UploadError, match=r"^Binary cannot carry an identifier"):
        upload_transaction([res("Binary", "x1", contentType="text/plain")])


def test_a_resource_twice_in_the_folder_is_refused() -> None:
    with pytest.raises(UploadError, match=r"^1 resources appear more than once in the folder "
                                          r"\(Patient/p1\)"):
        upload_transaction([res("Patient", "p1"), res("Patient", "p1", gender="male")])


def test_an_id_that_is_not_a_fhir_id_is_refused() -> None:
    with pytest.raises(UploadError, match=r"^Patient/p 1: the id is not a valid FHIR id"):
        upload_transaction([res("Patient", "p 1")])


def test_an_unknown_resource_type_is_refused() -> None:
    with pytest.raises(UploadError, match=r"^Patientt is not a FHIR R4 resource type"):
        upload_transaction([res("Patientt", "p1")])


def test_the_types_an_upload_creates() -> None:
    assert resource_types([res("Observation", "o1"), res("Patient", "p1"),
                           res("Observation", "o2")]) == ["Observation", "Patient"]


def test_nothing_to_upload_is_an_empty_transaction() -> None:
    assert upload_transaction([]) == {"resourceType": "Bundle", "type": "transaction",
                                      "entry": []}
