"""The `[web]` configuration of `previsit serve`: who may launch the app and call its services.

Secrets are never values here: a confidential client names the environment variable or
file that holds its secret or private key, and the keyring that encrypts tokens at rest is
a file (created on first use) or an environment variable's name.

TOML shape (the lead wires `WebSettings` into `previsit.config.Config` as `web`):

    [web]
    public_url = "https://previsit.clinic.example"
    frame_ancestors = ["https://ehr.clinic.example"]

    [[web.issuers]]
    iss = "https://api.medplum.com/fhir/R4"
    client_id = "0195…"
    client_type = "confidential-asymmetric"
    private_key_file = "previsit-app.pem"
    key_id = "…"

    [[web.cds_issuers]]
    iss = "https://ehr.clinic.example"
    jwks_url = "https://ehr.clinic.example/.well-known/jwks.json"
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from previsit.web.urls import is_loopback, normalize_url, require_secure, same_url

# What the planning engine reads for one patient (DESIGN.md, "PatientRecord"), as SMART
# scopes ask for it: one type at a time, never `*` (Medplum lets a wildcard read override
# type-specific writes).
DEFAULT_READ_TYPES: tuple[str, ...] = (
    "Patient", "Condition", "MedicationRequest", "Medication", "Observation", "Procedure",
    "Immunization", "ServiceRequest", "Encounter", "Appointment", "MedicationDispense",
    "MedicationStatement",
)
# Algorithms a CDS client may sign with. Asymmetric only: CDS Hooks forbids `none` and
# every shared-key (HS*) algorithm.
CdsAlgorithm = Literal["ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS256", "PS384"]
ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]

_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
# A CSP source expression for frame-ancestors: an origin, optionally with a `*.` host
# wildcard. Anything else (paths, quotes, `;`) could smuggle directives into the header.
_FRAME_ANCESTOR = re.compile(r"^https?://(\*\.)?[a-z0-9.-]+(:[0-9]{1,5})?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmartIssuer(_Model):
    """One EHR allowed to launch the app, with the client registration it issued."""

    # The FHIR base exactly as registered; sent back as `aud`. Launches are matched to it
    # with scheme/host case, default port and trailing slash ignored.
    iss: str
    client_id: str = Field(min_length=1)
    client_type: ClientType = "public"
    client_secret_env: str | None = None  # confidential-symmetric: variable holding the secret
    client_secret_file: Path | None = None  # … or a file holding it
    private_key_file: Path | None = None  # confidential-asymmetric: PEM private key
    key_id: str | None = None  # … the kid registered with the EHR
    algorithm: Literal["RS384", "ES384"] = "RS384"
    # Other origins allowed to host the authorization, token and JWKS endpoints (an
    # authorization server on its own host). By default they must share the FHIR origin.
    endpoint_origins: tuple[str, ...] = ()
    # The id token's `iss`. Default: the `issuer` of the SMART configuration (Medplum's is
    # the server root, not the FHIR base), else `iss`.
    id_token_issuer: str | None = None
    label: str | None = None  # how the standalone launch page names this EHR

    @field_validator("iss")
    @classmethod
    def _iss(cls, value: str) -> str:
        require_secure(value, "issuer")
        return value

    @field_validator("endpoint_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            normal = require_secure(origin, "endpoint origin")
            if normal.count("/") != 2:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.client_type == "confidential-symmetric" and not (
                self.client_secret_env or self.client_secret_file):
            raise ValueError(f"issuer {self.iss}: a confidential-symmetric client needs "
                             "client_secret_env or client_secret_file")
        if self.client_type == "confidential-asymmetric" and not (
                self.private_key_file and self.key_id):
            raise ValueError(f"issuer {self.iss}: a confidential-asymmetric client needs "
                             "private_key_file and key_id (see `previsit keys generate`)")
        return self


class CdsIssuer(_Model):
    """A CDS client (an EHR) whose signed JWTs the CDS Hooks services accept."""

    iss: str  # the JWT's `iss`, compared in normal form
    jwks_url: str  # where its public keys are; a `jku` header must name this same URL
    # The FHIR base of this EHR: the only server previsit reads with a request's
    # fhirAuthorization when prefetch is missing (a request's fhirServer must be this one),
    # and the base under which CDS feedback is kept for the nightly run (same as its
    # source.base_url). Unset: no fallback reads; feedback is kept under the request's
    # fhirServer.
    fhir_server: str | None = None
    label: str | None = None

    @field_validator("iss")
    @classmethod
    def _iss(cls, value: str) -> str:
        normalize_url(value)
        return value

    @field_validator("jwks_url", "fhir_server")
    @classmethod
    def _secure(cls, value: str | None, info: ValidationInfo) -> str | None:
        # previsit fetches keys from, and sends patients' tokens to, these: https only
        if value is not None:
            require_secure(value, info.field_name or "URL")
        return value


class WebSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8400, ge=1, le=65535)
    # Where browsers and the EHR reach the app (behind a proxy: the proxy's URL). The
    # redirect URI registered with every EHR is `{public_url}/callback`.
    public_url: str = "http://127.0.0.1:8400"
    state_db: Path = Path("previsit-web.sqlite3")
    # The keyring that encrypts tokens at rest: a file (created 0600 on first use) or the
    # name of an environment variable holding the keyring (takes precedence).
    keyring_file: Path = Path("previsit-web.keys")
    keyring_env: str | None = None
    session_hours: float = Field(default=8.0, gt=0, le=24)
    launch_minutes: float = Field(default=10.0, gt=0, le=60)  # from /launch to /callback
    # Origins of the EHR pages allowed to frame the app (CSP frame-ancestors).
    frame_ancestors: tuple[str, ...] = ()
    # "lax" when the app opens in its own window or tab; inside an EHR iframe on another
    # site a Lax cookie is never sent, so embedding needs "none" (sent Secure; Partitioned).
    session_cookie_samesite: Literal["lax", "none"] = "lax"
    # The launch cookie binds the OAuth round trip to the browser that started it. Inside
    # a third-party iframe the browser may drop it; "if-present" then relies on the
    # single-use state alone, "required" refuses such a callback.
    launch_cookie: Literal["if-present", "required"] = "if-present"
    enable_actions: bool = False  # ask for the write scopes that accept/dismiss proposals
    # Refresh tokens only come when asked. Medplum issues them only for offline_access.
    refresh: Literal["offline_access", "online_access", "none"] = "offline_access"
    read_types: tuple[str, ...] = DEFAULT_READ_TYPES
    send_nonce: bool = True  # OpenID nonce in the authorization request, checked in the id token
    issuers: tuple[SmartIssuer, ...] = ()
    discovery_ttl_seconds: float = Field(default=3600.0, gt=0)
    jwks_ttl_seconds: float = Field(default=3600.0, gt=0)
    clock_skew_seconds: float = Field(default=60.0, ge=0, le=600)
    cds_issuers: tuple[CdsIssuer, ...] = ()
    cds_algorithms: tuple[CdsAlgorithm, ...] = ("ES384", "RS384")
    # A CDS JWT valid for longer than this is refused (and replay records stay small).
    cds_max_jwt_lifetime_seconds: int = Field(default=3600, ge=1)
    # How long a declined finding stays suppressed for that patient (CDS feedback "overridden"
    # and dismissals in the app); older records are purged.
    feedback_suppression_months: int = Field(default=12, ge=1, le=120)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        normal = require_secure(value, "public_url")
        if "?" in normal:
            raise ValueError(f"public_url {value!r} must not have a query")
        return normal

    @field_validator("frame_ancestors")
    @classmethod
    def _frame_ancestors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for origin in value:
            normal = origin.strip().lower().rstrip("/")
            if not _FRAME_ANCESTOR.match(normal):
                raise ValueError(f"frame_ancestors: {origin!r} is not an origin such as "
                                 "https://ehr.example.org")
            if normal.startswith("http://") and not is_loopback(normal.replace("*.", "")):
                raise ValueError(f"frame_ancestors: {origin!r} is not https")
            out.append(normal)
        return tuple(out)

    @field_validator("read_types")
    @classmethod
    def _read_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _RESOURCE_TYPE.match(name):
                raise ValueError(f"read_types: {name!r} is not a FHIR resource type")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        seen: dict[str, str] = {}
        for issuer in self.issuers:
            key = normalize_url(issuer.iss)
            if key in seen:
                raise ValueError(f"issuers: {issuer.iss!r} and {seen[key]!r} are the same "
                                 "issuer; list it once")
            seen[key] = issuer.iss
        cds_seen: set[str] = set()
        for cds in self.cds_issuers:
            key = normalize_url(cds.iss)
            if key in cds_seen:
                raise ValueError(f"cds_issuers: {cds.iss!r} is listed twice")
            cds_seen.add(key)
        if self.session_cookie_samesite == "none" and not self.secure_cookies:
            raise ValueError("session_cookie_samesite = \"none\" needs an https public_url "
                             "(browsers drop SameSite=None cookies that are not Secure)")
        return self

    # --- derived values ---------------------------------------------------------------

    @property
    def redirect_uri(self) -> str:
        """The OAuth redirect URI to register with every EHR."""
        return f"{self.public_url}/callback"

    @property
    def secure_cookies(self) -> bool:
        """Cookies are Secure unless the app itself is served over http on loopback."""
        return self.public_url.startswith("https://")

    def issuer_for(self, iss: str) -> SmartIssuer | None:
        """The configured SMART issuer that `iss` names once both are normalised, if any."""
        return _named(self.issuers, iss)

    def cds_issuer_for(self, iss: str) -> CdsIssuer | None:
        """The configured CDS client that `iss` names once both are normalised, if any."""
        return _named(self.cds_issuers, iss)


_Issuer = TypeVar("_Issuer", SmartIssuer, CdsIssuer)


def _named(candidates: tuple[_Issuer, ...], iss: str) -> _Issuer | None:
    return next((c for c in candidates if same_url(c.iss, iss)), None)
