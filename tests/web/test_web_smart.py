"""SMART App Launch client against a fake EHR shaped like production Medplum (respx).

Spec: hl7.org/fhir/smart-app-launch/app-launch.html; the EHR fakes DESIGN.md's observations
of Medplum: iss with a trailing slash, discovery saying RS256 while id tokens are ES256,
fhirUser relative and only in the id token, the id token's iss the server root.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from web_fakes import (
    AUTHORIZE,
    CLIENT_ID,
    ISS,
    JWKS,
    NOW,
    PUBLIC_URL,
    TOKEN,
    Clock,
    FakeEhr,
    run,
    settings,
    signer,
)

from previsit.keys import generate_key_pair
from previsit.web.settings import WebSettings
from previsit.web.smart import (
    AuthorizationDenied,
    DiscoveryError,
    IdTokenError,
    SessionExpiredError,
    SmartApp,
    SmartConfigError,
    SmartLaunchError,
    UnknownIssuerError,
    code_challenge,
    requested_scope,
    resolve_fhir_user,
)
from previsit.web.store import LaunchStateError, Session, Store

REDIRECT = f"{PUBLIC_URL}/callback"


def app_for(ehr: FakeEhr, store: Store, clock: Clock, web: WebSettings | None = None,
            env: dict[str, str] | None = None) -> tuple[SmartApp, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(ehr.router.handler))
    return SmartApp(web or settings(read_types=["Patient", "Observation"]), store, http,
                    env=env or {}, clock=clock), http


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


async def launch_and_return(app: SmartApp, ehr: FakeEhr, *, iss: str = ISS,
                            callback: dict[str, str] | None = None,
                            binder: str | None = "cookie") -> tuple[str, Session]:
    """EHR launch, then the authorization server's redirect back with a code."""
    redirect = await app.begin_ehr_launch(iss, "launch-123")
    params = query(redirect.url)
    ehr.nonce = params.get("nonce", [None])[0]
    answer = {"code": "code-abc", "state": params["state"][0]}
    answer.update(callback or {})
    session_id, session = await app.complete_launch(
        answer, binder=redirect.binder.reveal() if binder == "cookie" else binder)
    return session_id.reveal(), session


# --- issuers ------------------------------------------------------------------------------


def test_an_unknown_issuer_is_refused_without_any_request(ehr: FakeEhr, store: Store,
                                                          clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    expected = "not configured for the FHIR server 'https://evil.example/fhir/R4'"
    with pytest.raises(UnknownIssuerError, match=re.escape(expected)):
        run(app.begin_ehr_launch("https://evil.example/fhir/R4", "launch-123"))
    # A look-alike of the configured issuer is another issuer.
    with pytest.raises(UnknownIssuerError):
        run(app.begin_ehr_launch("https://ehr.example/fhir/R4/Patient", "launch-123"))
    with pytest.raises(UnknownIssuerError):
        run(app.begin_ehr_launch("http://ehr.example/fhir/R4", "launch-123"))
    assert ehr.router.calls.call_count == 0


def test_trailing_slash_and_case_are_ignored_and_aud_is_the_registered_spelling(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    redirect = run(app.begin_ehr_launch("HTTPS://EHR.example:443/fhir/R4/", "launch-123"))
    assert query(redirect.url)["aud"] == ["https://ehr.example/fhir/R4"]
    # and the other way round: registered with the slash Medplum sends
    web = settings(issuers=[{"iss": "https://ehr.example/fhir/R4/", "client_id": CLIENT_ID}])
    app, _ = app_for(ehr, store, clock, web)
    redirect = run(app.begin_ehr_launch("https://ehr.example/fhir/R4", "launch-123"))
    assert query(redirect.url)["aud"] == ["https://ehr.example/fhir/R4/"]


# --- the authorization request ------------------------------------------------------------


def test_the_authorize_url_has_exactly_the_expected_parameters(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    redirect = run(app.begin_ehr_launch(ISS, "launch-123"))
    assert redirect.url.startswith(AUTHORIZE + "?")
    params = query(redirect.url)
    state, challenge, nonce = (params.pop("state"), params.pop("code_challenge"),
                               params.pop("nonce"))
    assert params == {
        "response_type": ["code"], "client_id": ["previsit-app"],
        "redirect_uri": ["https://previsit.clinic.example/callback"],
        "launch": ["launch-123"],
        "scope": ["launch openid fhirUser offline_access patient/Patient.rs "
                  "patient/Observation.rs"],
        "aud": ["https://ehr.example/fhir/R4"], "code_challenge_method": ["S256"]}
    assert len(base64.urlsafe_b64decode(state[0] + "==")) >= 16  # ≥ 128 bits
    assert len(nonce[0]) >= 22
    # The challenge is S256 of the verifier later sent to the token endpoint.
    ehr.nonce = nonce[0]
    run(app.complete_launch({"code": "c", "state": state[0]}, binder=redirect.binder.reveal()))
    verifier = ehr.form()["code_verifier"]
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge == [expected.rstrip(b"=").decode()]


def test_states_are_random_per_launch(ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    first = query(run(app.begin_ehr_launch(ISS, "l1")).url)
    second = query(run(app.begin_ehr_launch(ISS, "l1")).url)
    assert first["state"] != second["state"]
    assert first["code_challenge"] != second["code_challenge"]


def test_code_challenge_matches_rfc_7636_appendix_b() -> None:
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_scopes_are_minimal_per_type_and_never_a_wildcard() -> None:
    reads = ["Patient", "Condition", "ServiceRequest"]
    assert requested_scope(mode="ehr", level="patient", read_types=reads, actions=False,
                           refresh="none") == \
        "launch openid fhirUser patient/Patient.rs patient/Condition.rs " \
        "patient/ServiceRequest.rs"
    # Writes merge into the type's one scope: Medplum applies the first scope it finds for
    # a type, so a separate .rs listed first would make ServiceRequest read-only.
    assert requested_scope(mode="ehr", level="patient", read_types=reads, actions=True,
                           refresh="offline_access") == \
        "launch openid fhirUser offline_access patient/Patient.rs patient/Condition.rs " \
        "patient/ServiceRequest.crus patient/MedicationRequest.cu patient/Provenance.c"
    assert requested_scope(mode="standalone", level="patient", read_types=["Patient"],
                           actions=False, refresh="online_access") == \
        "launch/patient openid fhirUser online_access patient/Patient.rs"
    assert requested_scope(mode="standalone", level="user", read_types=["Appointment"],
                           actions=True, refresh="none") == \
        "openid fhirUser user/Appointment.rs user/ServiceRequest.cu " \
        "user/MedicationRequest.cu user/Provenance.c"
    assert requested_scope(mode="ehr", level="user", read_types=["Appointment"],
                           actions=False, refresh="none") == \
        "launch openid fhirUser user/Appointment.rs"


def test_standalone_launch_asks_for_a_patient_and_sends_no_launch(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    params = query(run(app.begin_standalone_launch(ISS)).url)
    assert "launch" not in params
    assert params["scope"][0].startswith("launch/patient openid fhirUser ")


# --- discovery ----------------------------------------------------------------------------


def test_discovery_is_cached_per_issuer_until_its_ttl(ehr: FakeEhr, store: Store,
                                                      clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock, settings(discovery_ttl_seconds=600))
    run(app.begin_ehr_launch(ISS, "l1"))
    run(app.begin_ehr_launch(ISS + "/", "l2"))
    clock.now += 599
    run(app.begin_ehr_launch(ISS, "l3"))
    assert ehr.discovery.call_count == 1
    clock.now += 2
    run(app.begin_ehr_launch(ISS, "l4"))
    assert ehr.discovery.call_count == 2


def test_a_burst_of_launches_fetches_discovery_once(ehr: FakeEhr, store: Store,
                                                    clock: Clock) -> None:
    async def slow_network(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # every launch reaches the cache before the first answer
        return ehr.router.handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(slow_network))
    app = SmartApp(settings(), store, http, env={}, clock=clock)

    async def burst() -> None:
        await asyncio.gather(*(app.begin_ehr_launch(ISS, f"l{i}") for i in range(10)))

    run(burst())
    assert ehr.discovery.call_count == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"token_endpoint": "https://elsewhere.example/token"}, "on another origin"),
    ({"authorization_endpoint": "http://ehr.example/oauth2/authorize"}, "is not https"),
    ({"jwks_uri": "https://attacker.example/jwks"}, "on another origin"),
    ({"token_endpoint": None}, "has no token_endpoint"),
    ({"code_challenge_methods_supported": ["plain"]}, "does not support PKCE S256"),
    ({"capabilities": ["launch-standalone"]}, "does not offer the ehr launch"),
])
def test_untrusted_discovery_documents_are_refused(
        ehr: FakeEhr, store: Store, clock: Clock, change: dict[str, Any], message: str
) -> None:
    ehr.discovery_body.update(change)
    ehr.discovery_body = {k: v for k, v in ehr.discovery_body.items() if v is not None}
    app, _ = app_for(ehr, store, clock)
    with pytest.raises(DiscoveryError, match=message):
        run(app.begin_ehr_launch(ISS, "l1"))


def test_an_authorization_server_on_a_configured_origin_is_accepted(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    ehr.discovery_body["authorization_endpoint"] = "https://auth.ehr.example/authorize"
    web = settings(issuers=[{"iss": ISS, "client_id": CLIENT_ID,
                             "endpoint_origins": ["https://auth.ehr.example"]}])
    app, _ = app_for(ehr, store, clock, web)
    redirect = run(app.begin_ehr_launch(ISS, "l1"))
    assert redirect.url.startswith("https://auth.ehr.example/authorize?")


def test_discovery_failure_is_an_error_not_a_redirect(ehr: FakeEhr, store: Store,
                                                      clock: Clock) -> None:
    ehr.discovery.mock(side_effect=None, return_value=httpx.Response(404))
    app, _ = app_for(ehr, store, clock)
    with pytest.raises(DiscoveryError, match="HTTP 404"):
        run(app.begin_ehr_launch(ISS, "l1"))


# --- the callback: state ------------------------------------------------------------------


def test_a_state_is_single_use(ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)

    async def replay() -> None:
        redirect = await app.begin_ehr_launch(ISS, "l1")
        params = query(redirect.url)
        ehr.nonce = params["nonce"][0]
        answer = {"code": "code-abc", "state": params["state"][0]}
        await app.complete_launch(answer, binder=redirect.binder.reveal())
        with pytest.raises(LaunchStateError, match="already used") as refused:
            await app.complete_launch(answer, binder=redirect.binder.reveal())
        assert refused.value.reason == "used"

    run(replay())
    assert len(ehr.token_requests) == 1  # the replay never reached the token endpoint


def test_an_expired_state_is_refused(ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock, settings(launch_minutes=10))
    redirect = run(app.begin_ehr_launch(ISS, "l1"))
    clock.now += 10 * 60 + 1
    with pytest.raises(LaunchStateError, match="took too long"):
        run(app.complete_launch({"code": "c", "state": query(redirect.url)["state"][0]},
                                binder=redirect.binder.reveal()))
    assert ehr.token_requests == []


def test_a_state_previsit_never_issued_is_refused(ehr: FakeEhr, store: Store,
                                                  clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    run(app.begin_ehr_launch(ISS, "l1"))
    with pytest.raises(LaunchStateError, match="not one previsit started"):
        run(app.complete_launch({"code": "c", "state": "forged-state"}, binder=None))
    with pytest.raises(SmartLaunchError, match="has no state"):
        run(app.complete_launch({"code": "c"}, binder=None))
    assert ehr.token_requests == []


def test_the_launch_cookie_binds_the_callback_to_the_browser(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    with pytest.raises(SmartLaunchError, match="started in another browser"):
        run(launch_and_return(app, ehr, binder="another browser's cookie"))
    # Inside an iframe the cookie may be dropped: the server-side state alone suffices…
    _, session = run(launch_and_return(app, ehr, binder=None))
    assert session.patient == "pat-1"
    # … unless the configuration requires the cookie.
    app, _ = app_for(ehr, store, clock, settings(launch_cookie="required"))
    with pytest.raises(SmartLaunchError, match="did not keep the launch cookie"):
        run(launch_and_return(app, ehr, binder=None))


def test_two_launches_at_once_in_one_browser_both_complete(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)

    async def two_tabs() -> list[str | None]:
        first = await app.begin_ehr_launch(ISS, "tab-1")
        # the second tab's /launch request carries the cookie the first one set
        second = await app.begin_ehr_launch(ISS, "tab-2", binder=first.binder.reveal())
        assert second.binder == first.binder
        cookie = second.binder.reveal()  # what the browser now holds
        patients = []
        for redirect in (first, second):
            params = query(redirect.url)
            ehr.nonce = params["nonce"][0]
            _, session = await app.complete_launch(
                {"code": "c", "state": params["state"][0]}, binder=cookie)
            patients.append(session.patient)
        # a cookie value previsit did not make is never adopted
        forged = await app.begin_ehr_launch(ISS, "tab-3", binder="attacker-chosen")
        assert forged.binder.reveal() != "attacker-chosen"
        return patients

    assert run(two_tabs()) == ["pat-1", "pat-1"]


def test_an_error_answer_is_reported_and_consumes_the_state(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)

    async def denied() -> None:
        redirect = await app.begin_ehr_launch(ISS, "l1")
        state = query(redirect.url)["state"][0]
        answer = {"state": state, "error": "access_denied",
                  "error_description": "The user declined"}
        with pytest.raises(AuthorizationDenied, match=r"refused the sign-in \(access_denied\)"
                                                      ": The user declined") as caught:
            await app.complete_launch(answer, binder=redirect.binder.reveal())
        assert caught.value.error == "access_denied"
        with pytest.raises(LaunchStateError):
            await app.complete_launch({"state": state, "code": "c"},
                                      binder=redirect.binder.reveal())

    run(denied())
    assert ehr.token_requests == []


def test_an_answer_from_another_authorization_server_is_refused(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    with pytest.raises(SmartLaunchError, match="another authorization server"):
        run(launch_and_return(app, ehr, callback={"iss": "https://evil.example/"}))
    _, session = run(launch_and_return(app, ehr, callback={"iss": "https://ehr.example"}))
    assert session.patient == "pat-1"


# --- the code exchange --------------------------------------------------------------------


def test_a_public_client_exchanges_the_code_with_pkce_and_its_client_id(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    run(launch_and_return(app, ehr))
    form = ehr.form()
    verifier = form.pop("code_verifier")
    assert form == {"grant_type": "authorization_code", "code": "code-abc",
                    "redirect_uri": REDIRECT, "client_id": "previsit-app"}
    assert len(verifier) >= 43
    assert "authorization" not in ehr.token_requests[-1].headers


def test_a_symmetric_client_authenticates_with_client_secret_basic(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    web = settings(issuers=[{"iss": ISS, "client_id": "app one",
                             "client_type": "confidential-symmetric",
                             "client_secret_env": "EHR_SECRET"}])
    app, _ = app_for(ehr, store, clock, web, env={"EHR_SECRET": "s3cret/+"})
    ehr.answer_token(id_token=lambda: ehr.id_token(aud="app one"))
    run(launch_and_return(app, ehr))
    request = ehr.token_requests[-1]
    # RFC 6749 §2.3.1: id and secret form-encoded, then Basic of "app%20one:s3cret%2F%2B"
    assert request.headers["authorization"] == "Basic YXBwJTIwb25lOnMzY3JldCUyRiUyQg=="
    form = ehr.form()
    assert "client_id" not in form and "client_secret" not in form
    assert form["grant_type"] == "authorization_code" and "code_verifier" in form


def test_a_symmetric_client_without_its_secret_stops_at_start_up(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    web = settings(issuers=[{"iss": ISS, "client_id": CLIENT_ID,
                             "client_type": "confidential-symmetric",
                             "client_secret_env": "EHR_SECRET"}])
    with pytest.raises(SmartConfigError, match="set the environment variable EHR_SECRET"):
        app_for(ehr, store, clock, web, env={})


def test_an_asymmetric_client_authenticates_with_private_key_jwt(
        ehr: FakeEhr, store: Store, clock: Clock, tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path / "app.pem", "ES384", kid="app-key-1")
    web = settings(issuers=[{"iss": ISS, "client_id": CLIENT_ID,
                             "client_type": "confidential-asymmetric",
                             "private_key_file": str(tmp_path / "app.pem"),
                             "key_id": "app-key-1", "algorithm": "ES384"}])
    app, _ = app_for(ehr, store, clock, web)
    run(launch_and_return(app, ehr))
    form = ehr.form()
    assert form["client_assertion_type"] == \
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_id" not in form and "authorization" not in ehr.token_requests[-1].headers
    assertion = form["client_assertion"]
    assert jwt.get_unverified_header(assertion) == {"alg": "ES384", "kid": "app-key-1",
                                                     "typ": "JWT"}
    public = jwt.PyJWK(generated.jwks["keys"][0]).key
    claims = jwt.decode(assertion, public, algorithms=["ES384"], audience=TOKEN,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert 0 < claims["exp"] - claims["iat"] <= 300


def test_the_session_records_the_launch_context_and_who_acts(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    session_id, session = run(launch_and_return(app, ehr))
    assert session.issuer == ISS
    assert session.user == "https://ehr.example/fhir/R4/Practitioner/prac-1"
    assert (session.patient, session.encounter, session.appointment) == \
        ("pat-1", "enc-1", "Appointment/appt-1")
    assert session.scope_granted == "launch openid fhirUser offline_access patient/Patient.rs"
    assert session.scope_requested == \
        "launch openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"
    assert session.tokens.expires_at == NOW + 3600
    assert session.expires_at == NOW + 8 * 3600
    assert store.session(session_id) == session
    assert "access-" not in repr(session)


def test_a_patient_launch_without_a_patient_is_refused(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    ehr.answer_token(patient=None)
    with pytest.raises(SmartLaunchError, match="without a patient in context"):
        run(launch_and_return(app, ehr))


def test_a_token_endpoint_refusal_is_reported(ehr: FakeEhr, store: Store,
                                              clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    ehr.refuse_token({"error": "invalid_grant", "error_description": "code expired"})
    with pytest.raises(SmartLaunchError, match="refused with HTTP 400: invalid_grant"):
        run(launch_and_return(app, ehr))


def test_tokens_never_reach_the_logs(ehr: FakeEhr, store: Store, clock: Clock,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app, _ = app_for(ehr, store, clock)
    ehr.answer_token(access_token="access-SECRET", refresh_token="refresh-SECRET")
    session_id, session = run(launch_and_return(app, ehr))
    assert "SECRET" not in caplog.text and session_id not in caplog.text
    assert "SECRET" not in repr(session) and "SECRET" not in str(session.tokens)


# --- the id token -------------------------------------------------------------------------


def test_an_es256_id_token_is_accepted_although_discovery_says_rs256(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    assert ehr.discovery_body["id_token_signing_alg_values_supported"] == ["RS256"]
    app, _ = app_for(ehr, store, clock)
    _, session = run(launch_and_return(app, ehr))
    assert session.user == "https://ehr.example/fhir/R4/Practitioner/prac-1"


def test_an_rs256_id_token_is_accepted_too(ehr: FakeEhr, store: Store,
                                           clock: Clock) -> None:
    rs = signer("RS256")
    ehr.jwks_keys.append(rs.jwk())
    app, _ = app_for(ehr, store, clock)

    async def flow() -> str | None:
        redirect = await app.begin_ehr_launch(ISS, "l1")
        params = query(redirect.url)
        ehr.nonce = params["nonce"][0]
        ehr.answer_token(id_token=ehr.id_token(rs))
        _, session = await app.complete_launch({"code": "c", "state": params["state"][0]},
                                               binder=None)
        return session.user

    assert run(flow()) == "https://ehr.example/fhir/R4/Practitioner/prac-1"


def _hs256(ehr: FakeEhr) -> str:
    claims = jwt.decode(ehr.id_token(), options={"verify_signature": False})
    return jwt.encode(claims, "a shared secret of thirty-two bytes!", algorithm="HS256",
                      headers={"kid": ehr.id_signer.kid})


def _none(ehr: FakeEhr) -> str:
    claims = jwt.decode(ehr.id_token(), options={"verify_signature": False})
    return jwt.encode(claims, None, algorithm="none", headers={"kid": ehr.id_signer.kid})


def _tampered(ehr: FakeEhr) -> str:
    header, _payload, signature = ehr.id_token().split(".")
    other = ehr.id_token(fhirUser="Practitioner/someone-else").split(".")[1]
    return ".".join([header, other, signature])


def _wrong_key_for_kid(ehr: FakeEhr) -> str:
    # An ES384 signature presented under the ES256 key's kid: the key's own alg decides.
    es384 = signer("ES384")
    claims = jwt.decode(ehr.id_token(), options={"verify_signature": False})
    return jwt.encode(claims, es384.key, algorithm="ES384", headers={"kid": ehr.id_signer.kid})


@pytest.mark.parametrize(("build", "reason"), [
    (_hs256, "alg 'HS256' is not allowed"),
    (_none, "alg 'none' is not allowed"),
    (_tampered, "signature does not verify"),
    (_wrong_key_for_kid, "the key is for ES256, the token says ES384"),
    (lambda ehr: ehr.id_token(signer("ES256", "unknown-kid")), "no key with kid 'unknown-kid'"),
    (lambda ehr: ehr.id_token(aud="another-app"), "aud is not previsit-app"),
    (lambda ehr: ehr.id_token(iat=int(NOW) - 7200, exp=int(NOW) - 3600), "expired 3600 s ago"),
    (lambda ehr: ehr.id_token(iat=int(NOW) + 600), "issued 600 s in the future"),
    (lambda ehr: ehr.id_token(iss="https://evil.example/"), "iss 'https://evil.example/' is not"),
    (lambda ehr: ehr.id_token(nonce="another-nonce"), "nonce does not match"),
    (lambda ehr: ehr.id_token(fhirUser=None), "no fhirUser claim"),
    (lambda ehr: ehr.id_token(fhirUser="Organization/1"), "is not a Practitioner"),
    (lambda ehr: ehr.id_token(exp=None), "has no exp claim"),
])
def test_untrustworthy_id_tokens_are_refused(ehr: FakeEhr, store: Store, clock: Clock,
                                             build: Any, reason: str) -> None:
    app, _ = app_for(ehr, store, clock)

    async def flow() -> None:
        redirect = await app.begin_ehr_launch(ISS, "l1")
        params = query(redirect.url)
        ehr.nonce = params["nonce"][0]
        ehr.answer_token(id_token=build(ehr))
        with pytest.raises(IdTokenError) as refused:
            await app.complete_launch({"code": "c", "state": params["state"][0]},
                                      binder=redirect.binder.reveal())
        assert reason in refused.value.reason

    run(flow())


def test_a_rotated_signing_key_is_fetched_again_but_not_on_every_token(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    run(launch_and_return(app, ehr))
    assert ehr.jwks.call_count == 1
    rotated = signer("ES256", "rotated")
    ehr.jwks_keys = [rotated.jwk()]
    clock.now += 30  # within a minute of the last fetch: no second fetch for an unknown kid

    async def with_rotated_key() -> None:
        redirect = await app.begin_ehr_launch(ISS, "l1")
        params = query(redirect.url)
        ehr.nonce = params["nonce"][0]
        ehr.answer_token(id_token=ehr.id_token(rotated))
        await app.complete_launch({"code": "c", "state": params["state"][0]}, binder=None)

    with pytest.raises(IdTokenError, match="no key with kid 'rotated'"):
        run(with_rotated_key())
    assert ehr.jwks.call_count == 1
    clock.now += 60
    run(with_rotated_key())
    assert ehr.jwks.call_count == 2


def test_fhir_user_is_resolved_against_the_fhir_base() -> None:
    base = "https://ehr.example/fhir/R4/"
    relative = resolve_fhir_user("Practitioner/123", base)
    assert relative is not None
    assert (relative.reference, relative.resource_type, relative.id) == \
        ("https://ehr.example/fhir/R4/Practitioner/123", "Practitioner", "123")
    absolute = resolve_fhir_user("https://other.example/fhir/PractitionerRole/9", base)
    assert absolute is not None and absolute.reference == \
        "https://other.example/fhir/PractitionerRole/9"
    versioned = resolve_fhir_user("Practitioner/123/_history/4", base)
    assert versioned is not None and versioned.reference == \
        "https://ehr.example/fhir/R4/Practitioner/123"
    assert resolve_fhir_user("Device/1", base) is None
    assert resolve_fhir_user("Practitioner/", base) is None


# --- refresh ------------------------------------------------------------------------------


def test_refresh_happens_only_when_the_access_token_is_about_to_expire(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    session_id, session = run(launch_and_return(app, ehr))
    first = session.tokens.access_token.reveal()
    assert session.tokens.refresh_token is not None
    refresh = session.tokens.refresh_token.reveal()
    clock.now += 3000  # 10 minutes left
    assert run(app.access_token(session_id)).reveal() == first
    assert len(ehr.token_requests) == 1
    clock.now += 560  # 40 s left: refresh now rather than send a token that dies in flight
    ehr.answer_token(access_token="access-renewed", refresh_token=None, expires_in=3600,
                     scope="launch openid patient/Patient.rs")
    assert run(app.access_token(session_id)).reveal() == "access-renewed"
    assert ehr.form() == {"grant_type": "refresh_token", "refresh_token": refresh,
                          "client_id": "previsit-app"}
    stored = store.session(session_id)
    assert stored is not None
    assert stored.tokens.access_token.reveal() == "access-renewed"
    assert stored.tokens.refresh_token is not None
    assert stored.tokens.refresh_token.reveal() == refresh  # not rotated: kept
    assert stored.scope_granted == "launch openid patient/Patient.rs"
    assert run(app.access_token(session_id)).reveal() == "access-renewed"
    assert len(ehr.token_requests) == 2


def test_concurrent_requests_near_expiry_share_one_refresh(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    async def slow_network(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return ehr.router.handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(slow_network))
    app = SmartApp(settings(), store, http, env={}, clock=clock)
    session_id, _ = run(launch_and_return(app, ehr))
    clock.now += 3590

    async def page_with_five_reads() -> set[str]:
        tokens = await asyncio.gather(*(app.access_token(session_id) for _ in range(5)))
        return {t.reveal() for t in tokens}

    ehr.answer_token(access_token="access-once")
    assert run(page_with_five_reads()) == {"access-once"}
    assert [ehr.form(i)["grant_type"] for i in range(len(ehr.token_requests))] == \
        ["authorization_code", "refresh_token"]


def test_without_a_refresh_token_an_expired_session_asks_for_a_new_launch(
        ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock, settings(refresh="none"))
    ehr.answer_token(refresh_token=None, expires_in=600)
    session_id, _ = run(launch_and_return(app, ehr))
    clock.now += 601
    with pytest.raises(SessionExpiredError, match="launch the app again"):
        run(app.access_token(session_id))
    assert len(ehr.token_requests) == 1


def test_a_refused_refresh_ends_the_session(ehr: FakeEhr, store: Store,
                                            clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    session_id, _ = run(launch_and_return(app, ehr))
    clock.now += 3590
    ehr.refuse_token({"error": "invalid_grant"})
    with pytest.raises(SessionExpiredError, match="did not renew access"):
        run(app.access_token(session_id))
    assert store.session(session_id) is None


def test_an_unknown_session_is_expired(ehr: FakeEhr, store: Store, clock: Clock) -> None:
    app, _ = app_for(ehr, store, clock)
    with pytest.raises(SessionExpiredError):
        run(app.access_token("no-such-session"))


def test_jwks_and_discovery_urls_are_the_ones_published(ehr: FakeEhr) -> None:
    # The fake must look like the published example (conformance.html): guards the tests.
    assert ehr.discovery_body["jwks_uri"] == JWKS
    assert ehr.discovery_body["token_endpoint"] == TOKEN
