"""Client authentication to a FHIR server, as `httpx.Auth` flows.

- `BearerToken`: a static token (from an environment variable or a file).
- `SmartBackendAuth`: SMART Backend Services — discover the token endpoint from
  `{base}/.well-known/smart-configuration`, then a `client_credentials` grant
  authenticated by a one-time JWT signed RS384/ES384 (private_key_jwt).
- `ClientSecretBasic`: a `client_credentials` grant with HTTP Basic client authentication.
- `NoCredentials`: nothing is sent; a 401 then says that no credentials are configured
  (and that PREVISIT_TOKEN is ignored when it is set but auth.method is none).

Token flows cache the access token until shortly before `expires_in` runs out, and when
the FHIR server answers 401 they fetch a new token once and send the request again (the
generator-based flow httpx's own DigestAuth uses). Under asyncio, concurrent requests share
one token fetch. Secrets and tokens never appear in logs, reprs or exception messages.
Spec: hl7.org/fhir/smart-app-launch/backend-services.html and
client-confidential-asymmetric.html (SMART App Launch 2.x).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import stat
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt

from previsit.config import AuthConfig
from previsit.errors import AuthError, KeyFileError
from previsit.jsonio import object_or_none
from previsit.keys import Algorithm, PrivateKey, check_key_algorithm, load_private_key
from previsit.scopes import run_permissions, scope_text

log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The authentication JWT's exp "SHALL be no more than five minutes in the future"; a
# little less leaves room for our clock running ahead of the authorization server's.
ASSERTION_LIFETIME_S = 240
# Refresh this long before the token's own expiry so a request never leaves with a token
# that dies in flight; capped at a fifth of the lifetime for very short-lived tokens.
REFRESH_MARGIN_S = 60.0


class Secret:
    """A secret string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class NoCredentials(httpx.Auth):
    """auth.method = "none": requests go without credentials. A 401 is then not "the server
    refused our credentials" — there were none — so it becomes an AuthError saying what to
    configure (naming a token variable that is set but unused)."""

    def __init__(self, unused_token_env: str | None = None) -> None:
        self._unused = unused_token_env

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        if response.status_code == 401:
            raise AuthError(unauthenticated_message(request, self._unused))

    def __repr__(self) -> str:
        return "NoCredentials()"


def unauthenticated_message(request: httpx.Request, unused_token_env: str | None) -> str:
    where = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
    message = (f"{where} answered HTTP 401 (it needs credentials) and none are configured: "
               "auth.method is \"none\"")
    if unused_token_env:
        message += (f"; {unused_token_env} is set but is only sent with auth.method = "
                    "\"bearer\" (set it in [auth], or PREVISIT_AUTH_METHOD=bearer)")
    else:
        message += "; set [auth] method (bearer, client-secret or smart-backend)"
    return message


class BearerToken(httpx.Auth):
    """A static bearer token, sent as `Authorization: Bearer …` on every request."""

    def __init__(self, token: str | Secret) -> None:
        self._token = token if isinstance(token, Secret) else Secret(token)
        if not self._token.reveal().strip():
            raise AuthError("the bearer token is empty")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.reveal().strip()}"
        yield request

    def __repr__(self) -> str:
        return "BearerToken(********)"


@dataclass(frozen=True)
class _AccessToken:
    value: Secret
    expires_at: float | None  # clock() time after which it is not used; None: until a 401
    scope: str | None = None  # what the token response says was granted


class _ClientCredentialsAuth(httpx.Auth):
    """The client_credentials grant; subclasses say how the client authenticates itself."""

    requires_response_body = True

    def __init__(self, *, base_url: str | None, token_url: str | None, scope: str,
                 clock: Callable[[], float] = time.time) -> None:
        if token_url is None and base_url is None:
            raise AuthError("no token endpoint: set auth.token_url (or the FHIR base URL, "
                            "to discover it from .well-known/smart-configuration)")
        self._base_url = base_url.rstrip("/") if base_url else None
        self._token_url = token_url
        self._scope = scope
        self._clock = clock
        self._token: _AccessToken | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    # --- what a subclass provides --------------------------------------------------

    def client_authentication(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        """(extra form fields, extra headers) that authenticate this client."""
        raise NotImplementedError

    # --- the flow -------------------------------------------------------------------

    @property
    def token_url(self) -> str | None:
        return self._token_url

    @property
    def requested_scope(self) -> str:
        return self._scope

    @property
    def granted_scope(self) -> str | None:
        """The scope of the current token: the token response's `scope`, or, when the
        response leaves it out, the scope asked for (RFC 6749 §5.1: omitted means "as
        requested"). None before any token was issued."""
        if self._token is None:
            return None
        return self._token.scope if self._token.scope is not None else self._scope

    def _valid(self) -> bool:
        token = self._token
        return token is not None and (token.expires_at is None or
                                      self._clock() < token.expires_at)

    def _token_flow(self) -> Generator[httpx.Request, httpx.Response, None]:
        """Discover the token endpoint if needed, then fetch and store an access token."""
        if self._token_url is None:
            response = yield self._discovery_request()
            self._token_url = self._accept_discovery(response)
        response = yield self._token_request(self._token_url)
        self._token = self._accept_token(response, self._token_url)

    def _current(self) -> _AccessToken:
        if self._token is None:  # _token_flow either stores a token or raises
            raise AuthError("no access token after the token request")
        return self._token

    @staticmethod
    def _authorized(request: httpx.Request, token: _AccessToken) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token.value.reveal()}"
        return request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # The synchronous flow (httpx.Client). Not shared across threads: a token fetch
        # may then happen twice, which is harmless.
        if not self._valid():
            yield from self._token_flow()
        sent_with = self._current()
        response = yield self._authorized(request, sent_with)
        if response.status_code == 401:
            if self._token is sent_with:
                yield from self._token_flow()
            yield self._authorized(request, self._current())

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # One lock per event loop: concurrent requests wait for the one token fetch in
        # flight instead of each asking for a token. The token is captured under the lock
        # and only ever replaced (never cleared), so a concurrent refresh cannot leave a
        # request without one. A 401 refreshes once, unless another request already
        # replaced the refused token; a second 401 goes back to the caller.
        refused: _AccessToken | None = None
        while True:
            async with self._async_lock():
                stale = not self._valid() if refused is None else self._token is refused
                if stale:
                    flow = self._token_flow()
                    step = next(flow)
                    while True:
                        response = yield step
                        await response.aread()
                        try:
                            step = flow.send(response)
                        except StopIteration:
                            break
                token = self._current()
            response = yield self._authorized(request, token)
            if response.status_code != 401 or refused is not None:
                return
            refused = token

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    # --- requests and responses --------------------------------------------------------

    def _discovery_request(self) -> httpx.Request:
        assert self._base_url is not None
        return httpx.Request("GET", f"{self._base_url}/.well-known/smart-configuration",
                             headers={"Accept": "application/json"})

    def _accept_discovery(self, response: httpx.Response) -> str:
        where = f"{self._base_url}/.well-known/smart-configuration"
        if response.status_code != 200:
            raise AuthError(f"{where} answered HTTP {response.status_code}: the server does "
                            "not publish its SMART configuration; set auth.token_url")
        body = object_or_none(response.content)
        token_url = body.get("token_endpoint") if body else None
        if not isinstance(token_url, str) or not token_url.startswith(("https://", "http://")):
            raise AuthError(f"{where} has no token_endpoint; set auth.token_url")
        return token_url

    def _token_request(self, token_url: str) -> httpx.Request:
        fields, headers = self.client_authentication(token_url)
        form = {"grant_type": "client_credentials", "scope": self._scope, **fields}
        return httpx.Request("POST", token_url, data=form,
                             headers={"Accept": "application/json", **headers})

    def _accept_token(self, response: httpx.Response, token_url: str) -> _AccessToken:
        body = object_or_none(response.content)
        if response.status_code != 200:
            # RFC 6749 §5.2: {"error": "invalid_client", "error_description": "..."}
            reason = ""
            if body and isinstance(body.get("error"), str):
                reason = f": {body['error']}"
                if isinstance(body.get("error_description"), str):
                    reason += f" ({body['error_description']})"
            raise AuthError(f"the token endpoint {token_url} refused the request with "
                            f"HTTP {response.status_code}{reason}")
        token = body.get("access_token") if body else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"the token endpoint {token_url} answered without an access_token")
        token_type = body.get("token_type") if body else None
        if isinstance(token_type, str) and token_type.lower() != "bearer":
            raise AuthError(f"the token endpoint {token_url} issued a {token_type!r} token; "
                            "only bearer tokens are supported")
        expires_in = body.get("expires_in") if body else None
        expires_at = None
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
            margin = min(REFRESH_MARGIN_S, float(expires_in) / 5)
            expires_at = self._clock() + float(expires_in) - margin
        granted = body.get("scope") if body else None
        return _AccessToken(Secret(token), expires_at,
                            granted if isinstance(granted, str) else None)


class SmartBackendAuth(_ClientCredentialsAuth):
    """SMART Backend Services: client_credentials with a private_key_jwt client assertion."""

    def __init__(self, *, client_id: str, private_key: PrivateKey, key_id: str,
                 algorithm: Algorithm = "RS384", scope: str, base_url: str | None = None,
                 token_url: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(base_url=base_url, token_url=token_url, scope=scope, clock=clock)
        if not client_id:
            raise AuthError("SMART backend auth needs auth.client_id (assigned by the EHR "
                            "when the public key was registered)")
        if not key_id:
            raise AuthError("SMART backend auth needs auth.key_id: the kid of the key "
                            "registered with the EHR (printed by `previsit keys generate`)")
        try:
            check_key_algorithm(private_key, algorithm, where="auth.private_key_file")
        except KeyFileError as exc:
            raise AuthError(str(exc)) from None
        self._client_id = client_id
        self._key = private_key
        self._kid = key_id
        self._algorithm = algorithm

    def client_assertion(self, token_url: str) -> str:
        """A one-time authentication JWT for `token_url`."""
        now = int(self._clock())
        claims = {"iss": self._client_id, "sub": self._client_id, "aud": token_url,
                  "iat": now, "exp": now + ASSERTION_LIFETIME_S, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._key, algorithm=self._algorithm,
                          headers={"kid": self._kid, "typ": "JWT"})

    def client_authentication(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        return ({"client_assertion_type": CLIENT_ASSERTION_TYPE,
                 "client_assertion": self.client_assertion(token_url)}, {})

    def __repr__(self) -> str:
        return (f"SmartBackendAuth(client_id={self._client_id!r}, kid={self._kid!r}, "
                f"alg={self._algorithm!r}, token_url={self._token_url!r})")


class ClientSecretBasic(_ClientCredentialsAuth):
    """client_credentials with the client id and secret in HTTP Basic (RFC 6749 §2.3.1)."""

    def __init__(self, *, client_id: str, client_secret: str | Secret, scope: str,
                 base_url: str | None = None, token_url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(base_url=base_url, token_url=token_url, scope=scope, clock=clock)
        if not client_id:
            raise AuthError("client-secret auth needs auth.client_id")
        self._client_id = client_id
        self._secret = client_secret if isinstance(client_secret, Secret) \
            else Secret(client_secret)

    def client_authentication(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
        pair = f"{quote(self._client_id, safe='')}:{quote(self._secret.reveal(), safe='')}"
        encoded = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        return {}, {"Authorization": f"Basic {encoded}"}

    def __repr__(self) -> str:
        return f"ClientSecretBasic(client_id={self._client_id!r}, token_url={self._token_url!r})"


# --- from configuration -------------------------------------------------------------------


def auth_from_config(config: AuthConfig, base_url: str | None, env: Mapping[str, str], *,
                     scope: str | None = None) -> httpx.Auth:
    """The auth flow the configuration asks for; secrets from files or environment only.

    `scope` is what the command needs (config.requested_scope for a run); auth.scope, when
    set, is used instead; else the reads and writes of a run without sheets.
    Raises AuthError naming the variable or file to set when a secret is missing.
    """
    if config.method == "none":
        token_env = config.token_env or "PREVISIT_TOKEN"
        return NoCredentials(token_env if env.get(token_env, "").strip() else None)
    scope = config.scope or scope or scope_text(run_permissions(sheets=False),
                                                config.scope_version)
    if config.method == "bearer":
        token = read_secret("bearer token", env, config.token_env, config.token_file,
                        env_key="auth.token_env", file_key="auth.token_file")
        return BearerToken(token)
    if config.method == "smart-backend":
        if not config.client_id:
            raise AuthError("auth.method is smart-backend but auth.client_id is not set "
                            "(the client id the EHR assigned)")
        if config.private_key_file is None:
            raise AuthError("auth.method is smart-backend but auth.private_key_file is not "
                            "set (create one with `previsit keys generate`)")
        if not config.key_id:
            raise AuthError("auth.method is smart-backend but auth.key_id is not set (the "
                            "kid printed with the JWKS you registered)")
        _warn_if_readable_by_others(config.private_key_file)
        try:
            key = load_private_key(config.private_key_file, config.algorithm)
        except KeyFileError as exc:
            raise AuthError(f"auth.private_key_file: {exc}") from None
        return SmartBackendAuth(client_id=config.client_id, private_key=key,
                                key_id=config.key_id, algorithm=config.algorithm,
                                scope=scope, base_url=base_url,
                                token_url=config.token_url)
    if config.method == "client-secret":
        if not config.client_id:
            raise AuthError("auth.method is client-secret but auth.client_id is not set")
        secret = read_secret("client secret", env, config.client_secret_env,
                         config.client_secret_file, env_key="auth.client_secret_env",
                         file_key="auth.client_secret_file")
        return ClientSecretBasic(client_id=config.client_id, client_secret=secret,
                                 scope=scope, base_url=base_url,
                                 token_url=config.token_url)
    raise AuthError(f"unknown auth.method {config.method!r}")


def read_secret(what: str, env: Mapping[str, str], env_name: str | None, file: Path | None,
                *, env_key: str, file_key: str) -> Secret:
    """A secret from the file named in the configuration, else the environment variable it
    names — never from the configuration itself. AuthError names what to set."""
    if file is not None:
        _warn_if_readable_by_others(file)
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"{file_key} = {file}: cannot read the {what} "
                            f"({exc.strerror})") from None
        if not value:
            raise AuthError(f"{file_key} = {file}: the file is empty; put the {what} in it")
        return Secret(value)
    if env_name:
        value = env.get(env_name, "").strip()
        if value:
            return Secret(value)
        raise AuthError(f"no {what}: set the environment variable {env_name} (named by "
                        f"{env_key}) or point {file_key} at a file that holds it")
    raise AuthError(f"no {what}: set {env_key} (an environment variable's name) or "
                    f"{file_key}")


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it will fail with a clear message
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s can be read by other users of this machine; run: chmod 600 %s",
                    path, path)
