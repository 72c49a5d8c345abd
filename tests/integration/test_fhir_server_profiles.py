"""The test FHIR server's production profiles, exercised directly with httpx.

Each test states what a production server (Medplum, HAPI) answers - status, body, headers - and
checks that the test server answers the same, so client code tested against it meets the
production behaviour first here. Expected bodies are literals from /work/shared/production and
HAPI's own messages, never computed by the server under test.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhirserver import FhirTestServer, fhir_test_server

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ORDERS = "urn:example:previsit-order"


# --- builders -----------------------------------------------------------------------------------


def service_request(key: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "identifier": [{"system": ORDERS, "value": key}],
        "subject": {"reference": "Patient/someone"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
    }


def create_entry(key: str, *, conditional: bool) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": "ServiceRequest"}
    if conditional:
        request["ifNoneExist"] = f"identifier={ORDERS}|{key}"
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": service_request(key),
            "request": request}


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **fields}


def statuses(response: httpx.Response) -> list[str]:
    return [e["response"]["status"] for e in response.json()["entry"]]


def count_of(client: httpx.Client, resource_type: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    found = client.get(resource_type, params={"_total": "accurate", "_count": "0"},
                       headers=headers)
    assert found.status_code == 200, found.text
    total: int = found.json()["total"]
    return total


@pytest.fixture(scope="module")
def medplum() -> Iterator[FhirTestServer]:
    with fhir_test_server(profile="medplum") as server:
        yield server


@pytest.fixture
def mp(medplum: FhirTestServer) -> Iterator[httpx.Client]:
    medplum.admin.reset(data=True)
    with httpx.Client(base_url=medplum.base_url, headers=FHIR_JSON, timeout=10) as client:
        yield client


# --- Medplum: transactions ----------------------------------------------------------------------

def invalid(text: str) -> dict[str, Any]:
    """Medplum's 400 body: one error issue with the message in details.text."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "details": {"text": text}}]}


STRICT_TOO_MANY = invalid("Transaction requires strict isolation but has too many entries")


def test_medplum_refuses_a_transaction_of_nine_conditional_creates_whole(
        mp: httpx.Client) -> None:
    entries = [create_entry(f"k{i}", conditional=True) for i in range(9)]

    response = mp.post("", json=bundle("transaction", entries))

    assert response.status_code == 400
    assert response.json() == STRICT_TOO_MANY
    assert count_of(mp, "ServiceRequest") == 0


def test_medplum_accepts_eight_conditional_creates_in_a_transaction(mp: httpx.Client) -> None:
    entries = [create_entry(f"k{i}", conditional=True) for i in range(8)]

    response = mp.post("", json=bundle("transaction", entries))

    assert response.status_code == 200, response.text
    assert statuses(response) == ["201"] * 8


def test_medplum_accepts_nine_plain_posts_in_a_transaction(mp: httpx.Client) -> None:
    entries = [create_entry(f"k{i}", conditional=False) for i in range(9)]

    response = mp.post("", json=bundle("transaction", entries))

    assert response.status_code == 200, response.text
    assert statuses(response) == ["201"] * 9


def test_medplum_counts_a_conditional_update_as_needing_strict_isolation(
        mp: httpx.Client) -> None:
    update = {"resource": service_request("u"),
              "request": {"method": "PUT", "url": f"ServiceRequest?identifier={ORDERS}|u"}}
    entries = [update] + [create_entry(f"k{i}", conditional=False) for i in range(8)]

    response = mp.post("", json=bundle("transaction", entries))

    assert response.status_code == 400
    assert response.json() == STRICT_TOO_MANY


def test_medplum_refuses_more_than_fifty_updates_in_a_transaction(mp: httpx.Client) -> None:
    ids = [str(uuid.uuid4()) for _ in range(51)]
    entries = [{"resource": patient(id=i), "request": {"method": "PUT", "url": f"Patient/{i}"}}
               for i in ids]

    response = mp.post("", json=bundle("transaction", entries))

    assert response.status_code == 400
    assert response.json() == invalid("Transaction contains more update operations than allowed")


def test_a_failed_entry_rolls_back_an_atomic_transaction(mp: httpx.Client) -> None:
    entries = [create_entry("ok", conditional=False),
               {"resource": patient(id="pat-maria-lopez"),
                "request": {"method": "PUT", "url": "Patient/pat-maria-lopez"}}]

    response = mp.post("", json=bundle("transaction", entries))

    assert response.status_code == 400
    assert response.json()["issue"][0]["details"]["text"] == "Invalid id"
    assert count_of(mp, "ServiceRequest") == 0


def test_a_non_atomic_transaction_answers_each_entry_on_its_own() -> None:
    with fhir_test_server(profile="medplum", atomic_transactions=False) as server, \
            httpx.Client(base_url=server.base_url, headers=FHIR_JSON) as client:
        entries = [create_entry("ok", conditional=False),
                   {"resource": patient(id="pat-maria-lopez"),
                    "request": {"method": "PUT", "url": "Patient/pat-maria-lopez"}}]

        response = client.post("", json=bundle("transaction", entries))

        assert response.status_code == 200
        assert response.json()["type"] == "transaction-response"
        assert statuses(response) == ["201", "400"]
        assert count_of(client, "ServiceRequest") == 1


# --- Medplum: ids and creation ------------------------------------------------------------------

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_medplum_refuses_an_id_that_is_not_a_uuid(mp: httpx.Client) -> None:
    response = mp.put("Patient/pat-maria-lopez", json=patient(id="pat-maria-lopez"))

    assert response.status_code == 400
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "details": {"text": "Invalid id"}}],
    }
    assert response.json() == invalid("Invalid id")


def test_medplum_refuses_to_create_by_put_but_assigns_a_uuid_on_post(mp: httpx.Client) -> None:
    new_id = str(uuid.uuid4())

    put = mp.put(f"Patient/{new_id}", json=patient(id=new_id))
    post = mp.post("Patient", json=patient(id="my-own-id"))

    assert put.status_code == 404
    assert put.json()["id"] == "not-found"
    assert post.status_code == 201
    assert UUID.match(post.json()["id"])
    updated = mp.put(f"Patient/{post.json()['id']}", json={**post.json(), "gender": "female"})
    assert updated.status_code == 200


def test_the_admin_token_may_seed_readable_ids_by_put(medplum: FhirTestServer,
                                                      mp: httpx.Client) -> None:
    admin = {"Authorization": f"Bearer {medplum.admin_token}"}

    seeded = mp.put("Patient/pat-maria-lopez", json=patient(id="pat-maria-lopez"), headers=admin)

    assert seeded.status_code == 201
    assert mp.get("Patient/pat-maria-lopez").status_code == 200


def test_medplum_gives_a_total_only_when_asked(mp: httpx.Client) -> None:
    for _ in range(3):
        mp.post("Patient", json=patient())

    plain = mp.get("Patient", params={"_count": "2"}).json()
    asked = mp.get("Patient", params={"_count": "2", "_total": "accurate"}).json()

    assert "total" not in plain
    assert [link["relation"] for link in plain["link"]] == ["self", "first", "next"]
    assert asked["total"] == 3


def test_medplum_refuses_an_unknown_search_parameter(mp: httpx.Client) -> None:
    response = mp.get("Patient", params={"foo": "bar"})

    assert response.status_code == 400
    assert response.json()["issue"][0]["details"]["text"] == "Unknown search parameter: foo"


# --- Medplum: rate limits -----------------------------------------------------------------------


def ratelimit_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("RateLimit")


def test_rate_limit_headers_count_requests_and_points(mp: httpx.Client) -> None:
    first = mp.get("Patient")  # a search: 20 points
    second = mp.post("Patient", json=patient())  # a write: 100 points

    assert ratelimit_headers(first) == ['"requests";r=59999;t=60',
                                        '"fhirInteractions";r=49980;t=60']
    assert ratelimit_headers(second) == ['"requests";r=59998;t=60',
                                         '"fhirInteractions";r=49880;t=60']


def test_a_spent_budget_answers_429_with_medplums_body_and_recovers_after_the_window() -> None:
    # Isolated from the rest of the medplum profile: lenient plus rate limits only.
    with fhir_test_server(profile="lenient", rate_limit=True, rate_limit_points=250,
                          rate_limit_window_s=1) as server, \
            httpx.Client(base_url=server.base_url, headers=FHIR_JSON) as client:
        assert client.post("Patient", json=patient()).status_code == 201  # 100
        assert client.post("Patient", json=patient()).status_code == 201  # 200

        refused = client.post("Patient", json=patient())  # 300 > 250
        again = client.get("Patient")

        assert refused.status_code == 429
        body = refused.json()
        assert list(body) == ["_remainingPoints", "_msBeforeNext", "_consumedPoints",
                              "_isFirstInDuration", "limit"]
        assert (body["_remainingPoints"], body["_consumedPoints"], body["_isFirstInDuration"],
                body["limit"]) == (0, 300, False, 250)
        assert 0 < body["_msBeforeNext"] <= 1000
        assert "Retry-After" not in refused.headers
        assert ratelimit_headers(refused)[1] == '"fhirInteractions";r=0;t=1'
        assert again.status_code == 429
        time.sleep(1.1)
        assert client.get("Patient").status_code == 200


def test_the_requests_budget_counts_http_requests() -> None:
    with fhir_test_server(profile="medplum", rate_limit_requests=2) as server, \
            httpx.Client(base_url=server.base_url) as client:
        answers = [client.get("Patient/" + str(uuid.uuid4())) for _ in range(3)]

        assert [a.status_code for a in answers] == [404, 404, 429]
        assert answers[2].json()["limit"] == 2
        assert ratelimit_headers(answers[2])[0] == '"requests";r=0;t=60'


def test_the_admin_can_leave_a_client_a_nearly_spent_quota() -> None:
    with fhir_test_server(profile="lenient", rate_limit=True, rate_limit_window_s=60) as server, \
            httpx.Client(base_url=server.base_url, headers=FHIR_JSON) as client:
        assert client.get("Patient").status_code == 200  # opens this address's window
        key = next(iter(server.admin.stats()["rate_limits"]["fhirInteractions"]))

        state = server.admin.spend_quota(key, remaining=30, reset_s=5)
        first = client.get("Patient")  # 20 points: 10 left
        second = client.get("Patient")  # 20 more: refused until the window it set ends

        assert (state["_remainingPoints"], state["limit"]) == (30, 50000)
        assert ratelimit_headers(first)[1] == '"fhirInteractions";r=10;t=5'
        assert second.status_code == 429
        assert 4000 < second.json()["_msBeforeNext"] <= 5000


def test_conditional_creates_find_their_identifier_as_medplums_matcher_does(
        mp: httpx.Client) -> None:
    # The test server looks a conditional write's identifier up directly (no FHIRPath over
    # every resource); the answers are those of Medplum's matcher, case-insensitive value.
    first = mp.post("ServiceRequest", json=service_request("Key-1"),
                    headers={"If-None-Exist": f"identifier={ORDERS}|Key-1"})
    same = mp.post("ServiceRequest", json=service_request("Key-1"),
                   headers={"If-None-Exist": f"identifier={ORDERS}|key-1"})
    other_system = mp.post("ServiceRequest", json=service_request("Key-1"),
                           headers={"If-None-Exist": "identifier=urn:other|Key-1"})

    assert (first.status_code, same.status_code, other_system.status_code) == (201, 200, 201)
    assert same.json()["id"] == first.json()["id"]
    # the copy created under the other condition carries ORDERS|Key-1 too: two now match
    ambiguous = mp.post("ServiceRequest", json=service_request("Key-1"),
                        headers={"If-None-Exist": f"identifier={ORDERS}|Key-1"})
    assert ambiguous.status_code == 412


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_a_budget_spent_inside_a_bundle_answers_429_per_entry_with_the_bundle_200(
        kind: str) -> None:
    with fhir_test_server(profile="medplum", rate_limit_points=250,
                          atomic_transactions=False) as server, \
            httpx.Client(base_url=server.base_url, headers=FHIR_JSON) as client:
        entries = [create_entry(f"k{i}", conditional=False) for i in range(4)]

        response = client.post("", json=bundle(kind, entries))

        assert response.status_code == 200
        # Medplum stops the batch at the first refusal: the rest answer 429 too.
        assert statuses(response) == ["201", "201", "429", "429"]
        outcome = response.json()["entry"][2]["response"]["outcome"]
        assert outcome["issue"][0]["code"] == "throttled"
        assert count_of(client, "ServiceRequest", server.admin_token) == 2


def test_a_budget_spent_inside_an_atomic_transaction_fails_it_whole_with_429() -> None:
    with fhir_test_server(profile="medplum", rate_limit_points=250) as server, \
            httpx.Client(base_url=server.base_url, headers=FHIR_JSON) as client:
        entries = [create_entry(f"k{i}", conditional=False) for i in range(4)]

        response = client.post("", json=bundle("transaction", entries))

        assert response.status_code == 429
        assert response.json()["_consumedPoints"] == 300
        assert count_of(client, "ServiceRequest", server.admin_token) == 0


def test_a_scripted_429_for_one_batch_entry(medplum: FhirTestServer, mp: httpx.Client) -> None:
    medplum.admin.add_fault(in_batch=True, path="^ServiceRequest", status=429)
    entries = [create_entry(f"k{i}", conditional=False) for i in range(3)]

    response = mp.post("", json=bundle("batch", entries))

    assert response.status_code == 200
    assert statuses(response) == ["429", "201", "201"]
    assert medplum.admin.stats()["faults_fired"] == 1


# --- Medplum: concurrent conditional updates ----------------------------------------------------

ID_MISMATCH = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid",
               "details": {"text": "Resource ID did not match resolved ID"},
               "expression": ["DocumentReference.id"]}],
}


def document(key: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "identifier": [{"system": ORDERS, "value": key}],
        "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}],
    }


def test_two_overlapping_conditional_updates_fail_the_second_and_a_retry_succeeds() -> None:
    url = f"DocumentReference?identifier={ORDERS}|sheet-1"

    async def both(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, headers=FHIR_JSON, timeout=10) as client:
            return list(await asyncio.gather(client.put(url, json=document("sheet-1")),
                                             client.put(url, json=document("sheet-1"))))

    with fhir_test_server(profile="medplum", conflict_window_ms=400) as server:
        answers = asyncio.run(both(server.base_url))

        assert sorted(r.status_code for r in answers) == [201, 400]
        refused = next(r for r in answers if r.status_code == 400)
        assert refused.json() == ID_MISMATCH
        retry = httpx.put(f"{server.base_url}/{url}", json=document("sheet-1"), headers=FHIR_JSON)
        assert retry.status_code == 200
        assert server.admin.stats()["conflicts"] == 1


def test_the_id_mismatch_can_be_scripted(medplum: FhirTestServer, mp: httpx.Client) -> None:
    medplum.admin.add_fault(method="PUT", path="^DocumentReference", preset="id-mismatch")
    url = f"DocumentReference?identifier={ORDERS}|sheet-2"

    first = mp.put(url, json=document("sheet-2"))
    second = mp.put(url, json=document("sheet-2"))

    assert (first.status_code, first.json()) == (400, ID_MISMATCH)
    assert second.status_code == 201


# --- faults -------------------------------------------------------------------------------------


def test_scripted_503s_then_the_real_answer(medplum: FhirTestServer, mp: httpx.Client) -> None:
    medplum.admin.add_fault(method="GET", path="^Patient", status=503, times=2,
                            headers={"Retry-After": "1"})

    answers = [mp.get("Patient") for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "1"
    assert answers[0].json()["issue"][0]["code"] == "transient"


def test_a_dropped_connection_after_the_write_was_made(medplum: FhirTestServer,
                                                       mp: httpx.Client) -> None:
    medplum.admin.add_fault(method="POST", path="^Patient$", action="drop", when="after")

    with pytest.raises(httpx.RemoteProtocolError):
        mp.post("Patient", json=patient())

    assert count_of(mp, "Patient") == 1


def test_a_bad_fault_spec_is_refused_with_the_reason(medplum: FhirTestServer) -> None:
    response = httpx.post(f"{medplum.root_url}/__admin/faults", json={"statuss": 500})

    assert response.status_code == 400
    assert "unknown fault field" in response.json()["error"]


def test_stats_count_interactions_by_type(medplum: FhirTestServer, mp: httpx.Client) -> None:
    mp.post("Patient", json=patient())
    mp.post("", json=bundle("batch", [create_entry("a", conditional=True)]))

    stats = medplum.admin.stats()

    assert stats["interactions"]["create"] == {"Patient": 1, "ServiceRequest": 1}
    assert stats["bundles"] == {"batch": 1}
    assert stats["entries"]["by_status"] == {"201": 1}
    assert stats["points"] == {"address:127.0.0.1": 100 + 120}


# --- HAPI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hapi_server() -> Iterator[FhirTestServer]:
    with fhir_test_server(profile="hapi") as server:
        yield server


@pytest.fixture
def hapi(hapi_server: FhirTestServer) -> Iterator[httpx.Client]:
    hapi_server.admin.reset(data=True)
    with httpx.Client(base_url=hapi_server.base_url, headers=FHIR_JSON, timeout=10) as client:
        yield client


def test_hapi_pages_through_getpages_links_with_a_total(hapi_server: FhirTestServer,
                                                        hapi: httpx.Client) -> None:
    created = {hapi.post("Patient", json=patient()).json()["id"] for _ in range(5)}
    base = re.escape(hapi_server.base_url)
    next_link = re.compile(
        rf"^{base}\?_getpages=[0-9a-f-]{{36}}&_getpagesoffset=(\d+)&_count=2"
        r"&_pretty=true&_bundletype=searchset$")

    page = hapi.get("Patient", params={"_count": "2"}).json()
    seen: list[str] = []
    offsets: list[str] = []
    while True:
        assert page["total"] == 5
        seen += [e["resource"]["id"] for e in page["entry"]]
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            break
        match = next_link.match(following[0])
        assert match, following[0]
        offsets.append(match.group(1))
        page = hapi.get(following[0]).json()

    assert offsets == ["2", "4"]
    assert sorted(seen) == sorted(created)


def test_hapi_says_an_unknown_paging_search_has_expired(hapi: httpx.Client) -> None:
    response = hapi.get("", params={"_getpages": "nope", "_getpagesoffset": "2"})

    assert response.status_code == 410
    assert response.json()["issue"][0]["diagnostics"] == (
        'HAPI-0417: Search ID "nope" does not exist and may have expired')


def test_hapi_numbers_created_resources_and_wants_a_letter_in_client_ids(
        hapi: httpx.Client) -> None:
    created = hapi.post("Patient", json=patient(id="mine"))
    numeric = hapi.put("Patient/123", json=patient(id="123"))
    lettered = hapi.put("Patient/abc123", json=patient(id="abc123"))

    assert created.status_code == 201
    assert re.fullmatch(r"\d+", created.json()["id"])
    assert numeric.status_code == 400
    assert numeric.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing",
                   "diagnostics": "HAPI-0960: Can not create resource with ID[123], no resource "
                                  "with this ID exists and clients may only assign IDs which "
                                  "contain at least one non-numeric character"}],
    }
    assert lettered.status_code == 201


def test_hapi_answers_412_when_a_conditional_create_matches_two(hapi: httpx.Client) -> None:
    twin = patient(identifier=[{"system": "urn:mrn", "value": "42"}])
    hapi.post("Patient", json=twin)
    hapi.post("Patient", json=twin)

    response = hapi.post("Patient", json=twin,
                         headers={"If-None-Exist": "identifier=urn:mrn|42"})

    assert response.status_code == 412
    assert response.json()["issue"][0]["diagnostics"] == (
        'HAPI-0958: Failed to CREATE resource with match URL "Patient?identifier=urn:mrn|42" '
        "because this search matched 2 resources")


def test_hapi_errors_carry_diagnostics(hapi: httpx.Client) -> None:
    unknown = hapi.get("Patient", params={"foo": "bar"})
    missing = hapi.get("Patient/999")

    assert unknown.status_code == 400
    assert unknown.json()["issue"][0]["diagnostics"].startswith(
        'HAPI-0524: Unknown search parameter "foo" for resource type "Patient". '
        "Valid search parameters for this search are: [")
    assert missing.status_code == 404
    assert missing.json()["issue"] == [{
        "severity": "error", "code": "processing",
        "diagnostics": "HAPI-2001: Resource Patient/999 is not known"}]


def test_hapi_entries_answer_with_their_own_status(hapi: httpx.Client) -> None:
    entries = [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/999"}},
    ]

    response = hapi.post("", json=bundle("batch", entries))

    assert response.status_code == 200
    assert statuses(response) == ["201", "404"]
    assert response.json()["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"] == (
        "HAPI-2001: Resource Patient/999 is not known")


# --- lenient (the default for now) stays as kind as before ----------------------------


def test_the_lenient_profile_keeps_todays_behaviour() -> None:
    with fhir_test_server(profile="lenient") as server, \
            httpx.Client(base_url=server.base_url, headers=FHIR_JSON) as client:
        put = client.put("Patient/pat-maria-lopez", json=patient(id="pat-maria-lopez"))
        entries = [create_entry(f"k{i}", conditional=True) for i in range(9)]
        transaction = client.post("", json=bundle("transaction", entries))
        search = client.get("Patient")

        assert put.status_code == 201
        assert transaction.status_code == 200
        assert search.json()["total"] == 1
        assert "RateLimit" not in search.headers
