"""FHIR access for one signed-in user or one CDS call: confined, authenticated, few requests.

`confined_client()` builds the httpx client every app page and CDS fallback read goes
through: the user's (or the CDS client's) bearer token, and — for a patient — the
`ConfinedTransport`, which refuses any request or response that reaches beyond that
patient whatever scopes the server granted. The planning engine then reads the record
through `HttpSource` over this client, exactly as the nightly run reads it.

`FhirSession` adds the handful of reads and writes the app makes itself: one resource, a
bounded search, a transaction.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from previsit.auth import Secret
from previsit.errors import PrevisitError
from previsit.jsonio import object_or_none
from previsit.operation_outcome import describe_failure
from previsit.web.confinement import ConfinedTransport, ConfinementError, PatientConfinement

FHIR_JSON = "application/fhir+json"
TIMEOUT_S = 20.0
MAX_SEARCH_PAGES = 5  # the app's own searches (next appointments) need one page


class FhirAccessError(PrevisitError):
    """A FHIR request of the app failed; `status` is the HTTP status if the server answered.
    The message names the request without ids or query values."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)

    @property
    def forbidden(self) -> bool:
        return self.status in (401, 403)


class TokenAuth(httpx.Auth):
    """Bearer auth with the token fetched per request (a session's token may be refreshed
    between two requests of one page)."""

    def __init__(self, token: Callable[[], Awaitable[Secret]]) -> None:
        self._token = token

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {(await self._token()).reveal()}"
        yield request

    def __repr__(self) -> str:
        return "TokenAuth(********)"


def confined_client(fhir_base: str, token: Callable[[], Awaitable[Secret]], *,
                    patient_id: str | None,
                    transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """A client for `fhir_base` with the token; confined to `patient_id` when given (a
    patient-level session, a CDS call); a user-level session (the schedule) is not."""
    inner = transport or httpx.AsyncHTTPTransport(retries=1)
    if patient_id is not None:
        inner = ConfinedTransport(inner, PatientConfinement(fhir_base, patient_id))
    return httpx.AsyncClient(transport=inner, auth=TokenAuth(token), timeout=TIMEOUT_S,
                             headers={"Accept": FHIR_JSON}, follow_redirects=False)


@dataclass
class FhirSession:
    client: httpx.AsyncClient
    base_url: str

    def _url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path}" if path else self.base_url.rstrip("/")

    async def _send(self, method: str, path: str, *, params: Sequence[tuple[str, str]] = (),
                    body: Mapping[str, Any] | None = None, url: str | None = None
                    ) -> dict[str, Any]:
        target = url or self._url(path)
        try:
            response = await self.client.request(
                method, target, params=list(params) or None, json=body,
                headers={"Content-Type": FHIR_JSON} if body is not None else None)
        except ConfinementError:
            raise
        except httpx.HTTPError as exc:
            raise FhirAccessError(f"{method} {path.split('/')[0] or 'the FHIR base'}: the "
                                  f"FHIR server did not answer ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise FhirAccessError(describe_failure(response, self.base_url),
                                  response.status_code)
        answer = object_or_none(response.content)
        if answer is None:
            raise FhirAccessError(f"{method} {path.split('/')[0]}: the answer is not a JSON "
                                  "object", response.status_code)
        return answer

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        resource = await self._send("GET", f"{resource_type}/{resource_id}")
        if resource.get("resourceType") != resource_type or resource.get("id") != resource_id:
            raise FhirAccessError(f"GET {resource_type}/…: the server answered with another "
                                  "resource")
        return resource

    async def search(self, resource_type: str, params: Sequence[tuple[str, str]]
                     ) -> list[dict[str, Any]]:
        """The matches of a search (resources of that type only), following next links
        for at most a few pages."""
        bundle = await self._send("GET", resource_type, params=params)
        found: list[dict[str, Any]] = []
        for _ in range(MAX_SEARCH_PAGES):
            found += [e["resource"] for e in bundle.get("entry") or ()
                      if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                      and e["resource"].get("resourceType") == resource_type]
            following = next((link.get("url") for link in bundle.get("link") or ()
                              if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not isinstance(following, str):
                break
            bundle = await self._send("GET", resource_type, url=following)
        return found

    async def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a transaction; FhirAccessError if it or any entry failed."""
        answer = await self._send("POST", "", body=bundle)
        if answer.get("type") != "transaction-response":
            raise FhirAccessError("the transaction was answered with a "
                                  f"{answer.get('type') or answer.get('resourceType')}")
        for index, entry in enumerate(answer.get("entry") or ()):
            status = str(((entry or {}).get("response") or {}).get("status") or "")
            code = status.split(" ")[0]
            if not code.isdigit() or int(code) >= 300:
                raise FhirAccessError(f"entry {index} of the transaction answered "
                                      f"{status or 'without a status'}",
                                      int(code) if code.isdigit() else None)
        return answer
