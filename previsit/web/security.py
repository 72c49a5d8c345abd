"""HTTP hardening for `previsit serve`: cookies, CSRF tokens, Content-Security-Policy, headers.

- The **session cookie** holds a random id and nothing else (no patient, no user): HttpOnly,
  Path=/, Secure unless the app runs over http on loopback (then no `__Host-` prefix, which
  requires Secure), SameSite=Lax by default. Inside an EHR iframe on another site a Lax
  cookie is never sent, so embedded deployments configure SameSite=None, sent with
  `Partitioned` (CHIPS: the cookie lives in the EHR site's partition, not as a tracker).
- The **launch cookie** binds an OAuth round trip to the browser that began it; it lives
  for the launch only and is optional by design (see smart.py).
- **CSRF**: a synchronizer token derived from the session id (HMAC), so it needs no storage,
  differs per session, and reveals nothing about the id; compared in constant time.
- **Headers**: a strict CSP (no scripts at all, styles from the app or by hash, framing
  only by the configured EHR origins), nosniff, no referrer, and `no-store` so patient
  pages stay out of caches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from previsit.errors import PrevisitError
from previsit.web.settings import WebSettings
from previsit.web.urls import origin_of, same_url

SESSION_COOKIE = "previsit_session"
LAUNCH_COOKIE = "previsit_launch"
CSRF_FIELD = "csrf_token"  # the form field (or X-CSRF-Token header) carrying the token
_CSRF_LABEL = b"previsit csrf v1"


class CsrfError(PrevisitError):
    """A state-changing request without a valid CSRF token for its session."""


# --- cookies ------------------------------------------------------------------------------


def session_cookie_name(settings: WebSettings) -> str:
    # `__Host-`: the browser accepts it only Secure, Path=/ and without Domain, so no
    # subdomain or plain-http page can plant or overwrite it.
    return f"__Host-{SESSION_COOKIE}" if settings.secure_cookies else SESSION_COOKIE


def launch_cookie_name(settings: WebSettings) -> str:
    return f"__Host-{LAUNCH_COOKIE}" if settings.secure_cookies else LAUNCH_COOKIE


def _cookie(name: str, value: str, *, max_age: int, secure: bool, samesite: str) -> str:
    if any(c in value for c in ";,\r\n \"\\"):
        raise ValueError("cookie values here are URL-safe random tokens")
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
             f"SameSite={samesite}"]
    if secure:
        parts.append("Secure")
    if samesite == "None":
        parts.append("Partitioned")
    return "; ".join(parts)


def session_cookie(settings: WebSettings, session_id: str) -> str:
    """The Set-Cookie value for a new session."""
    return _cookie(session_cookie_name(settings), session_id,
                   max_age=int(settings.session_hours * 3600),
                   secure=settings.secure_cookies,
                   samesite="None" if settings.session_cookie_samesite == "none" else "Lax")


def expired_session_cookie(settings: WebSettings) -> str:
    """The Set-Cookie value that removes the session cookie (logout)."""
    return _cookie(session_cookie_name(settings), "", max_age=0,
                   secure=settings.secure_cookies,
                   samesite="None" if settings.session_cookie_samesite == "none" else "Lax")


def launch_cookie(settings: WebSettings, binder: str) -> str:
    """The Set-Cookie value sent with the redirect to the authorization server.

    SameSite=None (Secure, Partitioned) when the app is served over https: the callback is
    a cross-site navigation from the authorization server, and inside an EHR iframe a
    Lax cookie would not come back. On loopback http, Lax (None requires Secure)."""
    secure = settings.secure_cookies
    return _cookie(launch_cookie_name(settings), binder,
                   max_age=int(settings.launch_minutes * 60), secure=secure,
                   samesite="None" if secure else "Lax")


def expired_launch_cookie(settings: WebSettings) -> str:
    secure = settings.secure_cookies
    return _cookie(launch_cookie_name(settings), "", max_age=0, secure=secure,
                   samesite="None" if secure else "Lax")


# --- CSRF ---------------------------------------------------------------------------------


def csrf_token(session_id: str) -> str:
    """The synchronizer token for this session's forms."""
    digest = hmac.new(session_id.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_csrf(session_id: str | None, submitted: str | None) -> None:
    """Refuse (CsrfError) unless `submitted` is this session's token."""
    if not session_id:
        raise CsrfError("no session: sign in through the EHR again")
    if not submitted:
        raise CsrfError("the form has no CSRF token; reload the page and try again")
    if not hmac.compare_digest(csrf_token(session_id).encode("ascii"),
                               submitted.encode("utf-8", "surrogateescape")):
        raise CsrfError("the form's CSRF token does not belong to this session; reload "
                        "the page and try again")


def check_same_origin(headers: Iterable[tuple[str, str]], settings: WebSettings) -> None:
    """Defence in depth for state-changing requests: when the browser says where the
    request comes from (Origin, Sec-Fetch-Site), it must be the app itself."""
    values = {name.lower(): value for name, value in headers}
    origin = values.get("origin")
    if origin is not None and origin != "null" and \
            not same_url(origin, origin_of(settings.public_url)):
        raise CsrfError("the request comes from another site")
    if values.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise CsrfError("the request comes from another site")


# --- headers ------------------------------------------------------------------------------


def style_hash(css: str) -> str:
    """A CSP source for one inline `<style>` block (its exact text)."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(frame_ancestors: Sequence[str], *,
                            style_sources: Sequence[str] = ()) -> str:
    """The app's CSP: nothing loads but the app's own styles and images; no scripts, no
    connections, no plugins; forms post only to the app; framed only by the EHR origins
    given (already validated by WebSettings), or by nobody."""
    for source in style_sources:
        if not (source.startswith(("'sha256-", "'sha384-", "'nonce-")) and
                source.endswith("'") and ";" not in source and " " not in source):
            raise ValueError(f"{source!r} is not a hash or nonce source")
    ancestors = " ".join(frame_ancestors) if frame_ancestors else "'none'"
    return "; ".join([
        "default-src 'none'",
        " ".join(["style-src 'self'", *style_sources]),
        "img-src 'self' data:",
        "form-action 'self'",
        "base-uri 'none'",
        f"frame-ancestors {ancestors}",
    ])


def security_headers(settings: WebSettings, *, csp: str | None = None,
                     cacheable: bool = False) -> list[tuple[str, str]]:
    """Headers for every response. `cacheable` only for static assets; every page may show
    patient data and must not be stored by the browser or a proxy."""
    headers = [
        ("Content-Security-Policy", csp or content_security_policy(settings.frame_ancestors)),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ]
    if not settings.frame_ancestors:
        headers.append(("X-Frame-Options", "DENY"))  # for browsers without frame-ancestors
    if not cacheable:
        headers += [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
    if settings.secure_cookies:
        headers.append(("Strict-Transport-Security", "max-age=31536000"))
    return headers


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding `security_headers()` to every HTTP response; paths
    under `static_prefix` may be cached."""

    def __init__(self, app: ASGIApp, settings: WebSettings, *, csp: str | None = None,
                 static_prefix: str = "/static/") -> None:
        self._app = app
        self._settings = settings
        self._static = static_prefix
        self._fixed = [(n.lower().encode("latin-1"), v.encode("latin-1"))
                       for n, v in security_headers(settings, csp=csp)]
        self._static_headers = [(n.lower().encode("latin-1"), v.encode("latin-1"))
                                for n, v in security_headers(settings, csp=csp,
                                                             cacheable=True)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        add = self._static_headers if str(scope.get("path", "")).startswith(self._static) \
            else self._fixed

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in add}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": kept + add}
            await send(message)

        await self._app(scope, receive, send_with_headers)
