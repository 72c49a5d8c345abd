"""SMART App Launch 2.x client: EHR and standalone launch, PKCE S256, tokens kept server-side.

Spec: hl7.org/fhir/smart-app-launch (app-launch.html, scopes-and-launch-context.html,
client-confidential-symmetric.html, client-confidential-asymmetric.html).

The flow, and where each check lives:

1. `/launch?iss=…&launch=…` → `SmartApp.begin_ehr_launch()`: the issuer must be configured
   (compared normalised: production Medplum sends `…/fhir/R4/`); `aud` is the configured
   spelling. Discovery from `{iss}/.well-known/smart-configuration`, cached per issuer:
   endpoints over https (loopback excepted) on the issuer's origin unless the
   configuration names another. A random state (256 bits) keys a server-side record of
   everything the callback needs (PKCE verifier, nonce, redirect URI, scope), so the round
   trip needs no cookie — inside an EHR iframe third-party cookies may be blocked. A
   launch cookie (`binder`) adds browser binding where the browser keeps it.
2. `/callback?code=…&state=…` → `SmartApp.complete_launch()`: the state is consumed
   atomically (unknown, used, expired: refused), `error=` answers become
   `AuthorizationDenied`, the code is exchanged (public: PKCE and client_id; symmetric:
   `client_secret_basic`; asymmetric: `private_key_jwt`), the id token verified by its own
   kid/alg against the issuer's JWKS, and a session stored with the launch context.
3. `SmartApp.access_token()` refreshes with the refresh token when the access token is
   about to expire, on demand only: nothing here polls (Medplum allows ~160 requests a
   minute per address on its auth endpoints).

Medplum as an authorization server (DESIGN.md): iss with a trailing slash; id token
ES256 though discovery says RS256; `fhirUser` only in the id token and relative; refresh
tokens only with offline_access; scopes granted as asked and `patient/` scopes not
confined to the launch patient — see `confinement.py`, which previsit applies itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urljoin

import httpx

from previsit.auth import (
    REFRESH_MARGIN_S,
    ClientSecretBasic,
    Secret,
    SmartBackendAuth,
    read_secret,
)
from previsit.errors import AuthError, KeyFileError, PrevisitError
from previsit.jsonio import object_or_none
from previsit.keys import load_private_key
from previsit.web.cache import TtlCache
from previsit.web.jwks import JwksCache, JwtRejected, verified_claims
from previsit.web.settings import SmartIssuer, WebSettings
from previsit.web.store import (
    LaunchLevel,
    LaunchMode,
    LaunchState,
    Session,
    Store,
    TokenSet,
    binder_hash,
)
from previsit.web.urls import UrlError, normalize_url, origin_of, require_secure, same_url

log = logging.getLogger(__name__)

# Id tokens: what SMART servers sign with (RS256 is the one SMART requires servers to
# support; Medplum uses ES256). Never `none` or HS*.
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
# Types a fhirUser may be (scopes-and-launch-context.html).
FHIR_USER_TYPES = frozenset({"Practitioner", "PractitionerRole", "Patient", "RelatedPerson",
                             "Person"})
# Written when acting on proposals: accept (a new order based on the proposal) and dismiss
# (the proposal revoked), each recorded as a Provenance.
ACTION_PERMISSIONS: Mapping[str, str] = {"ServiceRequest": "cu", "MedicationRequest": "cu",
                                         "Provenance": "c"}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PERMISSION_ORDER = "cruds"
_BINDER = re.compile(r"^[A-Za-z0-9_-]{43}$")
_OAUTH_ERROR = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$")  # RFC 6749 error codes


class SmartLaunchError(PrevisitError):
    """A launch that cannot go on; the message is safe to show on the error page."""


class SmartConfigError(SmartLaunchError):
    """The `[web]` configuration of an issuer cannot be used (missing secret or key)."""


class UnknownIssuerError(SmartLaunchError):
    def __init__(self, iss: str) -> None:
        super().__init__(f"previsit is not configured for the FHIR server {iss!r}; an "
                         "administrator can add it to [[web.issuers]]")


class DiscoveryError(SmartLaunchError):
    """The EHR's SMART configuration is missing, malformed or points somewhere untrusted."""


class AuthorizationDenied(SmartLaunchError):
    """The authorization server answered the redirect with `error=`."""

    def __init__(self, error: str, description: str | None) -> None:
        self.error = error
        self.description = description
        text = f"the EHR refused the sign-in ({error})"
        super().__init__(f"{text}: {description}" if description else text)


class TokenExchangeError(SmartLaunchError):
    """The token endpoint refused or answered something unusable."""


class IdTokenError(SmartLaunchError):
    """The id token does not verify; `reason` is precise (for the log)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the EHR's identity token cannot be trusted: {reason}")


class SessionExpiredError(SmartLaunchError):
    def __init__(self, why: str = "the session has ended") -> None:
        super().__init__(f"{why}; launch the app again from the EHR")


# --- scopes -------------------------------------------------------------------------------


def requested_scope(*, mode: LaunchMode, level: LaunchLevel, read_types: Sequence[str],
                    actions: bool, refresh: Literal["offline_access", "online_access", "none"]
                    ) -> str:
    """The smallest SMART v2 scope set the app works with.

    One scope per resource type, with the permissions merged (`patient/ServiceRequest.crus`
    rather than `.rs` plus `.cu`): Medplum applies the first scope it finds for a type,
    so a separate read scope listed first would make the type read-only — the same
    reason no wildcard (`patient/*.rs`) is ever asked for.
    """
    if level == "patient":
        context = ["launch"] if mode == "ehr" else ["launch/patient"]
    else:  # the schedule view: no patient in context
        context = ["launch"] if mode == "ehr" else []
    permissions: dict[str, set[str]] = {}
    for resource_type in read_types:
        permissions.setdefault(resource_type, set()).update("rs")
    if actions:
        for resource_type, granted in ACTION_PERMISSIONS.items():
            permissions.setdefault(resource_type, set()).update(granted)
    resource_scopes = [
        f"{level}/{resource_type}.{''.join(p for p in _PERMISSION_ORDER if p in perms)}"
        for resource_type, perms in permissions.items()]
    extra = [] if refresh == "none" else [refresh]
    return " ".join([*context, "openid", "fhirUser", *extra, *resource_scopes])


# --- PKCE ---------------------------------------------------------------------------------


def code_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_code_verifier() -> Secret:
    # 64 characters from the unreserved set (RFC 7636 allows 43-128): 384 bits.
    return Secret(secrets.token_urlsafe(48))


# --- discovery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SmartConfiguration:
    issuer: str  # the registered FHIR base this configuration belongs to
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    oidc_issuer: str | None  # the `issuer` member: what id tokens carry as `iss`
    capabilities: frozenset[str]
    code_challenge_methods: tuple[str, ...]


class SmartDiscovery:
    """`.well-known/smart-configuration` per issuer, cached for `ttl` seconds."""

    def __init__(self, http: httpx.AsyncClient, *, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._http = http
        self._clock = clock
        self._cache: TtlCache[SmartConfiguration] = TtlCache(ttl=ttl, clock=clock)

    @property
    def fetches(self) -> int:
        return self._cache.fetches

    async def configuration(self, issuer: SmartIssuer) -> SmartConfiguration:
        async def fetch() -> SmartConfiguration:
            return await self._fetch(issuer)

        return (await self._cache.get(normalize_url(issuer.iss), fetch)).value

    async def _fetch(self, issuer: SmartIssuer) -> SmartConfiguration:
        url = f"{issuer.iss.rstrip('/')}/.well-known/smart-configuration"
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise DiscoveryError(f"cannot reach {url} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise DiscoveryError(f"{url} answered HTTP {response.status_code}: the EHR does "
                                 "not publish its SMART configuration there")
        body = object_or_none(response.content)
        if body is None:
            raise DiscoveryError(f"{url} did not answer with a JSON object")
        allowed = {origin_of(issuer.iss), *(origin_of(o) for o in issuer.endpoint_origins)}

        def endpoint(name: str) -> str:
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise DiscoveryError(f"{url} has no {name}")
            try:
                normal = require_secure(value, name)
            except UrlError as exc:
                raise DiscoveryError(f"{url}: {exc}") from None
            if origin_of(normal) not in allowed:
                raise DiscoveryError(
                    f"{url}: {name} {value!r} is on another origin than the FHIR server; "
                    "if that is right, add its origin to the issuer's endpoint_origins")
            return value

        methods = body.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise DiscoveryError(f"{url}: the server does not support PKCE S256, which "
                                 "SMART App Launch 2 requires")
        capabilities = body.get("capabilities")
        oidc_issuer = body.get("issuer")
        return SmartConfiguration(
            issuer=issuer.iss,
            authorization_endpoint=endpoint("authorization_endpoint"),
            token_endpoint=endpoint("token_endpoint"),
            jwks_uri=endpoint("jwks_uri"),
            oidc_issuer=oidc_issuer if isinstance(oidc_issuer, str) else None,
            capabilities=frozenset(c for c in capabilities if isinstance(c, str))
            if isinstance(capabilities, list) else frozenset(),
            code_challenge_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list) else ())


# --- token responses ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenResponse:
    """A token endpoint's answer. Tokens are Secrets: they never show in reprs or logs."""

    access_token: Secret
    expires_in: float | None
    scope: str | None  # as granted; may just echo the request, unvalidated by the server
    refresh_token: Secret | None
    id_token: Secret | None
    patient: str | None
    encounter: str | None
    appointment: str | None  # "Appointment/<id>" from fhirContext
    need_patient_banner: bool | None
    tenant: str | None

    @classmethod
    def parse(cls, body: Mapping[str, Any], *, where: str) -> TokenResponse:
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenExchangeError(f"{where} answered without an access_token")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenExchangeError(f"{where} issued a {token_type!r} token; only bearer "
                                     "tokens are supported")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) \
                or expires_in <= 0:
            expires_in = None
        return cls(
            access_token=Secret(token),
            expires_in=float(expires_in) if expires_in is not None else None,
            scope=_str(body.get("scope")),
            refresh_token=_secret_value(body.get("refresh_token")),
            id_token=_secret_value(body.get("id_token")),
            patient=_fhir_id(body.get("patient"), "patient", where),
            encounter=_fhir_id(body.get("encounter"), "encounter", where),
            appointment=_appointment(body.get("fhirContext")),
            need_patient_banner=body.get("need_patient_banner")
            if isinstance(body.get("need_patient_banner"), bool) else None,
            tenant=_str(body.get("tenant")))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _secret_value(value: object) -> Secret | None:
    return Secret(value) if isinstance(value, str) and value else None


def _fhir_id(value: object, name: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not FHIR_ID.match(value):
        raise TokenExchangeError(f"{where} sent a {name} that is not a FHIR id")
    return value


def _appointment(context: object) -> str | None:
    """The Appointment the EHR launched from, if `fhirContext` names one with the (default)
    launch role."""
    if not isinstance(context, list):
        return None
    for item in context:
        if not isinstance(item, dict) or item.get("role", "launch") != "launch":
            continue
        reference = item.get("reference")
        if isinstance(reference, str) and reference.startswith("Appointment/") \
                and FHIR_ID.match(reference.removeprefix("Appointment/")):
            return reference
    return None


# --- who acts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """The signed-in user, from the id token's fhirUser (resolved against the FHIR base)."""

    reference: str  # absolute URL, e.g. https://ehr.example/fhir/R4/Practitioner/123
    resource_type: str
    id: str
    subject: str  # the id token's `sub`


def resolve_fhir_user(fhir_user: str, fhir_base: str) -> Actor | None:
    """`Practitioner/123` or an absolute URL → Actor (subject left empty); None if it does
    not name a resource of a type a user can be."""
    absolute = urljoin(fhir_base.rstrip("/") + "/", fhir_user)
    parts = absolute.rstrip("/").split("/")
    if "_history" in parts:  # a versioned reference names the same user
        parts = parts[:parts.index("_history")]
    if len(parts) < 2:
        return None
    resource_type, resource_id = parts[-2], parts[-1]
    if resource_type not in FHIR_USER_TYPES or not FHIR_ID.match(resource_id):
        return None
    return Actor("/".join(parts), resource_type, resource_id, "")


# --- client authentication at the token endpoint -----------------------------------------


class _TokenClient:
    """How one configured client authenticates at its token endpoint."""

    def __init__(self, issuer: SmartIssuer, env: Mapping[str, str]) -> None:
        self.issuer = issuer
        # Reuse the backend-services flows' client authentication: one place that builds a
        # client assertion (RS384/ES384, aud = token URL, 5 min, unique jti) or a Basic
        # header (RFC 6749 §2.3.1 form-encoding).
        self._auth: SmartBackendAuth | ClientSecretBasic | None = None
        where = f"web.issuers[{issuer.iss}]"
        try:
            if issuer.client_type == "confidential-symmetric":
                secret = _secret_from(issuer, env, where)
                self._auth = ClientSecretBasic(client_id=issuer.client_id,
                                               client_secret=secret, scope="",
                                               base_url=issuer.iss)
            elif issuer.client_type == "confidential-asymmetric":
                assert issuer.private_key_file is not None and issuer.key_id is not None
                key = load_private_key(issuer.private_key_file, issuer.algorithm)
                self._auth = SmartBackendAuth(client_id=issuer.client_id, private_key=key,
                                              key_id=issuer.key_id,
                                              algorithm=issuer.algorithm, scope="",
                                              base_url=issuer.iss)
        except (AuthError, KeyFileError) as exc:
            raise SmartConfigError(f"{where}: {exc}") from None

    def authentication(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        """(form fields, headers) that identify this client to `token_url`."""
        if self._auth is None:  # a public client names itself; PKCE proves the rest
            return {"client_id": self.issuer.client_id}, {}
        return self._auth.client_authentication(token_url)


def _secret_from(issuer: SmartIssuer, env: Mapping[str, str], where: str) -> Secret:
    return read_secret("client secret", env, issuer.client_secret_env,
                       issuer.client_secret_file, env_key=f"{where}.client_secret_env",
                       file_key=f"{where}.client_secret_file")


# --- the app's side of the launch ---------------------------------------------------------


@dataclass(frozen=True, repr=False)
class AuthorizeRedirect:
    """Where to send the browser, and the launch cookie to set with that redirect."""

    url: str
    binder: Secret  # the launch cookie's value (see security.launch_cookie)
    expires_at: float

    def __repr__(self) -> str:
        return "AuthorizeRedirect(********)"


class SmartApp:
    """The SMART client side of `previsit serve`; one per worker process."""

    def __init__(self, settings: WebSettings, store: Store, http: httpx.AsyncClient, *,
                 env: Mapping[str, str], clock: Callable[[], float] = time.time,
                 discovery: SmartDiscovery | None = None, keys: JwksCache | None = None
                 ) -> None:
        self._settings = settings
        self._store = store
        self._http = http
        self._clock = clock
        self.discovery = discovery or SmartDiscovery(http, ttl=settings.discovery_ttl_seconds,
                                                     clock=clock)
        self.keys = keys or JwksCache(http, ttl=settings.jwks_ttl_seconds, clock=clock)
        # Built now so a missing secret or key file stops `previsit serve` at start-up,
        # not the first clinician who launches.
        self._clients = {normalize_url(i.iss): _TokenClient(i, env) for i in settings.issuers}
        self._refresh_locks: dict[str, asyncio.Lock] = {}

    def issuer(self, iss: str) -> SmartIssuer:
        """The configured issuer `iss` names; UnknownIssuerError otherwise (show it, never
        redirect: an unknown iss must not learn anything about our client)."""
        found = self._settings.issuer_for(iss)
        if found is None:
            raise UnknownIssuerError(iss)
        return found

    async def begin_ehr_launch(self, iss: str, launch: str, *,
                               level: LaunchLevel = "patient", binder: str | None = None
                               ) -> AuthorizeRedirect:
        """Start an EHR launch. `binder`: the launch cookie the browser already sent, if
        any, so that two launches at once in one browser (two patient tabs) both work."""
        if not launch or len(launch) > 2048:
            raise SmartLaunchError("the EHR's launch request has no usable launch "
                                   "parameter")
        return await self._begin(self.issuer(iss), "ehr", level, launch, binder)

    async def begin_standalone_launch(self, iss: str, *, level: LaunchLevel = "patient",
                                      binder: str | None = None) -> AuthorizeRedirect:
        return await self._begin(self.issuer(iss), "standalone", level, None, binder)

    async def _begin(self, issuer: SmartIssuer, mode: LaunchMode, level: LaunchLevel,
                     launch: str | None, known_binder: str | None) -> AuthorizeRedirect:
        config = await self.discovery.configuration(issuer)
        wanted = "launch-ehr" if mode == "ehr" else "launch-standalone"
        if config.capabilities and wanted not in config.capabilities:
            raise DiscoveryError(f"{issuer.iss} does not offer the {mode} launch "
                                 f"(capabilities lack {wanted})")
        settings = self._settings
        scope = requested_scope(mode=mode, level=level, read_types=settings.read_types,
                                actions=settings.enable_actions, refresh=settings.refresh)
        state = secrets.token_urlsafe(32)
        # One binder per browser, reused while its cookie lives; only our own 256-bit
        # tokens are reused, anything else is replaced.
        binder = Secret(known_binder if known_binder and _BINDER.match(known_binder)
                        else secrets.token_urlsafe(32))
        verifier = new_code_verifier()
        nonce = secrets.token_urlsafe(32) if settings.send_nonce else None
        now = self._clock()
        expires = now + settings.launch_minutes * 60
        self._store.save_launch_state(state, LaunchState(
            issuer=issuer.iss, mode=mode, level=level, redirect_uri=settings.redirect_uri,
            scope=scope, code_verifier=verifier, nonce=nonce,
            binder_hash=binder_hash(binder.reveal()), created_at=now, expires_at=expires))
        params = {"response_type": "code", "client_id": issuer.client_id,
                  "redirect_uri": settings.redirect_uri}
        if launch is not None:
            params["launch"] = launch
        params.update(scope=scope, state=state, aud=issuer.iss,
                      code_challenge=code_challenge(verifier.reveal()),
                      code_challenge_method="S256")
        if nonce is not None:
            params["nonce"] = nonce
        endpoint = config.authorization_endpoint
        separator = "&" if "?" in endpoint else "?"
        log.info("SMART %s launch for %s: redirecting to its authorization endpoint", mode,
                 issuer.iss)
        return AuthorizeRedirect(f"{endpoint}{separator}{urlencode(params)}", binder, expires)

    async def complete_launch(self, params: Mapping[str, str], *, binder: str | None
                              ) -> tuple[Secret, Session]:
        """Finish a launch from the redirect's query parameters; returns (session id for the
        cookie, session). `binder` is the launch cookie's value if the browser sent it."""
        state = params.get("state")
        if not state:
            raise SmartLaunchError("the EHR's answer has no state; launch the app again")
        launch = self._store.consume_launch_state(state)  # single use, even on error below
        issuer = self.issuer(launch.issuer)
        if binder is not None:
            if not secrets.compare_digest(binder_hash(binder), launch.binder_hash or ""):
                raise SmartLaunchError("this sign-in was started in another browser; "
                                       "launch the app again")
        elif self._settings.launch_cookie == "required":
            raise SmartLaunchError("the browser did not keep the launch cookie (third-party "
                                   "cookies blocked?); open the app in its own window")
        config = await self.discovery.configuration(issuer)
        answered_by = params.get("iss")
        if answered_by is not None and not (same_url(answered_by, issuer.iss) or (
                config.oidc_issuer is not None and same_url(answered_by, config.oidc_issuer))):
            # RFC 9207: an authorization server names itself; another one means a mix-up.
            raise SmartLaunchError("the sign-in answer came from another authorization "
                                   "server than the one asked")
        error = params.get("error")
        if error is not None:
            code = error if _OAUTH_ERROR.match(error) else "invalid_error"
            description = params.get("error_description")
            raise AuthorizationDenied(code, description[:200] if description else None)
        code_value = params.get("code")
        if not code_value:
            raise SmartLaunchError("the EHR's answer has neither a code nor an error")

        form = {"grant_type": "authorization_code", "code": code_value,
                "redirect_uri": launch.redirect_uri,
                "code_verifier": launch.code_verifier.reveal()}
        tokens = await self._token_request(issuer, config, form)
        if launch.level == "patient" and tokens.patient is None:
            raise TokenExchangeError("the EHR granted access without a patient in context; "
                                     "launch the app from a patient's chart")
        if tokens.id_token is None:
            raise IdTokenError("the token response has no id_token (openid was asked)")
        actor = await self.verify_id_token(tokens.id_token.reveal(), issuer, config,
                                           nonce=launch.nonce)
        now = self._clock()
        session = Session(
            issuer=issuer.iss, level=launch.level, user=actor.reference,
            patient=tokens.patient if launch.level == "patient" else None,
            encounter=tokens.encounter, appointment=tokens.appointment,
            scope_requested=launch.scope,
            scope_granted=tokens.scope if tokens.scope is not None else launch.scope,
            tokens=TokenSet(access_token=tokens.access_token,
                            expires_at=now + tokens.expires_in if tokens.expires_in else None,
                            refresh_token=tokens.refresh_token, id_token=tokens.id_token),
            created_at=now, expires_at=now + self._settings.session_hours * 3600)
        if tokens.scope is None:
            log.warning("%s granted tokens without saying which scopes; assuming the "
                        "requested ones", issuer.iss)
        session_id = self._store.create_session(session)
        log.info("SMART %s launch for %s completed (%s-level session)", launch.mode,
                 issuer.iss, launch.level)
        return session_id, session

    async def verify_id_token(self, token: str, issuer: SmartIssuer,
                              config: SmartConfiguration, *, nonce: str | None) -> Actor:
        """Check the id token (OIDC Core 3.1.3.7 as SMART profiles it) and say who acts."""
        expected_iss = issuer.id_token_issuer or config.oidc_issuer or issuer.iss
        try:
            _header, claims = await verified_claims(
                token, keys=self.keys, jwks_url=config.jwks_uri,
                algorithms=ID_TOKEN_ALGORITHMS, audience=issuer.client_id,
                required=("iss", "sub", "aud", "exp", "iat"), now=self._clock(),
                leeway=self._settings.clock_skew_seconds)
        except JwtRejected as exc:
            raise IdTokenError(exc.reason) from None
        if not isinstance(claims["iss"], str) or not same_url(claims["iss"], expected_iss):
            raise IdTokenError(f"iss {claims['iss']!r} is not {expected_iss}")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != issuer.client_id:
            raise IdTokenError("the token has several audiences and azp is not this client")
        if nonce is not None and not (isinstance(claims.get("nonce"), str) and
                                      secrets.compare_digest(claims["nonce"], nonce)):
            raise IdTokenError("nonce does not match the one sent")
        # SMART v2 names the claim fhirUser; v1 servers sent `profile`.
        fhir_user = claims.get("fhirUser", claims.get("profile"))
        if not isinstance(fhir_user, str) or not fhir_user:
            raise IdTokenError("no fhirUser claim: previsit cannot tell who acts")
        actor = resolve_fhir_user(fhir_user, issuer.iss)
        if actor is None:
            raise IdTokenError(f"fhirUser {fhir_user!r} is not a Practitioner, "
                               "PractitionerRole, Patient, RelatedPerson or Person")
        return Actor(actor.reference, actor.resource_type, actor.id, str(claims["sub"]))

    async def access_token(self, session_id: str) -> Secret:
        """The session's access token, refreshed first if it expires within a minute and a
        refresh token was granted. Raises SessionExpiredError when neither works."""
        session = self._store.session(session_id)
        if session is None:
            raise SessionExpiredError()
        if not self._needs_refresh(session):
            return session.tokens.access_token
        issuer = self.issuer(session.issuer)
        lock = self._refresh_locks.setdefault(normalize_url(issuer.iss), asyncio.Lock())
        async with lock:
            session = self._store.session(session_id)  # another task may have refreshed it
            if session is None:
                raise SessionExpiredError()
            if not self._needs_refresh(session):
                return session.tokens.access_token
            refresh = session.tokens.refresh_token
            if refresh is None:
                raise SessionExpiredError("the EHR's access token has expired")
            config = await self.discovery.configuration(issuer)
            try:
                fresh = await self._token_request(
                    issuer, config, {"grant_type": "refresh_token",
                                     "refresh_token": refresh.reveal()})
            except TokenExchangeError:
                self._store.delete_session(session_id)
                raise SessionExpiredError("the EHR did not renew access") from None
            now = self._clock()
            tokens = TokenSet(
                access_token=fresh.access_token,
                expires_at=now + fresh.expires_in if fresh.expires_in else None,
                # A server that rotates refresh tokens sends a new one; otherwise the old
                # one stays valid.
                refresh_token=fresh.refresh_token or refresh,
                id_token=session.tokens.id_token)
            if not self._store.replace_tokens(session_id, session, tokens,
                                              scope_granted=fresh.scope):
                stored = self._store.session(session_id)  # another worker won the race
                if stored is None:
                    raise SessionExpiredError()
                return stored.tokens.access_token
            return tokens.access_token

    def _needs_refresh(self, session: Session) -> bool:
        expires = session.tokens.expires_at
        return expires is not None and self._clock() >= expires - REFRESH_MARGIN_S

    async def _token_request(self, issuer: SmartIssuer, config: SmartConfiguration,
                             form: dict[str, str]) -> TokenResponse:
        url = config.token_endpoint
        fields, headers = self._clients[normalize_url(issuer.iss)].authentication(url)
        try:
            response = await self._http.post(
                url, data={**form, **fields},
                headers={"Accept": "application/json", **headers})
        except httpx.HTTPError as exc:
            raise TokenExchangeError(f"cannot reach the token endpoint {url} "
                                     f"({type(exc).__name__})") from None
        body = object_or_none(response.content)
        if response.status_code != 200:
            reason = ""
            if body and isinstance(body.get("error"), str) and _OAUTH_ERROR.match(body["error"]):
                reason = f": {body['error']}"
            raise TokenExchangeError(f"the token endpoint {url} refused with HTTP "
                                     f"{response.status_code}{reason}")
        if body is None:
            raise TokenExchangeError(f"the token endpoint {url} did not answer with JSON")
        return TokenResponse.parse(body, where=f"the token endpoint {url}")

