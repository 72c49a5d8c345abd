"""Issue 8, item 3: credentials go only where they were meant to go.

Before the fix, with client-secret auth and no token_url, the client secret was sent to
whatever token endpoint `.well-known/smart-configuration` names, on any host and over plain
http; bearer tokens go over plain http to any host; and HTTP_PROXY from the environment is used
without a word and receives the bearer token. Wanted: credentials only over https (loopback
excepted); the token endpoint configured, or on the same origin as the FHIR base; proxies only
when configured. A next link to another host was already refused (kept as a guard).

"Another host" is the Recorder (another port: another origin). "Remote" hosts are names
under .hostile.test that this process resolves to 127.0.0.1 (the hostile_dns fixture): they
reach the test servers without being loopback by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hostile_server import Chart, HostileFhirServer, Recorder

from hostile.harness import clinic_day, run_args, run_cli

if TYPE_CHECKING:
    from hostile.conftest import AssumedInterface

SECRET = "client-secret-8c1d2e"  # the client secret: nowhere but the real token endpoint
TOKEN = "static-bearer-5f0a77"  # a static bearer token

CLIENT_SECRET_AUTH = {"PREVISIT_AUTH_METHOD": "client-secret",
                      "PREVISIT_AUTH_CLIENT_ID": "previsit-nightly",
                      "PREVISIT_CLIENT_SECRET": SECRET}
BEARER_AUTH = {"PREVISIT_AUTH_METHOD": "bearer", "PREVISIT_TOKEN": TOKEN}


def day_on(server: HostileFhirServer) -> HostileFhirServer:
    server.chart = Chart(*clinic_day().resources)
    return server


def test_client_secret_is_not_sent_to_a_token_endpoint_on_another_host(
        hostile_server: HostileFhirServer, other_host: Recorder, tmp_path: Path,
        assumed: AssumedInterface) -> None:
    day_on(hostile_server).behaviours.smart_token_endpoint = f"{other_host.url}/token"

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out",
                  env=CLIENT_SECRET_AUTH)

    assert [r for r in other_host.requests if r.carries(SECRET)] == []
    assert other_host.requests == []
    assert not run.crashed, run.explain()
    assert run.exit_code == 4, run.explain()
    assert re.search(assumed.not_accepted_words, run.error, re.IGNORECASE), run.explain()


def test_token_endpoint_on_the_fhir_servers_own_origin_is_used(
        hostile_server: HostileFhirServer, other_host: Recorder, tmp_path: Path) -> None:
    """The control: discovery naming the server's own origin (loopback) is used."""
    server = day_on(hostile_server)
    server.behaviours.smart_token_endpoint = server.token_url
    server.behaviours.require_token = server.behaviours.issued_token

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                  env=CLIENT_SECRET_AUTH)

    assert run.exit_code == 0, run.explain()
    token_requests = [r for r in server.requests if r.path == "/auth/token"]
    assert len(token_requests) == 1 and token_requests[0].carries(SECRET)
    assert not any(r.carries(SECRET) for r in server.requests if r.path != "/auth/token")
    assert other_host.requests == []


def test_a_configured_token_endpoint_on_another_host_is_used(
        hostile_server: HostileFhirServer, other_host: Recorder, tmp_path: Path) -> None:
    """The control: the operator named the token endpoint (auth.token_url), so another origin
    is what they want; only discovery must not choose it for them."""
    server = day_on(hostile_server)
    server.behaviours.require_token = "token-from-the-other-host"  # what the Recorder issues

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                  env={**CLIENT_SECRET_AUTH, "PREVISIT_AUTH_TOKEN_URL": f"{other_host.url}/token"})

    assert run.exit_code == 0, run.explain()
    assert [r.path for r in other_host.requests] == ["/token"]
    assert other_host.requests[0].carries(SECRET)
    assert server.requests_to(".well-known") == []
    assert not any(r.carries(SECRET) for r in server.requests)


@pytest.mark.parametrize("auth", ["bearer", "client-secret"])
def test_credentials_are_not_sent_over_plain_http_to_a_remote_host(
        auth: str, hostile_server: HostileFhirServer, hostile_dns: str, tmp_path: Path,
        assumed: AssumedInterface) -> None:
    server = day_on(hostile_server)
    remote = f"http://ehr.{hostile_dns}:{server.port}"
    server.behaviours.smart_token_endpoint = f"{remote}/auth/token"  # same origin, plain http

    run = run_cli(run_args(fhir_url=f"{remote}/fhir"), out=tmp_path / "out",
                  env=BEARER_AUTH if auth == "bearer" else CLIENT_SECRET_AUTH)

    leaked = [r for r in server.requests if r.carries(SECRET) or r.carries(TOKEN)
              or r.carries(server.behaviours.issued_token) or "authorization" in r.headers]
    assert leaked == []
    assert not run.crashed, run.explain()
    assert run.exit_code == 4, run.explain()
    assert re.search(assumed.not_accepted_words, run.error, re.IGNORECASE), run.explain()


def test_a_proxy_from_the_environment_is_not_used(
        hostile_server: HostileFhirServer, other_host: Recorder, tmp_path: Path) -> None:
    server = day_on(hostile_server)
    server.behaviours.require_token = TOKEN
    proxy = other_host.url
    env = {**BEARER_AUTH, "HTTP_PROXY": proxy, "http_proxy": proxy, "HTTPS_PROXY": proxy,
           "https_proxy": proxy, "ALL_PROXY": proxy, "all_proxy": proxy}

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out", env=env)

    assert [r for r in other_host.requests if r.carries(TOKEN)] == []
    assert other_host.requests == []
    assert run.exit_code == 0, run.explain()
    assert run.planned == {"appt-1": "pat-1", "appt-2": "pat-2", "appt-3": "pat-3"}


def test_a_configured_proxy_is_used(hostile_server: HostileFhirServer, other_host: Recorder,
                                    tmp_path: Path) -> None:
    """The control: a proxy named in the configuration (source.proxy) is what the operator
    wants; only the environment's must not choose one."""
    server = day_on(hostile_server)

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out",
                  env={"PREVISIT_SOURCE_PROXY": other_host.url})

    assert run.exit_code == 0, run.explain()  # the Recorder answers: no appointments
    assert other_host.requests and server.requests == []
    assert other_host.requests[0].target.startswith(f"{server.base_url}/Appointment?")


def test_a_next_link_to_another_host_is_not_followed(
        hostile_server: HostileFhirServer, other_host: Recorder, tmp_path: Path) -> None:
    server = day_on(hostile_server)
    server.behaviours.require_token = TOKEN
    server.behaviours.max_count = 1  # three appointments: two next links
    server.behaviours.foreign_next = f"{other_host.url}/fhir"

    run = run_cli(run_args(fhir_url=server.base_url), out=tmp_path / "out", env=BEARER_AUTH)

    assert other_host.requests == []
    assert not run.crashed, run.explain()
    assert run.exit_code == 4, run.explain()
    assert "not followed" in run.error
