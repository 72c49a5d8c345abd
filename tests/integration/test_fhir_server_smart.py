"""The test server as a SMART authorization server (the "EHR simulator"), exercised with httpx.

EHR and standalone launch with PKCE, single-use codes, refresh tokens, the id token, backend
services with private_key_jwt, and SMART scopes enforced on every FHIR request and Bundle entry
with Medplum's quirks (scope echoed as asked, v1 .write granting nothing, a wildcard read scope
overriding a type-specific write scope, patient/ scopes not confined to the launch patient).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhirserver import FhirTestServer, fhir_test_server
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

pytestmark = pytest.mark.integration

APP = "previsit-app"
CALLBACK = "http://127.0.0.1:9/callback"
LAUNCH_URL = "http://127.0.0.1:9/launch"
CONFIDENTIAL = "conf-app"
CONFIDENTIAL_SECRET = "s3cret-conf"
NIGHTLY = "nightly"
SECRET_JOB = "secret-job"
SECRET_JOB_SECRET = "s3cret-job"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
FORBIDDEN = {
    "resourceType": "OperationOutcome", "id": "forbidden",
    "issue": [{"severity": "error", "code": "forbidden", "details": {"text": "Forbidden"}}],
}


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        ec_jwk = ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return {"keys": [{**rsa_jwk, "kid": "rsa-1", "alg": "RS384"},
                         {**ec_jwk, "kid": "ec-1", "alg": "ES384"}]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ec.generate_private_key(ec.SECP384R1()))


def registration(keys: Keys) -> dict[str, Any]:
    return {
        "clients": [
            {"client_id": APP, "kind": "public", "redirect_uris": [CALLBACK],
             "launch_uri": LAUNCH_URL, "name": "Previsit"},
            {"client_id": CONFIDENTIAL, "kind": "confidential-symmetric",
             "secret": CONFIDENTIAL_SECRET, "redirect_uris": [CALLBACK]},
            {"client_id": NIGHTLY, "kind": "backend-services", "jwks": keys.jwks()},
            {"client_id": SECRET_JOB, "kind": "backend-services", "secret": SECRET_JOB_SECRET},
        ],
        "users": [{"id": "okafor", "fhirUser": "Practitioner/prac-okafor", "name": "Dr. Okafor"},
                  {"id": "reyes", "fhirUser": "Practitioner/prac-reyes", "name": "Dr. Reyes"}],
    }


@pytest.fixture(scope="module")
def ehr(keys: Keys) -> Iterator[FhirTestServer]:
    with fhir_test_server(profile="medplum", clients=registration(keys)) as server:
        yield server


@pytest.fixture
def fresh(ehr: FhirTestServer) -> FhirTestServer:
    ehr.admin.reset(data=True, tokens=True)
    return ehr


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


# --- the OAuth dance, step by step --------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorize_params(server: FhirTestServer, scope: str, challenge: str,
                     **extra: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": APP, "redirect_uri": CALLBACK,
            "scope": scope, "state": "st-1", "aud": server.base_url,
            "code_challenge": challenge, "code_challenge_method": "S256", **extra}


def authorized_code(server: FhirTestServer, browser: httpx.Client, scope: str,
                    challenge: str, **extra: str) -> str:
    """Pre-authorize as okafor and get a code without the page."""
    server.admin.preauthorize("okafor", extra.pop("pick_patient", None))
    answer = browser.get(f"{server.root_url}/oauth2/authorize",
                         params=authorize_params(server, scope, challenge, **extra))
    assert answer.status_code == 302, answer.text
    params = query_of(answer.headers["Location"])
    assert params["state"] == "st-1"
    return params["code"]


def exchange(server: FhirTestServer, code: str, verifier: str, *,
             redirect_uri: str = CALLBACK, client_id: str = APP,
             auth: tuple[str, str] | None = None) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier}
    if auth is None:
        form["client_id"] = client_id
    return httpx.post(f"{server.root_url}/oauth2/token", data=form, auth=auth)


def app_token(server: FhirTestServer, browser: httpx.Client, scope: str) -> dict[str, Any]:
    verifier, challenge = pkce()
    answer = exchange(server, authorized_code(server, browser, scope, challenge), verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def assertion(server: FhirTestServer, key: Any, *, alg: str = "RS384", kid: str = "rsa-1",
              **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": NIGHTLY, "sub": NIGHTLY, "aud": f"{server.root_url}/oauth2/token",
               "exp": now + 240, "jti": str(uuid.uuid4()), **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def backend_token(server: FhirTestServer, signed: str, scope: str) -> httpx.Response:
    return httpx.post(f"{server.root_url}/oauth2/token", data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **FHIR_JSON}


def system_token(server: FhirTestServer, keys: Keys, scope: str) -> str:
    answer = backend_token(server, assertion(server, keys.rsa), scope)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


# --- discovery ----------------------------------------------------------------------------------


def test_discovery_describes_the_authorization_server(ehr: FhirTestServer) -> None:
    doc = httpx.get(f"{ehr.base_url}/.well-known/smart-configuration").json()

    assert doc["issuer"] == f"{ehr.root_url}/"
    assert doc["authorization_endpoint"] == f"{ehr.root_url}/oauth2/authorize"
    assert doc["token_endpoint"] == f"{ehr.root_url}/oauth2/token"
    assert doc["jwks_uri"] == f"{ehr.root_url}/.well-known/jwks.json"
    assert doc["introspection_endpoint"] == f"{ehr.root_url}/oauth2/introspect"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt",
                                                           "client_secret_basic"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]  # Medplum says so...
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
            "context-standalone-patient", "sso-openid-connect", "permission-v1",
            "permission-v2", "permission-offline", "permission-patient",
            "permission-user"} <= set(doc["capabilities"])


def test_metadata_is_public_and_the_api_needs_a_token(ehr: FhirTestServer) -> None:
    assert httpx.get(f"{ehr.base_url}/metadata").status_code == 200
    refused = httpx.get(f"{ehr.base_url}/Patient")
    assert refused.status_code == 401
    assert refused.json()["id"] == "unauthorized"


# --- EHR launch and the authorization code flow -------------------------------------------------


def test_ehr_launch_through_the_page_to_tokens_and_a_verifiable_id_token(
        fresh: FhirTestServer, browser: httpx.Client) -> None:
    launched = browser.get(f"{fresh.root_url}/ehr/launch", params={
        "client_id": APP, "patient": "pat-1", "encounter": "enc-1", "appointment": "appt-1",
        "user": "okafor"})
    assert launched.status_code == 302
    location = launched.headers["Location"]
    assert location.startswith(f"{LAUNCH_URL}?")
    assert query_of(location)["iss"] == f"{fresh.base_url}/"  # Medplum: trailing slash
    launch = query_of(location)["launch"]

    verifier, challenge = pkce()
    scope = "launch openid fhirUser patient/*.rs offline_access"
    page = browser.get(f"{fresh.root_url}/oauth2/authorize", params=authorize_params(
        fresh, scope, challenge, launch=launch, nonce="n-0S6"))
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    pending = re.search(r'name="pending" value="([^"]+)"', page.text)
    assert pending and 'value="okafor" checked' in page.text

    decided = browser.post(f"{fresh.root_url}/oauth2/authorize/decision", data={
        "pending": pending.group(1), "user": "okafor", "decision": "approve"})
    assert decided.status_code == 302
    back = query_of(decided.headers["Location"])
    assert back["state"] == "st-1"

    answer = exchange(fresh, back["code"], verifier)

    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["scope"] == scope
    assert tokens["patient"] == "pat-1"
    assert tokens["encounter"] == "enc-1"
    assert tokens["fhirContext"] == [{"reference": "Appointment/appt-1"}]
    assert "refresh_token" in tokens
    assert "fhirUser" not in tokens
    jwks = httpx.get(f"{fresh.root_url}/.well-known/jwks.json").json()
    header = jwt.get_unverified_header(tokens["id_token"])
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(tokens["id_token"], jwt.PyJWK(key).key, algorithms=["ES256"],
                        audience=APP, issuer=f"{fresh.root_url}/")
    assert header["alg"] == "ES256"
    assert claims["fhirUser"] == "Practitioner/prac-okafor"
    assert claims["sub"] == "okafor"
    assert claims["nonce"] == "n-0S6"
    assert httpx.get(f"{fresh.base_url}/Patient",
                     headers=bearer(tokens["access_token"])).status_code == 200


def test_standalone_launch_picks_a_patient(fresh: FhirTestServer,
                                           browser: httpx.Client) -> None:
    created = httpx.post(f"{fresh.base_url}/Patient", headers=bearer(str(fresh.admin_token)),
                         json={"resourceType": "Patient", "name": [{"family": "Lopez"}]})
    patient_id = created.json()["id"]
    verifier, challenge = pkce()
    page = browser.get(f"{fresh.root_url}/oauth2/authorize",
                       params=authorize_params(fresh, "launch/patient patient/*.rs", challenge))
    assert f'<option value="{patient_id}">Lopez' in page.text

    code = authorized_code(fresh, browser, "launch/patient patient/*.rs", challenge,
                           pick_patient=patient_id)
    answer = exchange(fresh, code, verifier)

    assert answer.json()["patient"] == patient_id
    assert "refresh_token" not in answer.json()


def test_a_wrong_verifier_is_refused(fresh: FhirTestServer, browser: httpx.Client) -> None:
    _, challenge = pkce()
    code = authorized_code(fresh, browser, "patient/*.rs", challenge)

    answer = exchange(fresh, code, "not-the-verifier-" + "x" * 40)

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_a_replayed_code_is_refused_and_revokes_its_tokens(fresh: FhirTestServer,
                                                           browser: httpx.Client) -> None:
    verifier, challenge = pkce()
    code = authorized_code(fresh, browser, "patient/*.rs offline_access", challenge)
    first = exchange(fresh, code, verifier).json()
    assert httpx.get(f"{fresh.base_url}/Patient",
                     headers=bearer(first["access_token"])).status_code == 200

    replay = exchange(fresh, code, verifier)

    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert httpx.get(f"{fresh.base_url}/Patient",
                     headers=bearer(first["access_token"])).status_code == 401
    refreshed = httpx.post(f"{fresh.root_url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"],
        "client_id": APP})
    assert refreshed.json()["error"] == "invalid_grant"


def test_the_code_is_bound_to_its_redirect_uri(fresh: FhirTestServer,
                                               browser: httpx.Client) -> None:
    verifier, challenge = pkce()
    code = authorized_code(fresh, browser, "patient/*.rs", challenge)

    answer = exchange(fresh, code, verifier, redirect_uri="http://127.0.0.1:9/other")

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_an_unregistered_redirect_uri_or_unknown_client_gets_an_error_page(
        fresh: FhirTestServer, browser: httpx.Client) -> None:
    _, challenge = pkce()
    params = authorize_params(fresh, "patient/*.rs", challenge)

    wrong_uri = browser.get(f"{fresh.root_url}/oauth2/authorize",
                            params={**params, "redirect_uri": "http://evil.example/cb"})
    unknown = browser.get(f"{fresh.root_url}/oauth2/authorize",
                          params={**params, "client_id": "who"})

    assert (wrong_uri.status_code, unknown.status_code) == (400, 400)
    assert "Location" not in wrong_uri.headers
    assert "is not registered" in wrong_uri.text
    assert "Unknown client_id" in unknown.text


@pytest.mark.parametrize(("change", "error"), [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"aud": "http://elsewhere.example/fhir"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"launch": "no-such-launch"}, "invalid_request"),
])
def test_authorization_errors_go_back_to_the_app(fresh: FhirTestServer, browser: httpx.Client,
                                                 change: dict[str, str], error: str) -> None:
    _, challenge = pkce()
    params = {**authorize_params(fresh, "patient/*.rs", challenge), **change}

    answer = browser.get(f"{fresh.root_url}/oauth2/authorize", params=params)

    assert answer.status_code == 302
    back = query_of(answer.headers["Location"])
    assert answer.headers["Location"].startswith(CALLBACK)
    assert (back["error"], back["state"]) == (error, "st-1")


def test_aud_with_a_trailing_slash_is_the_same_server(fresh: FhirTestServer,
                                                      browser: httpx.Client) -> None:
    _, challenge = pkce()

    code = authorized_code(fresh, browser, "patient/*.rs", challenge, aud=f"{fresh.base_url}/")

    assert code


def test_a_denied_authorization_returns_access_denied(fresh: FhirTestServer,
                                                      browser: httpx.Client) -> None:
    fresh.admin.preauthorize(deny=True)
    _, challenge = pkce()

    answer = browser.get(f"{fresh.root_url}/oauth2/authorize",
                         params=authorize_params(fresh, "patient/*.rs", challenge))

    assert query_of(answer.headers["Location"])["error"] == "access_denied"


def test_refresh_tokens_only_for_offline_or_online_access_and_they_rotate(
        fresh: FhirTestServer, browser: httpx.Client) -> None:
    without = app_token(fresh, browser, "openid fhirUser patient/*.rs")
    online = app_token(fresh, browser, "patient/*.rs online_access")

    refreshed = httpx.post(f"{fresh.root_url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": online["refresh_token"],
        "client_id": APP})
    reused = httpx.post(f"{fresh.root_url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": online["refresh_token"],
        "client_id": APP})

    assert "refresh_token" not in without
    assert refreshed.status_code == 200
    assert refreshed.json()["scope"] == "patient/*.rs online_access"
    assert refreshed.json()["refresh_token"] != online["refresh_token"]
    assert reused.json()["error"] == "invalid_grant"


def test_a_confidential_client_must_authenticate(fresh: FhirTestServer,
                                                 browser: httpx.Client) -> None:
    verifier, challenge = pkce()
    fresh.admin.preauthorize("okafor")
    answer = browser.get(f"{fresh.root_url}/oauth2/authorize", params={
        **authorize_params(fresh, "user/*.rs", challenge), "client_id": CONFIDENTIAL})
    code = query_of(answer.headers["Location"])["code"]

    anonymous = exchange(fresh, code, verifier, client_id=CONFIDENTIAL)
    wrong = exchange(fresh, code, verifier, auth=(CONFIDENTIAL, "wrong"))
    right = exchange(fresh, code, verifier, auth=(CONFIDENTIAL, CONFIDENTIAL_SECRET))

    assert (anonymous.status_code, anonymous.json()["error"]) == (400, "invalid_client")
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert right.status_code == 200


def test_lax_client_auth_lets_a_confidential_client_through_unproven(keys: Keys) -> None:
    with fhir_test_server(clients=registration(keys), lax_client_auth=True) as server, \
            httpx.Client(follow_redirects=False) as browser:
        verifier, challenge = pkce()
        server.admin.preauthorize("okafor")
        answer = browser.get(f"{server.root_url}/oauth2/authorize", params={
            **authorize_params(server, "user/*.rs", challenge), "client_id": CONFIDENTIAL})

        exchanged = exchange(server, query_of(answer.headers["Location"])["code"], verifier,
                             client_id=CONFIDENTIAL)

        assert exchanged.status_code == 200


# --- backend services ---------------------------------------------------------------------------


def test_backend_services_rs384_and_es384_assertions_get_the_scope_as_asked(
        fresh: FhirTestServer, keys: Keys) -> None:
    scope = "system/Patient.rs system/Nonsense.cruds"  # unvalidated: echoed as asked

    with_rsa = backend_token(fresh, assertion(fresh, keys.rsa), scope)
    with_ec = backend_token(fresh, assertion(fresh, keys.ec, alg="ES384", kid="ec-1"), scope)

    assert with_rsa.status_code == 200, with_rsa.text
    assert with_rsa.json()["scope"] == scope
    assert with_rsa.json()["token_type"] == "Bearer"
    assert "refresh_token" not in with_rsa.json()
    assert with_ec.status_code == 200, with_ec.text
    assert fresh.admin.stats()["tokens"]["by_grant"] == {"client_credentials": 2}


@pytest.mark.parametrize("problem", ["aud", "exp", "kid", "alg", "sub"])
def test_a_bad_client_assertion_is_refused(fresh: FhirTestServer, keys: Keys,
                                           problem: str) -> None:
    signed = {
        "aud": lambda: assertion(fresh, keys.rsa, aud=f"{fresh.root_url}/token"),
        "exp": lambda: assertion(fresh, keys.rsa, exp=int(time.time()) + 600),
        "kid": lambda: assertion(fresh, keys.rsa, kid="rsa-2"),
        "alg": lambda: assertion(fresh, keys.rsa, alg="RS256"),
        "sub": lambda: assertion(fresh, keys.rsa, sub="someone-else"),
    }[problem]()

    answer = backend_token(fresh, signed, "system/*.rs")

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client"


def test_a_replayed_assertion_jti_is_refused(fresh: FhirTestServer, keys: Keys) -> None:
    signed = assertion(fresh, keys.rsa)

    first = backend_token(fresh, signed, "system/*.rs")
    second = backend_token(fresh, signed, "system/*.rs")

    assert first.status_code == 200
    assert (second.status_code, second.json()["error"]) == (400, "invalid_client")


def test_backend_services_with_client_secret_basic(fresh: FhirTestServer) -> None:
    answer = httpx.post(f"{fresh.root_url}/oauth2/token",
                        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
                        auth=(SECRET_JOB, SECRET_JOB_SECRET))

    assert answer.status_code == 200


def test_introspection(fresh: FhirTestServer, keys: Keys) -> None:
    token = system_token(fresh, keys, "system/*.rs")

    active = httpx.post(f"{fresh.root_url}/oauth2/introspect", data={"token": token},
                        auth=(SECRET_JOB, SECRET_JOB_SECRET)).json()
    unknown = httpx.post(f"{fresh.root_url}/oauth2/introspect", data={"token": "nope"},
                         headers={"Authorization": f"Bearer {token}"}).json()

    assert (active["active"], active["scope"], active["client_id"]) == (True, "system/*.rs",
                                                                        NIGHTLY)
    assert unknown == {"active": False}


# --- scopes on the FHIR API ---------------------------------------------------------------------


def service_request() -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
            "subject": {"reference": "Patient/someone"}}


def test_v1_write_grants_nothing_so_a_post_is_forbidden(fresh: FhirTestServer,
                                                        keys: Keys) -> None:
    token = system_token(fresh, keys, "system/*.read system/ServiceRequest.write")

    read = httpx.get(f"{fresh.base_url}/Patient", headers=bearer(token))
    write = httpx.post(f"{fresh.base_url}/ServiceRequest", headers=bearer(token),
                       json=service_request())

    assert read.status_code == 200
    assert write.status_code == 403
    assert write.json() == FORBIDDEN
    alone = system_token(fresh, keys, "system/ServiceRequest.write")
    assert httpx.post(f"{fresh.base_url}/ServiceRequest", headers=bearer(alone),
                      json=service_request()).status_code == 403


def test_v2_create_scope_with_explicit_read_types_may_post(fresh: FhirTestServer,
                                                           keys: Keys) -> None:
    token = system_token(fresh, keys, "system/Patient.rs system/ServiceRequest.cu")

    write = httpx.post(f"{fresh.base_url}/ServiceRequest", headers=bearer(token),
                       json=service_request())
    other = httpx.get(f"{fresh.base_url}/Observation", headers=bearer(token))

    assert write.status_code == 201
    assert other.status_code == 403


def test_for_one_type_only_its_first_scope_counts(fresh: FhirTestServer, keys: Keys) -> None:
    # Medplum looks up one scope per type: read and write for a type go in one scope.
    split = system_token(fresh, keys, "system/ServiceRequest.rs system/ServiceRequest.cu")
    merged = system_token(fresh, keys, "system/ServiceRequest.crus")

    refused = httpx.post(f"{fresh.base_url}/ServiceRequest", headers=bearer(split),
                         json=service_request())
    searched = httpx.get(f"{fresh.base_url}/ServiceRequest", headers=bearer(split))
    written = httpx.post(f"{fresh.base_url}/ServiceRequest", headers=bearer(merged),
                         json=service_request())

    assert (refused.status_code, searched.status_code, written.status_code) == (403, 200, 201)


def test_a_wildcard_read_scope_overrides_a_type_specific_write_scope(
        fresh: FhirTestServer, browser: httpx.Client) -> None:
    token = app_token(fresh, browser, "patient/*.rs patient/ServiceRequest.cu")["access_token"]

    write = httpx.post(f"{fresh.base_url}/ServiceRequest", headers=bearer(token),
                       json=service_request())

    assert write.status_code == 403
    assert fresh.admin.stats()["scopes_refused"]["details"][-1] == {
        "client_id": APP, "interaction": "create", "resource_type": "ServiceRequest",
        "in_batch": False, "scope": "patient/*.rs patient/ServiceRequest.cu"}


def test_patient_scopes_are_not_confined_to_the_launch_patient(
        fresh: FhirTestServer, browser: httpx.Client) -> None:
    admin = bearer(str(fresh.admin_token))
    mine = httpx.post(f"{fresh.base_url}/Patient", headers=admin,
                      json={"resourceType": "Patient"}).json()["id"]
    other = httpx.post(f"{fresh.base_url}/Patient", headers=admin,
                       json={"resourceType": "Patient"}).json()["id"]
    verifier, challenge = pkce()
    code = authorized_code(fresh, browser, "launch/patient patient/*.rs", challenge,
                           pick_patient=mine)
    token = exchange(fresh, code, verifier).json()["access_token"]

    answer = httpx.get(f"{fresh.base_url}/Patient/{other}", headers=bearer(token))

    assert answer.status_code == 200  # Medplum quirk: the app must confine itself


def test_scopes_are_checked_for_each_entry_of_a_transaction_and_a_batch(
        fresh: FhirTestServer, keys: Keys) -> None:
    token = system_token(fresh, keys, "system/Patient.rs system/ServiceRequest.cu")
    observation = {"resourceType": "Observation", "status": "final",
                   "code": {"text": "weight"}}
    entries = [{"resource": service_request(), "request": {"method": "POST",
                                                           "url": "ServiceRequest"}},
               {"resource": observation, "request": {"method": "POST", "url": "Observation"}}]

    transaction = httpx.post(fresh.base_url, headers=bearer(token), json={
        "resourceType": "Bundle", "type": "transaction", "entry": entries})
    batch = httpx.post(fresh.base_url, headers=bearer(token), json={
        "resourceType": "Bundle", "type": "batch", "entry": entries})

    assert transaction.status_code == 403
    assert transaction.json() == FORBIDDEN
    assert batch.status_code == 200
    assert [e["response"]["status"] for e in batch.json()["entry"]] == ["201", "403"]
    search = httpx.get(f"{fresh.base_url}/ServiceRequest", params={"_total": "accurate"},
                       headers=bearer(token))
    assert search.status_code == 403  # .cu: neither read nor search
    counted = httpx.get(f"{fresh.base_url}/ServiceRequest", params={"_total": "accurate"},
                        headers=bearer(str(fresh.admin_token))).json()["total"]
    assert counted == 1  # the batch's, not the rolled-back transaction's


def test_an_expired_token_is_refused(keys: Keys) -> None:
    with fhir_test_server(clients=registration(keys), token_ttl_s=1) as server:
        token = system_token(server, keys, "system/*.rs")
        assert httpx.get(f"{server.base_url}/Patient", headers=bearer(token)).status_code == 200

        time.sleep(1.1)

        assert httpx.get(f"{server.base_url}/Patient", headers=bearer(token)).status_code == 401


def test_the_oauth_endpoints_are_rate_limited_per_address(keys: Keys) -> None:
    with fhir_test_server(clients=registration(keys), auth_rate_limit=3) as server:
        answers = [httpx.post(f"{server.root_url}/oauth2/token",
                              data={"grant_type": "client_credentials"}) for _ in range(4)]

        assert [a.status_code for a in answers] == [400, 400, 400, 429]
        assert server.admin.stats()["auth"]["rate_limited"] == 1
