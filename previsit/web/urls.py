"""URL comparisons that security decisions rest on: issuers, origins, loopback.

An EHR may spell its FHIR base differently from the configuration (production Medplum
sends `…/fhir/R4/` with a trailing slash), so issuers are compared in a normal form;
but whatever previsit sends back (`aud`) is the configured spelling, never the caller's.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from previsit.errors import PrevisitError

_DEFAULT_PORTS = {"http": 80, "https": 443}


class UrlError(PrevisitError, ValueError):
    """A URL that cannot be trusted for what it is used for (not https, wrong origin…).

    A ValueError too, so that pydantic reports it as a configuration error."""


def normalize_url(url: str) -> str:
    """Scheme and host lower-case, default port dropped, trailing slashes and fragment ignored.

    The path keeps its case (FHIR bases are case-sensitive on most servers) and the query
    is kept as it is. Raises UrlError for anything that is not an absolute http(s) URL.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise UrlError(f"{url!r} is not an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise UrlError(f"{url!r} carries credentials; configure them elsewhere")
    try:
        port = parts.port
    except ValueError:
        raise UrlError(f"{url!r} has an invalid port") from None
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal: urlsplit drops the brackets
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def same_url(a: str, b: str) -> bool:
    """Whether two URLs name the same resource once normalised (False if either is invalid)."""
    try:
        return normalize_url(a) == normalize_url(b)
    except UrlError:
        return False


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, normalised."""
    parts = urlsplit(normalize_url(url))
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (127.0.0.0/8, ::1 or `localhost`)."""
    host = urlsplit(url.strip()).hostname
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure(url: str, what: str) -> str:
    """The normalised URL, refusing plain http anywhere but on loopback (tests, a local proxy)."""
    normal = normalize_url(url)
    if not normal.startswith("https://") and not is_loopback(normal):
        raise UrlError(f"{what} {url!r} is not https; only loopback addresses may use http")
    return normal
