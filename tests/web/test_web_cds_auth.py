"""CDS Hooks 2.0 "Trusting CDS Clients": the EHR's signed bearer JWT on every call.

Each refusal carries a precise reason (for the log) while the caller only learns that the
request is not authenticated.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import jwt
import pytest
import respx
from web_fakes import NOW, Clock, Signer, run, settings, signer

from previsit.web.cds_auth import CdsAuthenticator, CdsAuthError, FhirAuthorization
from previsit.web.settings import WebSettings
from previsit.web.store import Store

EHR = "https://ehr.example"
EHR_JWKS = "https://ehr.example/.well-known/cds-jwks.json"
SERVICE = "https://previsit.clinic.example/cds-services/previsit-due"


class CdsClientFake:
    """An EHR calling previsit's CDS services, publishing its JWKS."""

    def __init__(self) -> None:
        self.router = respx.MockRouter(assert_all_called=False)
        self.es384 = signer("ES384", "ehr-cds-1")
        self.keys = [self.es384.jwk(), signer("RS384", "ehr-cds-rsa").jwk()]
        self.jwks = self.router.get(EHR_JWKS).mock(
            side_effect=lambda request: httpx.Response(200, json={"keys": self.keys}))

    def token(self, signer_: Signer | None = None, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
        body: dict[str, Any] = {"iss": EHR, "aud": SERVICE, "iat": int(NOW),
                                "exp": int(NOW) + 300, "jti": str(uuid.uuid4()),
                                "tenant": "clinic-1"}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return (signer_ or self.es384).sign(body, **(header or {}))


@pytest.fixture
def ehr_client() -> CdsClientFake:
    return CdsClientFake()


def authenticator(fake: CdsClientFake, store: Store, clock: Clock,
                  web: WebSettings | None = None) -> CdsAuthenticator:
    web = web or settings(cds_issuers=[{"iss": EHR, "jwks_url": EHR_JWKS}])
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake.router.handler))
    return CdsAuthenticator(web, store, http, clock=clock)


def refused(auth: CdsAuthenticator, header: str | None, url: str = SERVICE) -> str:
    with pytest.raises(CdsAuthError) as caught:
        run(auth.authenticate(header, url))
    assert caught.value.public_message == "the request is not authenticated"
    return caught.value.reason


def test_a_valid_call_is_accepted(ehr_client: CdsClientFake, store: Store,
                                  clock: Clock) -> None:
    auth = authenticator(ehr_client, store, clock)
    client = run(auth.authenticate(f"Bearer {ehr_client.token(jti='jti-1')}", SERVICE))
    assert (client.issuer, client.kid, client.alg, client.jti, client.tenant) == \
        (EHR, "ehr-cds-1", "ES384", "jti-1", "clinic-1")
    rsa_client = run(auth.authenticate(
        f"bearer {ehr_client.token(signer('RS384', 'ehr-cds-rsa'))}", SERVICE))
    assert rsa_client.alg == "RS384"
    # an aud given as a list, and an iss spelt with a trailing slash
    listed = ehr_client.token(aud=[SERVICE], iss=EHR + "/")
    assert run(auth.authenticate(f"Bearer {listed}", SERVICE)).issuer == EHR
    assert ehr_client.jwks.call_count == 1  # cached


def test_a_replayed_jti_is_refused(ehr_client: CdsClientFake, store: Store,
                                   clock: Clock) -> None:
    auth = authenticator(ehr_client, store, clock)
    token = ehr_client.token(jti="jti-once")
    run(auth.authenticate(f"Bearer {token}", SERVICE))
    assert "jti was already used" in refused(auth, f"Bearer {token}")
    # also when re-signed: the jti, not the bytes, is what may not repeat
    again = ehr_client.token(jti="jti-once", iat=int(NOW) + 1)
    assert "jti was already used" in refused(auth, f"Bearer {again}")


def _alg_none(fake: CdsClientFake) -> str:
    claims = jwt.decode(fake.token(), options={"verify_signature": False})
    return jwt.encode(claims, None, algorithm="none", headers={"kid": "ehr-cds-1"})


def _hs384(fake: CdsClientFake) -> str:
    claims = jwt.decode(fake.token(), options={"verify_signature": False})
    return jwt.encode(claims, "a shared secret that is long enough for HS384 use!!",
                      algorithm="HS384", headers={"kid": "ehr-cds-1"})


def _bad_signature(fake: CdsClientFake) -> str:
    header, _, signature = fake.token().split(".")
    payload = fake.token(jti="another").split(".")[1]
    return f"{header}.{payload}.{signature}"


def _unlisted_es256(fake: CdsClientFake) -> str:
    es256 = signer("ES256", "ehr-cds-256")
    fake.keys.append(es256.jwk())
    return fake.token(es256)


@pytest.mark.parametrize(("build", "reason"), [
    (lambda fake: fake.token(aud="https://previsit.clinic.example/cds-services/other"),
     "aud is not " + SERVICE),
    (lambda fake: fake.token(aud=SERVICE + "/"), "aud is not " + SERVICE),
    (lambda fake: fake.token(iat=int(NOW) - 900, exp=int(NOW) - 600), "expired 600 s ago"),
    (lambda fake: fake.token(iat=int(NOW) + 300, exp=int(NOW) + 600),
     "issued 300 s in the future"),
    (lambda fake: fake.token(iss="https://unknown-ehr.example"),
     "iss 'https://unknown-ehr.example' is not a trusted CDS client"),
    (lambda fake: fake.token(iss=None), "iss None is not a trusted CDS client"),
    (_alg_none, "alg 'none' is not allowed"),
    (_hs384, "alg 'HS384' is not allowed"),
    (_bad_signature, "signature does not verify"),
    (_unlisted_es256, "alg 'ES256' is not allowed"),
    (lambda fake: fake.token(signer("ES384", "not-published")), "no key with kid"),
    (lambda fake: fake.token(header={"kid": None}), "has no kid"),
    (lambda fake: fake.token(header={"jku": "https://attacker.example/jwks"}),
     "jku 'https://attacker.example/jwks' is not the JWKS URL"),
    (lambda fake: fake.token(jti=None), "has no jti claim"),
    (lambda fake: fake.token(exp=int(NOW) + 7200), "valid for 7200 s, more than the 3600"),
    (lambda fake: fake.token(header={"typ": "at+jwt"}), "typ is 'at+jwt'"),
])
def test_untrustworthy_calls_are_refused_with_a_precise_reason(
        ehr_client: CdsClientFake, store: Store, clock: Clock, build: Any,
        reason: str) -> None:
    auth = authenticator(ehr_client, store, clock)
    assert reason in refused(auth, f"Bearer {build(ehr_client)}")


@pytest.mark.parametrize(("header", "reason"), [
    (None, "no bearer token"),
    ("", "no bearer token"),
    ("Basic dXNlcjpwYXNz", "no bearer token"),
    ("Bearer ", "no bearer token"),
    ("Bearer not.a.jwt", "not a JWS"),
])
def test_missing_or_malformed_authorization_is_refused(
        ehr_client: CdsClientFake, store: Store, clock: Clock, header: str | None,
        reason: str) -> None:
    assert reason in refused(authenticator(ehr_client, store, clock), header)


def test_a_jku_naming_the_configured_jwks_is_accepted(ehr_client: CdsClientFake,
                                                      store: Store, clock: Clock) -> None:
    auth = authenticator(ehr_client, store, clock)
    token = ehr_client.token(header={"jku": EHR_JWKS})
    assert run(auth.authenticate(f"Bearer {token}", SERVICE)).issuer == EHR


def test_the_allow_list_of_algorithms_is_configurable(ehr_client: CdsClientFake,
                                                      store: Store, clock: Clock) -> None:
    web = settings(cds_issuers=[{"iss": EHR, "jwks_url": EHR_JWKS}],
                   cds_algorithms=["ES384", "ES256"])
    auth = authenticator(ehr_client, store, clock, web)
    assert run(auth.authenticate(f"Bearer {_unlisted_es256(ehr_client)}", SERVICE)).alg == \
        "ES256"
    rs384 = ehr_client.token(signer("RS384", "ehr-cds-rsa"))
    assert "alg 'RS384' is not allowed" in refused(auth, f"Bearer {rs384}")
    with pytest.raises(ValueError):
        settings(cds_algorithms=["HS256"])
    with pytest.raises(ValueError):
        settings(cds_algorithms=["none"])


def test_refusals_are_logged_with_the_reason(ehr_client: CdsClientFake, store: Store,
                                             clock: Clock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    auth = authenticator(ehr_client, store, clock)
    token = ehr_client.token(aud="https://elsewhere.example/cds-services/x")
    refused(auth, f"Bearer {token}")
    assert f"CDS Hooks call to {SERVICE} refused: https://ehr.example: aud is not" in \
        caplog.text
    assert token not in caplog.text


def test_jwks_must_be_https_and_is_fetched_again_only_for_unknown_kids(
        ehr_client: CdsClientFake, store: Store, clock: Clock) -> None:
    with pytest.raises(ValueError, match="not https"):
        settings(cds_issuers=[{"iss": EHR, "jwks_url": "http://ehr.example/jwks"}])
    assert settings(cds_issuers=[{"iss": "http://127.0.0.1:9000",
                                  "jwks_url": "http://127.0.0.1:9000/jwks"}])
    auth = authenticator(ehr_client, store, clock)
    forged = ehr_client.token(signer("ES384", "made-up"))
    for _ in range(5):
        refused(auth, f"Bearer {forged}")
    assert ehr_client.jwks.call_count == 1  # no fetch per forged token
    clock.now += 61
    new_key = signer("ES384", "rotated")
    ehr_client.keys.append(new_key.jwk())
    rotated = ehr_client.token(new_key, iat=int(clock.now), exp=int(clock.now) + 300)
    assert run(auth.authenticate(f"Bearer {rotated}", SERVICE)).kid == "rotated"
    assert ehr_client.jwks.call_count == 2


def test_fhir_authorization_is_parsed_and_its_token_hidden() -> None:
    parsed = FhirAuthorization.parse({
        "access_token": "SECRET-FHIR-TOKEN", "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Patient.rs patient/Observation.rs", "subject": "previsit-cds",
        "patient": "pat-1"})
    assert (parsed.scope, parsed.subject, parsed.patient, parsed.expires_in) == \
        ("patient/Patient.rs patient/Observation.rs", "previsit-cds", "pat-1", 300)
    assert parsed.access_token.reveal() == "SECRET-FHIR-TOKEN"
    assert "SECRET" not in repr(parsed)
    with pytest.raises(CdsAuthError, match="fhirAuthorization lacks"):
        FhirAuthorization.parse({"access_token": "x", "token_type": "MAC", "expires_in": 1,
                                 "scope": "s", "subject": "c"})
