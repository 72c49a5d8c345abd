"""Write-back against the test server's strict (medplum) profile, through HttpSource: each
production limit of issue 9 met head on.

- a visit of 13 conditional creates: Medplum refuses more than 8 in one transaction;
- a configured size above the server's: the refusal is learned, and the rest is written;
- Medplum's own retry surfacing as "Resource ID did not match resolved ID" on a sheet;
- a quota spent inside a non-atomic transaction: the throttled entries are sent again;
- a quota spent before a request: the whole source pauses until it resets;
- a 401 with no credentials configured but PREVISIT_TOKEN set says so.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from fhirserver import FhirTestServer, fhir_test_server

from previsit.config import AuthConfig, SourceConfig
from previsit.errors import SourceError
from previsit.sources import WriteResult
from previsit.sources.http import HttpSource

pytestmark = pytest.mark.integration

T = TypeVar("T")
SYSTEM = "urn:previsit:proposal"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def proposals(n: int, key: str) -> dict[str, Any]:
    """A visit's transaction of n conditional creates, as previsit writes them."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
                     "identifier": [{"system": SYSTEM, "value": f"{key}-{i}"}],
                     "subject": {"reference": "Patient/someone"},
                     "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}},
        "request": {"method": "POST", "url": "ServiceRequest",
                    "ifNoneExist": f"identifier={SYSTEM}|{key}-{i}"}} for i in range(n)]}


def write(server: FhirTestServer, bundle: dict[str, Any], **source: Any) -> WriteResult:
    async def go() -> WriteResult:
        made = HttpSource.from_config(SourceConfig(kind="fhir", base_url=server.base_url,
                                                   **source), AuthConfig(), {})
        try:
            return await made.write_transaction(bundle, key="a1")
        finally:
            await made.aclose()

    return run(go())


def on_server(server: FhirTestServer, resource_type: str, key: str) -> list[str]:
    """Identifier values of `key`'s resources on the server (read as the admin)."""
    answer = httpx.get(f"{server.base_url}/{resource_type}",
                       params={"identifier": f"{SYSTEM}|", "_count": "1000"},
                       headers={"Authorization": f"Bearer {server.admin_token}"})
    answer.raise_for_status()
    values = [i["value"] for e in answer.json().get("entry") or ()
              for i in e["resource"].get("identifier") or () if i.get("system") == SYSTEM]
    return sorted(v for v in values if v.startswith(f"{key}-"))


@pytest.fixture(scope="module")
def medplum() -> Iterator[FhirTestServer]:
    with fhir_test_server() as server:  # the default: the strict profile
        yield server


def transactions_posted(server: FhirTestServer) -> int:
    return int(server.admin.stats()["bundles"].get("transaction", 0))


def test_a_visit_of_thirteen_proposals_is_written_in_transactions_of_eight(
        medplum: FhirTestServer) -> None:
    before = transactions_posted(medplum)
    result = write(medplum, proposals(13, "thirteen"))
    assert result.complete and len(result.created) == 13
    assert on_server(medplum, "ServiceRequest", "thirteen") == sorted(
        f"thirteen-{i}" for i in range(13))
    assert transactions_posted(medplum) - before == 2
    again = write(medplum, proposals(13, "thirteen"))  # a re-run: nothing new
    assert (len(again.created), len(again.existing)) == (0, 13)


def test_a_size_above_the_servers_is_learned_from_its_refusal(
        medplum: FhirTestServer) -> None:
    result = write(medplum, proposals(13, "learned"), max_transaction_entries=50)
    assert result.complete and len(result.created) == 13
    assert len(on_server(medplum, "ServiceRequest", "learned")) == 13


def test_medplums_resolved_id_conflict_on_a_sheet_is_retried(medplum: FhirTestServer) -> None:
    medplum.admin.add_fault(in_batch=True, path="^DocumentReference", preset="id-mismatch",
                            status=400, times=1)
    sheet = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "DocumentReference", "status": "current",
                     "identifier": [{"system": "urn:previsit:sheet", "value": "pv-sheet-x"}],
                     "content": [{"attachment": {"contentType": "text/html", "data": "PHA+"}}]},
        "request": {"method": "PUT",
                    "url": "DocumentReference?identifier=urn:previsit:sheet|pv-sheet-x"}}]}
    result = write(medplum, sheet)
    assert result.complete and len(result.created) == 1
    assert medplum.admin.stats()["faults_fired"] >= 1


def test_a_quota_spent_inside_a_non_atomic_transaction_is_waited_for_and_completed() -> None:
    # 12 conditional creates cost 1,440 points; 1,000 are left: the entry that spends them
    # and every one after it answer 429 inside a transaction-response that is itself 200.
    with fhir_test_server(atomic_transactions=False, rate_limit_points=1000,
                          rate_limit_window_s=2) as server:
        result = write(server, proposals(12, "throttled"), max_transaction_entries=12)
        assert result.complete and len(result.created) == 12
        assert on_server(server, "ServiceRequest", "throttled") == sorted(
            f"throttled-{i}" for i in range(12))
        assert server.admin.stats()["rate_limited"]["entries"] >= 1


def test_a_spent_quota_pauses_the_source_until_it_resets() -> None:
    with fhir_test_server(rate_limit_window_s=60) as server:
        async def read_twice() -> float:
            made = HttpSource.from_config(SourceConfig(kind="fhir", base_url=server.base_url),
                                          AuthConfig(), {})
            try:
                await made.write_transaction(proposals(1, "opens-the-window"), key="a0")
                key = next(iter(server.admin.stats()["rate_limits"]["fhirInteractions"]))
                server.admin.spend_quota(key, remaining=0, reset_s=3)
                await made.write_transaction(proposals(2, "after-the-pause"), key="a1")
                return made.throttle.waited
            finally:
                await made.aclose()

        waited = run(read_twice())
        assert 2.0 <= waited <= 4.0
        assert len(on_server(server, "ServiceRequest", "after-the-pause")) == 2


def test_a_401_without_credentials_names_the_unused_token() -> None:
    clients = {"clients": [{"client_id": "c", "kind": "backend-services", "secret": "s"}]}
    with fhir_test_server(clients=clients) as server:
        async def go() -> None:
            made = HttpSource.from_config(SourceConfig(kind="fhir", base_url=server.base_url),
                                          AuthConfig(), {"PREVISIT_TOKEN": "not-sent"})
            try:
                await made.write_transaction(proposals(1, "x"), key="a1")
            finally:
                await made.aclose()

        with pytest.raises(SourceError) as caught:
            run(go())
    assert "none are configured: auth.method is \"none\"" in str(caught.value)
    assert "PREVISIT_TOKEN is set but is only sent with auth.method = \"bearer\"" in \
        str(caught.value)
