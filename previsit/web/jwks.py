"""Verifying a JWT against a trusted JWK Set: the id token of a SMART launch, the bearer JWT
of a CDS Hooks call.

The key is chosen by the token's own `kid` and `alg`, never by what a discovery document
advertises (production Medplum signs id tokens ES256 while its configuration says RS256),
and the algorithm must be on an allow-list of asymmetric ones and fit the key (`kty`,
curve, the JWK's own `alg`). `none` and HMAC algorithms are refused before any key is
looked up: with HS256, a public key would become a shared secret.

JWK Sets are fetched over https (loopback excepted), cached for a TTL, and fetched again
for an unknown `kid` (key rotation) at most once a minute per URL, so a stream of forged
tokens with made-up kids cannot make previsit hammer the EHR.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from previsit.errors import PrevisitError
from previsit.jsonio import object_or_none
from previsit.web.cache import TtlCache
from previsit.web.urls import UrlError, require_secure

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512"})
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
MIN_RSA_BITS = 2048
MIN_REFETCH_INTERVAL_S = 60.0


class JwtRejected(PrevisitError):
    """A JWT that does not verify. `reason` is precise, for the log; callers answer with
    something generic."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class JwksCache:
    """JWK Sets by URL, fetched through the injected client and kept for `ttl` seconds."""

    def __init__(self, http: httpx.AsyncClient, *, ttl: float = 3600.0,
                 min_refetch_interval: float = MIN_REFETCH_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._http = http
        self._min_refetch = min_refetch_interval
        self._clock = clock
        self._sets: TtlCache[tuple[dict[str, Any], ...]] = TtlCache(ttl=ttl, clock=clock)

    @property
    def fetches(self) -> int:
        return self._sets.fetches

    async def keys_for(self, jwks_url: str, kid: str | None, alg: str) -> list[Any]:
        """The public keys that may have signed a token with this header: the key with
        this `kid` (or, without a kid, every key fit for `alg`). Raises JwtRejected."""
        try:
            url = require_secure(jwks_url, "JWKS URL")
        except UrlError as exc:
            raise JwtRejected(str(exc)) from None

        async def fetch() -> tuple[dict[str, Any], ...]:
            return await self._fetch(url)

        key_set = await self._sets.get(url, fetch)
        matches = _matching(key_set.value, kid)
        if not matches and self._clock() - key_set.fetched_at >= self._min_refetch:
            key_set = await self._sets.get(url, fetch, refresh=True)  # keys may have rotated
            matches = _matching(key_set.value, kid)
        if not matches:
            raise JwtRejected(f"no key with kid {kid!r} in {url}" if kid is not None
                              else f"the token has no kid and {url} has no key")
        fitting = []
        problems = []
        for jwk in matches:
            problem = _misfit(jwk, alg)
            if problem:
                problems.append(problem)
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
            except jwt.PyJWTError as exc:
                problems.append(f"unusable key: {exc}")
                continue
            if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
                problems.append(f"an RSA key of {key.key_size} bits; at least "
                                f"{MIN_RSA_BITS} are required")
                continue
            fitting.append(key)
        if not fitting:
            raise JwtRejected(f"the key {kid!r} from {url} cannot verify {alg}: "
                              + "; ".join(problems))
        return fitting

    async def _fetch(self, url: str) -> tuple[dict[str, Any], ...]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise JwtRejected(f"cannot fetch the JWK Set {url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise JwtRejected(f"the JWK Set {url} answered HTTP {response.status_code}")
        body = object_or_none(response.content)
        keys = body.get("keys") if body is not None else None
        if not isinstance(keys, list):
            raise JwtRejected(f"the JWK Set {url} is not a JSON object with a `keys` array")
        return tuple(k for k in keys if isinstance(k, dict))


def _matching(keys: Sequence[dict[str, Any]], kid: str | None) -> list[dict[str, Any]]:
    if kid is None:
        return list(keys)
    return [k for k in keys if k.get("kid") == kid]


def _misfit(jwk: dict[str, Any], alg: str) -> str | None:
    """Why this JWK must not verify an `alg` signature, or None if it may."""
    if jwk.get("use") not in (None, "sig"):
        return f"the key is for use {jwk.get('use')!r}, not signatures"
    ops = jwk.get("key_ops")
    if ops is not None and "verify" not in ops:
        return "the key's key_ops do not include verify"
    if jwk.get("alg") not in (None, alg):
        return f"the key is for {jwk.get('alg')}, the token says {alg}"
    if alg.startswith(("RS", "PS")):
        if jwk.get("kty") != "RSA":
            return f"{alg} needs an RSA key, this is {jwk.get('kty')!r}"
    elif alg in _EC_CURVES:
        if jwk.get("kty") != "EC" or jwk.get("crv") != _EC_CURVES[alg]:
            return f"{alg} needs an EC key on {_EC_CURVES[alg]}, this is " \
                   f"{jwk.get('kty')!r} {jwk.get('crv')!r}"
    else:
        return f"{alg} is not an algorithm previsit verifies"
    return None


def unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise JwtRejected("not a JWS compact serialisation") from None
    return header


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims before any check, to find which issuer's keys to check them with."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise JwtRejected("the JWT's payload is not a JSON object") from None
    return claims


async def verified_claims(token: str, *, keys: JwksCache, jwks_url: str,
                          algorithms: Collection[str], audience: str,
                          required: Sequence[str], now: float, leeway: float
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT whose signature, audience and times check out.

    Raises JwtRejected with the precise reason. Checks: `alg` allowed and asymmetric; the
    key by `kid`; signature; `aud` contains `audience`; the `required` claims present;
    `exp` not past and `iat`/`nbf` not in the future, each with `leeway` seconds.
    """
    header = unverified_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS or alg not in algorithms:
        raise JwtRejected(f"alg {alg!r} is not allowed (allowed: "
                          f"{', '.join(sorted(set(algorithms) & ASYMMETRIC_ALGORITHMS))})")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtRejected("the JWT's kid is not a string")
    claims: dict[str, Any] | None = None
    for key in await keys.keys_for(jwks_url, kid, alg):
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=audience,
                options={"require": list(required), "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False})
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAudienceError:
            raise JwtRejected(f"aud is not {audience}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtRejected(f"the JWT has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise JwtRejected(f"the JWT is malformed: {exc}") from None
    if claims is None:
        raise JwtRejected(f"the {alg} signature does not verify with the key {kid!r}")
    check_times(claims, now=now, leeway=leeway)
    return header, claims


def check_times(claims: dict[str, Any], *, now: float, leeway: float) -> None:
    """exp, iat and nbf against `now` (injected: tests and replays use their own clock)."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise JwtRejected(f"the JWT's {name} is not a number")
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    if exp is not None and now > exp + leeway:
        raise JwtRejected(f"the JWT expired {int(now - exp)} s ago")
    if iat is not None and iat > now + leeway:
        raise JwtRejected(f"the JWT was issued {int(iat - now)} s in the future")
    if nbf is not None and nbf > now + leeway:
        raise JwtRejected(f"the JWT is not valid for another {int(nbf - now)} s")
