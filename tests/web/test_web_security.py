"""Cookies, CSRF tokens, Content-Security-Policy and the other response headers."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from web_fakes import run, settings

from previsit.web.security import (
    CsrfError,
    SecurityHeadersMiddleware,
    check_csrf,
    check_same_origin,
    content_security_policy,
    csrf_token,
    expired_session_cookie,
    launch_cookie,
    security_headers,
    session_cookie,
    style_hash,
)

SESSION = "Qm9ndXMtc2Vzc2lvbi1pZC1mb3ItdGVzdHMtb25seS1hYmNkZWY"


# --- cookies ------------------------------------------------------------------------------


def test_the_session_cookie_is_host_only_httponly_secure_lax() -> None:
    assert session_cookie(settings(session_hours=8), SESSION) == (
        f"__Host-previsit_session={SESSION}; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax; "
        "Secure")


def test_on_loopback_http_the_cookie_is_not_secure() -> None:
    web = settings(public_url="http://127.0.0.1:8400")
    assert session_cookie(web, SESSION) == (
        f"previsit_session={SESSION}; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax")


def test_an_embedded_app_sends_a_partitioned_samesite_none_cookie() -> None:
    web = settings(session_cookie_samesite="none")
    assert session_cookie(web, SESSION) == (
        f"__Host-previsit_session={SESSION}; Path=/; Max-Age=28800; HttpOnly; SameSite=None; "
        "Secure; Partitioned")
    with pytest.raises(ValueError, match="needs an https public_url"):
        settings(public_url="http://127.0.0.1:8400", session_cookie_samesite="none")


def test_logout_expires_the_cookie_and_launch_cookies_live_for_the_launch() -> None:
    assert expired_session_cookie(settings()) == (
        "__Host-previsit_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure")
    assert launch_cookie(settings(launch_minutes=10), "binder123") == (
        "__Host-previsit_launch=binder123; Path=/; Max-Age=600; HttpOnly; SameSite=None; "
        "Secure; Partitioned")


def test_cookie_values_cannot_inject_attributes() -> None:
    with pytest.raises(ValueError):
        session_cookie(settings(), "x; Domain=evil.example")


# --- CSRF ---------------------------------------------------------------------------------


def test_a_sessions_own_csrf_token_is_accepted() -> None:
    token = csrf_token(SESSION)
    assert len(token) == 43
    check_csrf(SESSION, token)


@pytest.mark.parametrize(("session_id", "submitted", "message"), [
    (SESSION, None, "has no CSRF token"),
    (SESSION, "", "has no CSRF token"),
    (SESSION, csrf_token("another-session-id"), "does not belong to this session"),
    (SESSION, csrf_token(SESSION)[:-1], "does not belong to this session"),
    (SESSION, "ünïcode", "does not belong to this session"),
    (None, csrf_token(SESSION), "no session"),
])
def test_csrf_refusals(session_id: str | None, submitted: str | None, message: str) -> None:
    with pytest.raises(CsrfError, match=message):
        check_csrf(session_id, submitted)


def test_cross_site_posts_are_refused_by_origin() -> None:
    web = settings()
    check_same_origin([("Origin", "https://previsit.clinic.example")], web)
    check_same_origin([("Sec-Fetch-Site", "same-origin")], web)
    check_same_origin([], web)
    with pytest.raises(CsrfError):
        check_same_origin([("Origin", "https://evil.example")], web)
    with pytest.raises(CsrfError):
        check_same_origin([("Sec-Fetch-Site", "cross-site")], web)


# --- headers ------------------------------------------------------------------------------


def test_the_content_security_policy() -> None:
    assert content_security_policy(["https://ehr.example.org", "https://*.ehr.example"]) == (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors https://ehr.example.org https://*.ehr.example")
    assert content_security_policy([]).endswith("frame-ancestors 'none'")
    css = "body{font:12pt serif}"
    assert style_hash(css) == "'sha256-jaUncVbyH5IAND1RlV4wG5Uc8Fy2itE9rHuQouBJcpk='"
    assert "style-src 'self' 'sha256-" in content_security_policy([], style_sources=[
        style_hash(css)])
    with pytest.raises(ValueError):
        content_security_policy([], style_sources=["'unsafe-inline'"])


def test_frame_ancestors_cannot_smuggle_directives() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        settings(frame_ancestors=["https://ehr.example; script-src *"])
    with pytest.raises(ValueError, match="not an origin"):
        settings(frame_ancestors=["https://ehr.example/path"])
    with pytest.raises(ValueError, match="not https"):
        settings(frame_ancestors=["http://ehr.example"])
    assert settings(frame_ancestors=["HTTPS://EHR.example/"]).frame_ancestors == \
        ("https://ehr.example",)


def test_security_headers_for_patient_pages() -> None:
    headers = dict(security_headers(settings(frame_ancestors=["https://ehr.example"])))
    assert headers == {
        "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' "
                                   "data:; form-action 'self'; base-uri 'none'; "
                                   "frame-ancestors https://ehr.example",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Strict-Transport-Security": "max-age=31536000",
    }
    unframed = dict(security_headers(settings()))
    assert unframed["X-Frame-Options"] == "DENY"


def test_the_middleware_puts_the_headers_on_every_response() -> None:
    async def page(request: Request) -> Response:
        # a careless page trying to allow caching and framing gets the strict values
        return HTMLResponse("<p>patient</p>", headers={"Cache-Control": "max-age=3600"})

    async def asset(request: Request) -> Response:
        return PlainTextResponse("body{}")

    async def missing(request: Request) -> Response:
        return PlainTextResponse("nope", status_code=404)

    web = settings(frame_ancestors=["https://ehr.example"])
    app = Starlette(routes=[Route("/visit", page), Route("/static/print.css", asset),
                            Route("/missing", missing)])
    transport = httpx.ASGITransport(app=SecurityHeadersMiddleware(app, web))

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="https://app") as client:
            return await client.get(path)

    response = run(get("/visit"))
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-security-policy"].endswith(
        "frame-ancestors https://ehr.example")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    static = run(get("/static/print.css"))
    assert "cache-control" not in static.headers
    assert static.headers["x-content-type-options"] == "nosniff"
    assert run(get("/missing")).headers["cache-control"] == "no-store"
