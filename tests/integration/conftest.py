"""One real FHIR server for the whole integration suite (session-scoped).

By default the in-memory test server (tests/fhir_server) is started on 127.0.0.1. Set
PREVISIT_TEST_FHIR_URL (and PREVISIT_TEST_FHIR_TOKEN if it needs one) to run the same
tests against another server, e.g. HAPI FHIR or a full Medplum. Tests must not assume
the server is empty: they create their own data and find it by the ids the server gave.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fhirserver import external_fhir_server, fhir_server_or_external, running_fhir_server

from previsit.auth import BearerToken


@dataclass(frozen=True)
class FhirTarget:
    base_url: str
    token: str | None
    external: bool  # another server: counts and exact contents may differ

    def client(self, *, with_token: bool = True, **options: Any) -> httpx.AsyncClient:
        auth = BearerToken(self.token) if self.token and with_token else None
        return httpx.AsyncClient(auth=auth, timeout=30.0, **options)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTarget]:
    with fhir_server_or_external() as (base_url, token, external):
        yield FhirTarget(base_url, token, external=external)


@pytest.fixture(scope="session")
def token_fhir_server() -> Iterator[FhirTarget]:
    """A server that refuses requests without `Authorization: Bearer <token>`."""
    external = external_fhir_server()
    if external is not None:
        if external[1] is None:
            pytest.skip("PREVISIT_TEST_FHIR_TOKEN is not set: the external server's token "
                        "checks cannot be tested")
        yield FhirTarget(external[0], external[1], external=True)
        return
    token = secrets.token_urlsafe(24)
    with running_fhir_server(token=token) as base_url:
        yield FhirTarget(base_url, token, external=False)
