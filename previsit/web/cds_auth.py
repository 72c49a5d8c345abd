"""Authenticating CDS Hooks calls: the EHR's signed bearer JWT (CDS Hooks 2.0, "Trusting
CDS Clients").

Every call carries `Authorization: Bearer <JWT>` signed by the CDS client. It is accepted
when:
- its `iss` is a configured CDS issuer (compared normalised), and a `jku` header, if
  any, names that issuer's configured JWKS URL (previsit never fetches keys from a URL a
  caller chose);
- `alg` is on the configured allow-list (ES384/RS384 by default; never `none` or HMAC),
  `kid` is present, and the key with that kid in the issuer's JWKS verifies the signature;
- `aud` is exactly the URL of the endpoint being called;
- `exp` is not past, `iat` not in the future (each with the configured skew), and the
  lifetime is bounded;
- `jti` has not been seen from that issuer (recorded until the JWT expires).

Anything else raises `CdsAuthError` with a precise `reason` for the log; the caller answers
with `CdsAuthError.public_message` and 401, which tells an attacker nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from previsit.auth import Secret
from previsit.errors import PrevisitError
from previsit.web.jwks import (
    JwksCache,
    JwtRejected,
    unverified_claims,
    unverified_header,
    verified_claims,
)
from previsit.web.settings import WebSettings
from previsit.web.store import Store
from previsit.web.urls import same_url

log = logging.getLogger(__name__)


class CdsAuthError(PrevisitError):
    """A CDS Hooks call that is not authenticated. `reason` is for the log only."""

    public_message = "the request is not authenticated"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class CdsClient:
    """The authenticated caller of one CDS Hooks request."""

    issuer: str  # the configured issuer string
    tenant: str | None
    subject: str | None
    kid: str
    alg: str
    jti: str


@dataclass(frozen=True, repr=False)
class FhirAuthorization:
    """A CDS request's `fhirAuthorization`: a token for the CDS client's FHIR server,
    scoped to this service and user. Parsed here; how it may be used is decided later."""

    access_token: Secret
    token_type: str
    expires_in: int
    scope: str
    subject: str  # the CDS service's OAuth client id at the EHR
    patient: str | None  # the patient a patient/ scope is restricted to

    def __repr__(self) -> str:
        return f"FhirAuthorization(scope={self.scope!r}, subject={self.subject!r})"

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> FhirAuthorization:
        token, token_type = value.get("access_token"), value.get("token_type")
        expires_in, scope, subject = (value.get("expires_in"), value.get("scope"),
                                      value.get("subject"))
        patient = value.get("patient")
        if not (isinstance(token, str) and token and isinstance(token_type, str) and
                token_type.lower() == "bearer" and isinstance(expires_in, int) and
                not isinstance(expires_in, bool) and isinstance(scope, str) and
                isinstance(subject, str) and (patient is None or isinstance(patient, str))):
            raise CdsAuthError("fhirAuthorization lacks access_token, a Bearer token_type, "
                               "expires_in, scope or subject")
        return cls(Secret(token), token_type, expires_in, scope, subject, patient)


class CdsAuthenticator:
    def __init__(self, settings: WebSettings, store: Store, http: httpx.AsyncClient, *,
                 clock: Callable[[], float] = time.time, keys: JwksCache | None = None
                 ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self.keys = keys or JwksCache(http, ttl=settings.jwks_ttl_seconds, clock=clock)

    async def authenticate(self, authorization: str | None, endpoint_url: str) -> CdsClient:
        """The caller of `endpoint_url` (the exact URL the EHR called) from its
        Authorization header. Raises CdsAuthError."""
        try:
            return await self._authenticate(authorization, endpoint_url)
        except (JwtRejected, CdsAuthError) as exc:
            log.warning("CDS Hooks call to %s refused: %s", endpoint_url, exc.reason)
            raise CdsAuthError(exc.reason) from None

    async def _authenticate(self, authorization: str | None, endpoint_url: str) -> CdsClient:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CdsAuthError("no bearer token in the Authorization header")
        settings = self._settings
        header = unverified_header(token)
        alg = header.get("alg")
        if alg not in settings.cds_algorithms:
            raise CdsAuthError(f"alg {alg!r} is not allowed (allowed: "
                               f"{', '.join(settings.cds_algorithms)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise CdsAuthError("the JWT header has no kid")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise CdsAuthError(f"the JWT header's typ is {typ!r}, not JWT")
        iss = unverified_claims(token).get("iss")
        issuer = settings.cds_issuer_for(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise CdsAuthError(f"iss {iss!r} is not a trusted CDS client")
        jku = header.get("jku")
        if jku is not None and not (isinstance(jku, str) and same_url(jku, issuer.jwks_url)):
            raise CdsAuthError(f"jku {jku!r} is not the JWKS URL configured for {issuer.iss}")
        now = self._clock()
        skew = settings.clock_skew_seconds
        try:
            _, claims = await verified_claims(
                token, keys=self.keys, jwks_url=issuer.jwks_url,
                algorithms=settings.cds_algorithms, audience=endpoint_url,
                required=("iss", "aud", "exp", "iat", "jti"), now=now, leeway=skew)
        except JwtRejected as exc:
            raise CdsAuthError(f"{issuer.iss}: {exc.reason}") from None
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise CdsAuthError(f"{issuer.iss}: jti is not a string of at most 256 characters")
        if claims["exp"] - claims["iat"] > settings.cds_max_jwt_lifetime_seconds:
            raise CdsAuthError(f"{issuer.iss}: the JWT is valid for "
                               f"{int(claims['exp'] - claims['iat'])} s, more than the "
                               f"{settings.cds_max_jwt_lifetime_seconds} s allowed")
        # Recorded only after the signature verified, so forged tokens cannot fill the
        # table; kept until the JWT could no longer pass the exp check anyway.
        if not self._store.remember_jti(issuer.iss, jti, float(claims["exp"]) + skew):
            raise CdsAuthError(f"{issuer.iss}: jti was already used (a replayed request)")
        tenant, subject = claims.get("tenant"), claims.get("sub")
        return CdsClient(issuer=issuer.iss, kid=kid, alg=str(alg), jti=jti,
                         tenant=tenant if isinstance(tenant, str) else None,
                         subject=subject if isinstance(subject, str) else None)
