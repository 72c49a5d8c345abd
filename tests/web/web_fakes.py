"""Builders for the web tests: a fixed clock, settings, signing keys and a fake EHR (SMART
discovery, token endpoint, JWKS) mocked with respx."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httpx
import jwt
import respx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from previsit.web.settings import WebSettings

T = TypeVar("T")
NOW = 1_800_000_000.0
ISS = "https://ehr.example/fhir/R4"
OIDC_ISSUER = "https://ehr.example/"
AUTHORIZE = "https://ehr.example/oauth2/authorize"
TOKEN = "https://ehr.example/oauth2/token"
JWKS = "https://ehr.example/.well-known/jwks.json"
CLIENT_ID = "previsit-app"
PUBLIC_URL = "https://previsit.clinic.example"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> WebSettings:
    values: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "issuers": [{"iss": ISS, "client_id": CLIENT_ID}],
    }
    values.update(overrides)
    return WebSettings.model_validate(values)


def public_jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))
    else:
        jwk = dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
    jwk["kid"] = kid
    if alg:
        jwk["alg"] = alg
    return jwk


class Signer:
    """One signing key and its public JWK."""

    def __init__(self, alg: str, kid: str) -> None:
        self.alg = alg
        self.kid = kid
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
            self.key: Any = ec.generate_private_key(curve)
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        return public_jwk(self.key, self.kid, self.alg if with_alg else None)

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, "typ": "JWT", **header}  # a None value drops the member
        return jwt.encode(claims, self.key, algorithm=self.alg,
                          headers={k: v for k, v in headers.items() if v is not None})


# One key per algorithm for the whole session: RSA generation is slow.
_SIGNERS: dict[str, Signer] = {}


def signer(alg: str, kid: str | None = None) -> Signer:
    name = f"{alg}:{kid}"
    if name not in _SIGNERS:
        _SIGNERS[name] = Signer(alg, kid or f"{alg.lower()}-key")
    return _SIGNERS[name]


class FakeEhr:
    """Discovery, token endpoint and JWKS of an EHR shaped like production Medplum:
    discovery says RS256, id tokens are ES256, fhirUser is relative, iss of the id token
    is the server root."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.router = respx.MockRouter(assert_all_called=False)
        self.id_signer = signer("ES256")
        self.discovery_body: dict[str, Any] = {
            "issuer": OIDC_ISSUER,
            "jwks_uri": JWKS,
            "authorization_endpoint": AUTHORIZE,
            "token_endpoint": TOKEN,
            "id_token_signing_alg_values_supported": ["RS256"],
            "capabilities": ["launch-ehr", "launch-standalone", "client-public",
                             "client-confidential-symmetric", "sso-openid-connect"],
            "code_challenge_methods_supported": ["S256"],
        }
        self.discovery = self.router.get(f"{ISS}/.well-known/smart-configuration").mock(
            side_effect=lambda request: httpx.Response(200, json=self.discovery_body))
        self.jwks_keys: list[dict[str, Any]] = [self.id_signer.jwk()]
        self.jwks = self.router.get(JWKS).mock(
            side_effect=lambda request: httpx.Response(200, json={"keys": self.jwks_keys}))
        self.token_requests: list[httpx.Request] = []
        # Queued answers: (status, raw body or None, overrides of the default body). Values
        # of overrides may be callables, called when the request comes (after the nonce is
        # known).
        self.token_answers: list[tuple[int, dict[str, Any] | None, dict[str, Any]]] = []
        self.token = self.router.post(TOKEN).mock(side_effect=self._token)
        self.nonce: str | None = None

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        status, raw, overrides = self.token_answers.pop(0) if self.token_answers \
            else (200, None, {})
        if raw is not None:
            return httpx.Response(status, json=raw)
        evaluated = {k: v() if callable(v) else v for k, v in overrides.items()}
        return httpx.Response(status, json=self.token_body(**evaluated))

    def form(self, index: int = -1) -> dict[str, str]:
        parsed = parse_qs(self.token_requests[index].content.decode())
        return {k: v[0] for k, v in parsed.items()}

    def id_token(self, signer_: Signer | None = None, header: dict[str, Any] | None = None,
                 **claims: Any) -> str:
        now = int(self.clock())
        body: dict[str, Any] = {"iss": OIDC_ISSUER, "sub": "user-1", "aud": CLIENT_ID,
                                "iat": now, "exp": now + 3600,
                                "fhirUser": "Practitioner/prac-1"}
        if self.nonce is not None:
            body["nonce"] = self.nonce
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return (signer_ or self.id_signer).sign(body, **(header or {}))

    def token_body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": f"access-{uuid.uuid4().hex}", "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "launch openid fhirUser offline_access patient/Patient.rs",
            "refresh_token": f"refresh-{uuid.uuid4().hex}", "patient": "pat-1",
            "encounter": "enc-1",
            "fhirContext": [{"reference": "Appointment/appt-1"}],
            "id_token": self.id_token()}
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    def answer_token(self, **overrides: Any) -> None:
        """The next token response: the default body with these changes (None removes)."""
        self.token_answers.append((200, None, overrides))

    def refuse_token(self, body: dict[str, Any], status: int = 400) -> None:
        self.token_answers.append((status, body, {}))
