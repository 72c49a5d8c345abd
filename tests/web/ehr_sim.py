"""The EHR the app is launched from in tests: the test FHIR server as SMART authorization
server (tests/fhir_server), seeded with the sample clinic day, and `previsit serve`'s app
with a configuration pointing at it.

Two ways to drive a launch:
- `AppDriver`: the app in-process (ASGI transport) and the EHR over HTTP, each redirect
  followed by hand, so a test can tamper with any step (state, code, verifier, scope);
- tests/browser: the app served by uvicorn on a port, driven by Chromium.
"""

from __future__ import annotations

import calendar
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from fhirserver import FhirTestServer, fhir_test_server  # noqa: E402

from previsit.config import Config, load_config  # noqa: E402

CLIENT_ID = "previsit"
STATIC_TOKEN = "nightly-static-token"  # the nightly run's bearer token on the test server
TIMEZONE = "America/Chicago"
# Planning "now": the evening before the sample clinic day (2026-12-01), when a team
# prepares it.
PLAN_NOW = datetime(2026, 11, 30, 17, 0, tzinfo=ZoneInfo(TIMEZONE)).timestamp()
USERS = [{"id": "okafor", "fhirUser": "Practitioner/prac-okafor", "name": "Dr. Okafor"},
         {"id": "ma-lee", "fhirUser": "Practitioner/prac-lee", "name": "MA Lee"}]
# Sample patients and appointments (sample_bundles/README.md).
LOPEZ = "pat-maria-lopez"
LOPEZ_VISIT = "appt-1201-0920-lopez"
GREENBERG = "pat-susan-greenberg"
GREENBERG_VISIT = "appt-1201-0920-greenberg"


def registration(app_url: str) -> dict[str, Any]:
    return {"clients": [{"client_id": CLIENT_ID, "kind": "public",
                         "redirect_uris": [f"{app_url}/callback"],
                         "launch_uri": f"{app_url}/launch", "name": "previsit"}],
            "users": USERS}


@contextmanager
def ehr_server(app_url: str, **options: Any) -> Iterator[FhirTestServer]:
    """The EHR: a test FHIR server with SMART on, seeded with the sample clinic day."""
    with fhir_test_server(profile="lenient", clients=registration(app_url),
                          token=STATIC_TOKEN, **options) as server:
        seed(server)
        yield server


def seed(server: FhirTestServer) -> None:
    server.admin.load_folder(REPO / "sample_bundles")


def web_config(tmp_path: Path, server: FhirTestServer, app_url: str, *,
               enable_actions: bool = True, **web: Any) -> Config:
    """A configuration file as a clinic writes it, read the way `previsit serve` reads it."""
    lines = ["[source]", 'kind = "fhir"', f'base_url = "{server.base_url}"',
             f'timezone = "{TIMEZONE}"', "", "[auth]", 'method = "bearer"',
             'token_env = "PREVISIT_TOKEN"', "", "[web]", f'public_url = "{app_url}"',
             'state_db = "state.sqlite3"', 'keyring_file = "web.keys"',
             f"enable_actions = {'true' if enable_actions else 'false'}"]
    for key, value in web.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += ["", "[[web.issuers]]", f'iss = "{server.base_url}"',
              f'client_id = "{CLIENT_ID}"', 'label = "Test EHR"', ""]
    path = tmp_path / "previsit.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return load_config(path, env={})


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def fhir(server: FhirTestServer) -> httpx.Client:
    """The EHR's FHIR API as its administrators see it (to check what was written)."""
    return httpx.Client(base_url=server.base_url + "/", timeout=20,
                        headers={"Authorization": f"Bearer {server.admin_token}"})


def search(server: FhirTestServer, resource_type: str, **params: str) -> list[dict[str, Any]]:
    with fhir(server) as client:
        response = client.get(resource_type, params={**params, "_count": "500"})
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry") or ()]


def epoch(text: str) -> float:
    return calendar.timegm(datetime.fromisoformat(text).utctimetuple())


@dataclass
class AppDriver:
    """The browser's part in a launch, step by step: the EHR over HTTP, the app in-process."""

    server: FhirTestServer
    app: httpx.AsyncClient  # over the ASGI app, base_url = the app's public URL
    ehr: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=20))

    async def ehr_launch(self, patient: str, *, user: str = "okafor",
                         appointment: str | None = None, encounter: str | None = None
                         ) -> httpx.Response:
        """The EHR opens the app: /ehr/launch → the app's /launch (its answer returned)."""
        params = {"client_id": CLIENT_ID, "patient": patient, "user": user}
        if appointment:
            params["appointment"] = appointment
        if encounter:
            params["encounter"] = encounter
        opened = await self.ehr.get(f"{self.server.root_url}/ehr/launch", params=params)
        assert opened.status_code in (302, 303), opened.text
        return await self.app.get(_path(opened.headers["location"]))

    async def authorize(self, launch: httpx.Response, *, user: str = "okafor",
                        patient: str | None = None,
                        tamper: Mapping[str, str | None] | None = None,
                        preauthorize: bool = True) -> httpx.Response:
        """The app's redirect to the authorization server, approved at once as `user`;
        returns the authorization server's answer (a redirect to the app's callback)."""
        assert launch.status_code == 302, launch.text
        location = launch.headers["location"]
        if tamper:
            parts = urlsplit(location)
            query = {k: v for k, v in {**query_of(location), **tamper}.items() if v is not None}
            location = parts._replace(query=urlencode(query)).geturl()
        if preauthorize:
            self.server.admin.preauthorize(user, patient, client_id=CLIENT_ID)
        return await self.ehr.get(location)

    async def callback(self, answer: httpx.Response) -> httpx.Response:
        assert answer.status_code in (302, 303), answer.text
        return await self.app.get(_path(answer.headers["location"]))

    async def launch_to_plan(self, patient: str, *, appointment: str | None = None,
                             user: str = "okafor") -> httpx.Response:
        """A whole EHR launch; returns the plan page."""
        done = await self.callback(await self.authorize(
            await self.ehr_launch(patient, appointment=appointment, user=user), user=user))
        assert done.status_code == 303, done.text
        return await self.app.get(_path(done.headers["location"]))

    async def aclose(self) -> None:
        await self.ehr.aclose()


def _path(location: str) -> str:
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
