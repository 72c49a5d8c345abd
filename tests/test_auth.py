"""Auth flows against a mocked FHIR server and token endpoint (respx).

SMART Backend Services assertions are checked against the spec's table
(hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html): header alg/kid/typ,
claims iss = sub = client_id, aud = token URL, exp at most five minutes ahead, unique jti.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Coroutine
from datetime import date
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from previsit.auth import (
    CLIENT_ASSERTION_TYPE,
    BearerToken,
    ClientSecretBasic,
    NoCredentials,
    Secret,
    SmartBackendAuth,
    auth_from_config,
)
from previsit.config import AuthConfig, Config, OutputConfig, SourceConfig, requested_scope
from previsit.errors import AuthError, SourceError
from previsit.keys import generate_key_pair
from previsit.sources import VisitWindow
from previsit.sources.http import HttpSource, RetryPolicy

BASE = "https://ehr.example/fhir/R4"
TOKEN_URL = "https://auth.example/oauth2/token"
SCOPE = "system/Appointment.rs system/Observation.rs"
T = TypeVar("T")
WINDOW = VisitWindow(date(2026, 12, 1), date(2026, 12, 2))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TokenServer:
    """A mocked FHIR server plus SMART discovery and a token endpoint that counts tokens."""

    def __init__(self, *, expires_in: int | None = 300) -> None:
        self.router = respx.MockRouter(assert_all_called=False)
        self.issued: list[str] = []
        self.forms: list[dict[str, list[str]]] = []
        self.token_headers: list[httpx.Headers] = []
        self.expires_in = expires_in
        self.discovery = self.router.get(f"{BASE}/.well-known/smart-configuration").mock(
            return_value=httpx.Response(200, json={
                "token_endpoint": TOKEN_URL,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]}))
        self.token = self.router.post(TOKEN_URL).mock(side_effect=self._token)
        self.fhir = self.router.get(f"{BASE}/Appointment").mock(side_effect=self._fhir)
        self.valid: set[str] = set()

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(parse_qs(request.content.decode()))
        self.token_headers.append(request.headers)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        self.valid = {token}
        body: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": SCOPE}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def _fhir(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") in self.valid:
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
        return httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "login", "diagnostics": "token expired"}]})

    def client(self, auth: httpx.Auth | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(auth=auth,
                                 transport=httpx.MockTransport(self.router.async_handler))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def smart(key: Any = None, *, alg: str = "RS384", clock: Clock | None = None,
          token_url: str | None = None) -> SmartBackendAuth:
    return SmartBackendAuth(client_id="previsit-nightly", private_key=key or rsa_key(),
                            key_id="key-1", algorithm=alg,  # type: ignore[arg-type]
                            scope=SCOPE, base_url=BASE, token_url=token_url,
                            clock=clock or Clock(time.time()))


async def get(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get(f"{BASE}/Appointment")


# --- bearer ----------------------------------------------------------------------------


def test_bearer_token_is_sent_and_never_shown() -> None:
    server = TokenServer()
    server.valid = {"s3cret-token"}
    auth = BearerToken("s3cret-token")

    async def go() -> int:
        async with server.client(auth) as client:
            return (await get(client)).status_code

    assert run(go()) == 200
    assert "s3cret" not in repr(auth) and "s3cret" not in str(Secret("s3cret"))


# --- SMART backend services -----------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_assertion_has_the_claims_and_headers_the_spec_requires(alg: str) -> None:
    key = rsa_key() if alg == "RS384" else ec.generate_private_key(ec.SECP384R1())
    server = TokenServer()
    clock = Clock(time.time())
    auth = smart(key, alg=alg, clock=clock)

    async def go() -> int:
        async with server.client(auth) as client:
            return (await get(client)).status_code

    assert run(go()) == 200
    assert server.discovery.call_count == 1
    form = {k: v[0] for k, v in server.forms[0].items()}
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == SCOPE
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": alg, "kid": "key-1", "typ": "JWT"}
    claims = jwt.decode(assertion, key.public_key(), algorithms=[alg], audience=TOKEN_URL,
                        options={"verify_exp": False})
    assert claims["iss"] == claims["sub"] == "previsit-nightly"
    assert claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - int(clock.now) <= 300
    assert auth.client_assertion(TOKEN_URL) != assertion
    assert jwt.decode(auth.client_assertion(TOKEN_URL), key.public_key(), algorithms=[alg],
                      audience=TOKEN_URL, options={"verify_exp": False})["jti"] != claims["jti"]


def test_one_token_serves_many_concurrent_requests() -> None:
    server = TokenServer()

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)  # every request is waiting for a token meanwhile
        return server._token(request)

    server.token.side_effect = slow_token
    auth = smart()

    async def go() -> list[int]:
        async with server.client(auth) as client:
            responses = await asyncio.gather(*(get(client) for _ in range(20)))
            responses.append(await get(client))
            return [r.status_code for r in responses]

    assert run(go()) == [200] * 21
    assert server.token.call_count == 1
    assert server.discovery.call_count == 1


def test_token_is_refreshed_shortly_before_it_expires() -> None:
    server = TokenServer(expires_in=300)
    clock = Clock()
    auth = smart(clock=clock, token_url=TOKEN_URL)

    async def go() -> None:
        async with server.client(auth) as client:
            await get(client)
            clock.now += 239  # 300 s token, refreshed 60 s early
            await get(client)
            assert server.token.call_count == 1
            clock.now += 2
            await get(client)
            assert server.token.call_count == 2

    run(go())
    assert server.discovery.call_count == 0  # token_url was configured


def test_a_401_is_fixed_by_exactly_one_token_refresh() -> None:
    server = TokenServer(expires_in=None)  # cached until the server says otherwise

    async def go() -> list[int]:
        async with server.client(smart()) as client:
            first = await get(client)
            server.valid = set()  # the server revokes the token
            revoked_then_fixed = await get(client)
            return [first.status_code, revoked_then_fixed.status_code]

    assert run(go()) == [200, 200]
    assert server.token.call_count == 2  # the first token and one refresh
    assert server.fhir.call_count == 3  # ok, 401, retried ok


def test_many_requests_refused_together_share_one_refresh() -> None:
    server = TokenServer(expires_in=None)

    async def slow_fhir(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # all ten are in flight when the token is revoked
        return server._fhir(request)

    server.fhir.side_effect = slow_fhir

    async def go() -> list[int]:
        async with server.client(smart()) as client:
            await get(client)
            server.valid = set()
            responses = await asyncio.gather(*(get(client) for _ in range(10)))
            return [r.status_code for r in responses]

    assert run(go()) == [200] * 10
    assert server.token.call_count == 2


def test_a_401_after_the_refresh_is_a_source_error_and_no_loop() -> None:
    server = TokenServer()
    server.fhir.side_effect = None
    server.fhir.return_value = httpx.Response(401, json={
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "client disabled"}]})
    client = server.client(smart())
    source = HttpSource(client, BASE, retry=RetryPolicy(sleep=_no_sleep))
    with pytest.raises(SourceError) as caught:
        run(source.appointments(WINDOW))
    assert "HTTP 401" in str(caught.value) and "client disabled" in str(caught.value)
    assert server.token.call_count == 2 and server.fhir.call_count == 2


async def _no_sleep(seconds: float) -> None:
    return None


def test_a_token_endpoint_that_is_down_is_a_source_error() -> None:
    server = TokenServer()
    server.token.side_effect = httpx.ConnectError("[Errno 111] Connection refused")
    source = HttpSource(server.client(smart()), BASE,
                        retry=RetryPolicy(max_attempts=2, sleep=_no_sleep))
    with pytest.raises(SourceError) as caught:
        run(source.appointments(WINDOW))
    assert "cannot connect to auth.example" in str(caught.value)
    assert server.fhir.call_count == 0


def test_a_refusing_token_endpoint_is_an_auth_error_with_the_oauth_reason() -> None:
    server = TokenServer()
    server.token.side_effect = None
    server.token.return_value = httpx.Response(400, json={
        "error": "invalid_client", "error_description": "unknown kid key-1"})
    source = HttpSource(server.client(smart()), BASE, retry=RetryPolicy(sleep=_no_sleep))
    with pytest.raises(AuthError) as caught:
        run(source.appointments(WINDOW))
    message = str(caught.value)
    assert message == (f"the token endpoint {TOKEN_URL} refused the request with HTTP 400: "
                       "invalid_client (unknown kid key-1)")
    assert server.token.call_count == 1  # a refusal is not retried


def test_no_smart_configuration_asks_for_the_token_url() -> None:
    server = TokenServer()
    server.discovery.return_value = httpx.Response(404)

    async def go() -> None:
        async with server.client(smart()) as client:
            await get(client)

    with pytest.raises(AuthError, match=r"set auth\.token_url"):
        run(go())


def test_secrets_never_appear_in_reprs_or_errors() -> None:
    server = TokenServer()
    server.token.side_effect = None
    server.token.return_value = httpx.Response(401, json={"error": "invalid_client"})
    auth = ClientSecretBasic(client_id="nightly", client_secret="hunter2-secret",
                             scope=SCOPE, token_url=TOKEN_URL)

    async def go() -> None:
        async with server.client(auth) as client:
            await get(client)

    with pytest.raises(AuthError) as caught:
        run(go())
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
    assert "hunter2" not in repr(auth)
    assert "PRIVATE" not in repr(smart())


# --- client secret basic ----------------------------------------------------------------


def test_client_secret_basic_sends_form_encoded_credentials_in_basic_auth() -> None:
    server = TokenServer()
    auth = ClientSecretBasic(client_id="nightly job", client_secret="p@ss:word",
                             scope=SCOPE, base_url=BASE)

    async def go() -> int:
        async with server.client(auth) as client:
            return (await get(client)).status_code

    assert run(go()) == 200
    basic = server.token_headers[0]["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(basic).decode() == "nightly%20job:p%40ss%3Aword"
    assert {k: v[0] for k, v in server.forms[0].items()} == {
        "grant_type": "client_credentials", "scope": SCOPE}


# --- from configuration -----------------------------------------------------------------


def test_no_auth_sends_nothing() -> None:
    auth = auth_from_config(AuthConfig(), BASE, {})
    assert isinstance(auth, NoCredentials)
    request = next(auth.auth_flow(httpx.Request("GET", BASE)))
    assert "Authorization" not in request.headers


def unauthorized_source(env: dict[str, str], **config: Any) -> HttpSource:
    router = respx.MockRouter(assert_all_called=False)
    router.get(f"{BASE}/Appointment").mock(return_value=httpx.Response(401, json={
        "resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "login", "details": {"text": "Unauthorized"}}]}))
    return HttpSource.from_config(SourceConfig(kind="fhir", base_url=BASE),
                                  AuthConfig(**config), env,
                                  transport=httpx.MockTransport(router.async_handler))


def test_a_401_without_credentials_says_none_are_configured_and_names_the_unused_token(
) -> None:
    # PREVISIT_TOKEN set, auth.method left at "none": the token is not sent.
    source = unauthorized_source({"PREVISIT_TOKEN": "t0k"})
    with pytest.raises(SourceError) as caught:
        run(source.appointments(WINDOW))
    message = str(caught.value)
    assert "refused our credentials" not in message
    assert "none are configured: auth.method is \"none\"" in message
    assert "PREVISIT_TOKEN is set but is only sent with auth.method = \"bearer\"" in message
    assert "t0k" not in message


def test_a_401_without_credentials_and_no_token_says_what_to_configure() -> None:
    source = unauthorized_source({})
    with pytest.raises(SourceError, match=r"auth\.method is \"none\"; set \[auth\] method"):
        run(source.appointments(WINDOW))


def test_a_401_with_credentials_still_says_they_were_refused() -> None:
    source = unauthorized_source({"PREVISIT_TOKEN": "t0k"}, method="bearer")
    with pytest.raises(SourceError, match="refused our credentials"):
        run(source.appointments(WINDOW))


# --- scopes ------------------------------------------------------------------------------


RUN_SCOPE_V2 = ("system/Appointment.rs system/Patient.rs system/Condition.rs "
                "system/MedicationRequest.crus system/Medication.rs system/Observation.rs "
                "system/Procedure.rs system/Immunization.rs system/ServiceRequest.crus "
                "system/Encounter.rs system/MedicationDispense.rs system/MedicationStatement.rs")


def test_the_default_scope_is_smart_v2_for_exactly_what_a_run_needs() -> None:
    assert requested_scope(Config()) == RUN_SCOPE_V2
    with_sheets = Config(output=OutputConfig(write_sheets=True))
    assert requested_scope(with_sheets) == RUN_SCOPE_V2 + " system/DocumentReference.cu"


def test_v1_scopes_are_an_option() -> None:
    config = Config(auth=AuthConfig(scope_version="v1"))
    assert requested_scope(config) == (
        "system/Appointment.read system/Patient.read system/Condition.read "
        "system/MedicationRequest.read system/MedicationRequest.write system/Medication.read "
        "system/Observation.read system/Procedure.read system/Immunization.read "
        "system/ServiceRequest.read system/ServiceRequest.write system/Encounter.read "
        "system/MedicationDispense.read system/MedicationStatement.read")


def test_a_configured_scope_wins() -> None:
    config = Config(auth=AuthConfig(scope="system/*.rs"), output=OutputConfig(write_sheets=True))
    assert requested_scope(config) == "system/*.rs"
    auth = auth_from_config(AuthConfig(method="client-secret", client_id="c",
                                       scope="system/*.rs"), BASE, {"PREVISIT_CLIENT_SECRET": "s"},
                            scope="system/Patient.c")
    assert isinstance(auth, ClientSecretBasic) and auth.requested_scope == "system/*.rs"


def test_the_command_scope_is_asked_for_and_the_granted_one_read_from_the_response() -> None:
    server = TokenServer()
    auth = auth_from_config(AuthConfig(method="client-secret", client_id="c", token_url=TOKEN_URL),
                            BASE, {"PREVISIT_CLIENT_SECRET": "s"}, scope=RUN_SCOPE_V2)
    assert isinstance(auth, ClientSecretBasic)
    assert auth.granted_scope is None  # no token yet

    async def go() -> None:
        async with server.client(auth) as client:
            await get(client)

    run(go())
    assert server.forms[0]["scope"] == [RUN_SCOPE_V2]
    assert auth.granted_scope == SCOPE  # what the token endpoint said it granted


def test_a_token_response_without_scope_means_the_scope_asked_for() -> None:
    server = TokenServer()
    server.token.side_effect = None
    server.token.return_value = httpx.Response(200, json={"access_token": "x",
                                                          "token_type": "bearer"})
    server.valid = {"x"}
    auth = smart(token_url=TOKEN_URL)

    async def go() -> None:
        async with server.client(auth) as client:
            await get(client)

    run(go())
    assert auth.granted_scope == SCOPE


def test_bearer_from_the_environment_or_a_file(tmp_path: Path) -> None:
    auth = auth_from_config(AuthConfig(method="bearer"), BASE, {"PREVISIT_TOKEN": "abc"})
    assert isinstance(auth, BearerToken)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    token_file.chmod(0o600)
    auth = auth_from_config(AuthConfig(method="bearer", token_file=token_file), BASE, {})
    request = next(auth.auth_flow(httpx.Request("GET", BASE)))  # type: ignore[union-attr]
    assert request.headers["Authorization"] == "Bearer from-file"


def test_a_missing_bearer_token_names_the_variable_and_the_file_key() -> None:
    with pytest.raises(AuthError, match=r"set the environment variable EHR_TOKEN .*"
                       r"auth\.token_file"):
        auth_from_config(AuthConfig(method="bearer", token_env="EHR_TOKEN"), BASE, {})


def test_an_unreadable_secret_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(AuthError, match=re.escape(f"auth.client_secret_file = {missing}")):
        auth_from_config(AuthConfig(method="client-secret", client_id="x",
                                    client_secret_file=missing), BASE, {})


def test_smart_backend_from_config_loads_the_key_and_checks_its_type(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    generated = generate_key_pair(key_file, "ES384")
    config = AuthConfig(method="smart-backend", client_id="nightly", key_id=generated.kid,
                        private_key_file=key_file, algorithm="ES384")
    auth = auth_from_config(config, BASE, {})
    assert isinstance(auth, SmartBackendAuth)
    wrong = AuthConfig(method="smart-backend", client_id="nightly", key_id=generated.kid,
                       private_key_file=key_file, algorithm="RS384")
    with pytest.raises(AuthError, match="RS384 needs an RSA key"):
        auth_from_config(wrong, BASE, {})
    with pytest.raises(AuthError, match=r"auth\.client_id"):
        auth_from_config(AuthConfig(method="smart-backend", private_key_file=key_file,
                                    key_id="k"), BASE, {})
    with pytest.raises(AuthError, match=r"auth\.key_id"):
        auth_from_config(AuthConfig(method="smart-backend", client_id="c",
                                    private_key_file=key_file), BASE, {})


def test_a_world_readable_key_file_is_warned_about(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "key.pem"
    generated = generate_key_pair(key_file, "ES384")
    os.chmod(key_file, 0o644)
    auth_from_config(AuthConfig(method="smart-backend", client_id="c", key_id=generated.kid,
                                private_key_file=key_file, algorithm="ES384"), BASE, {})
    assert "chmod 600" in caplog.text
    assert "BEGIN" not in caplog.text


def test_the_sync_flow_refreshes_once_on_401_too() -> None:
    server = TokenServer(expires_in=None)
    auth = smart()
    with httpx.Client(auth=auth, transport=httpx.MockTransport(server.router.handler)) as c:
        assert c.get(f"{BASE}/Appointment").status_code == 200
        server.valid = set()
        assert c.get(f"{BASE}/Appointment").status_code == 200
    assert server.token.call_count == 2


def test_token_response_must_carry_a_bearer_token() -> None:
    server = TokenServer()
    server.token.side_effect = None
    server.token.return_value = httpx.Response(200, json={"access_token": "x",
                                                          "token_type": "mac"})

    async def go() -> None:
        async with server.client(smart(token_url=TOKEN_URL)) as client:
            await get(client)

    with pytest.raises(AuthError, match="only bearer tokens"):
        run(go())
