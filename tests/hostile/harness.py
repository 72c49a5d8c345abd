"""How the hostile tests drive previsit and read what it left: as a user would.

`run_cli(args, out=…, env=…)` runs `previsit …` in-process (Typer's CliRunner on
`previsit.cli.app:app`) with a clean environment (no PREVISIT_* or proxy variables leak in
from the shell), captures stdout, stderr and the log lines a terminal would show, and
returns a `CliRun` that reads the output folder (run-report.json, plan.json, transactions,
sheets). `run_process(args, …)` runs the console entry point in a child process under a
memory and time limit, for inputs that would make an unguarded previsit exhaust the test
machine (a 1 GiB body, a gzip bomb, an endless body).

`clinic_day()` is the small day most tests start from: three patients with one appointment
each on 2026-12-01 (America/Chicago), charts that make the shipped rules propose orders, so
every planned visit leaves a transaction.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders import condition, medication, observation, patient
from previsit.cli.app import app
from typer.testing import CliRunner

DAY = "2026-12-01"
TZ = "America/Chicago"
ROOT = Path(__file__).resolve().parents[2]

# Characters that let data take over a terminal or a mail: C0 controls but TAB and LF
# (ESC starts CSI/OSC sequences, CR rewrites a line, BEL, BS), DEL, the C1 controls (U+009B
# is a one-character CSI), and the bidirectional overrides, embeddings and isolates that
# reorder what is shown (U+202A-U+202E, U+2066-U+2069, plus LRM/RLM/ALM).
TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                             "\u2066-\u2069]")

# previsit's own colours (typer.secho: one SGR parameter, then reset) are not data: a terminal
# check removes exactly these before looking for control characters.
OWN_STYLES = re.compile("\x1b\\[(?:0|1|3[0-7]|9[0-7])m")

# A line of text a hostile server or chart wants on the operator's screen: blinking red (an SGR
# previsit never emits itself), clear-screen, an OSC 8 hyperlink, a window-title OSC, a CR that
# rewrites the line, a forged log line after CR LF, a one-byte C1 CSI, and a right-to-left
# override.
HOSTILE_TEXT = ("\x1b[5;41mBLINK\x1b[25;49m \x1b[2J \x1b]8;;https://evil.example/\x07click"
                "\x1b]8;;\x07 \x1b]0;pwned\x07\rOVERWRITTEN\r\nFORGED LINE: all visits "
                "planned\n\x9b2J \u202eevil\u202c")

# Variables that would change a run from outside the test: configuration overrides, and
# proxies (tests that want a proxy variable set it themselves).
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                    "https_proxy", "all_proxy", "no_proxy")


def clean_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """An environment overlay: every PREVISIT_* and proxy variable unset, then `extra`."""
    env: dict[str, str | None] = {name: None for name in os.environ
                                  if name.startswith("PREVISIT_")}
    env.update({name: None for name in _PROXY_VARIABLES})
    env.update(extra or {})
    return env


# --- reading what a run left ------------------------------------------------------------------


@dataclass
class CliRun:
    """What one `previsit …` left: exit code, what it printed, and its output folder."""

    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    logs: str
    exception: BaseException | None
    elapsed: float
    out: Path | None

    @property
    def printed(self) -> str:
        """Everything a terminal would receive, byte for byte (colours included)."""
        return self.stdout + self.stderr + self.logs

    @property
    def error(self) -> str:
        """stderr without previsit's own colours: what a person reads."""
        return OWN_STYLES.sub("", self.stderr)

    @property
    def crashed(self) -> bool:
        """An exception escaped (a traceback, exit code 1) instead of a handled exit."""
        return self.exception is not None and not isinstance(self.exception, SystemExit)

    def _json(self, name: str) -> Any:
        assert self.out is not None, "this run has no output folder"
        path = self.out / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    @property
    def report(self) -> dict[str, Any]:
        report = self._json("run-report.json")
        assert isinstance(report, dict), f"no run-report.json; printed:\n{self.printed}"
        return report

    @property
    def plan(self) -> dict[str, Any]:
        plan = self._json("plan.json")
        assert isinstance(plan, dict), f"no plan.json; printed:\n{self.printed}"
        return plan

    @property
    def failures(self) -> dict[str, str]:
        """Appointment id -> reason, from run-report.json."""
        return {f["appointment"]: f["reason"] for f in self.report["failures"]}

    @property
    def planned(self) -> dict[str, str]:
        """Appointment id -> patient id of every visit planned (not failed), from plan.json."""
        return {v["visit"]["appointment_id"]: v["visit"]["patient_id"]
                for v in self.plan["visits"] if not v["failed"]}

    @property
    def visits(self) -> dict[str, dict[str, Any]]:
        return {v["visit"]["appointment_id"]: v for v in self.plan["visits"]}

    def transactions(self) -> dict[str, dict[str, Any]]:
        """File name -> transaction Bundle, from out/transactions/."""
        assert self.out is not None
        folder = self.out / "transactions"
        return {p.name: json.loads(p.read_text(encoding="utf-8"))
                for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}

    def explain(self) -> str:
        return (f"previsit {' '.join(self.args)} -> exit {self.exit_code} in "
                f"{self.elapsed:.1f} s; exception {self.exception!r}\n{self.printed[-4000:]}")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.buffer = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.write(self.format(record) + "\n")
        except Exception:  # a log line that cannot be formatted is itself shown raw
            self.buffer.write(repr(record.msg) + "\n")


def run_cli(args: Sequence[str | Path], *, out: Path | None = None,
            env: Mapping[str, str | None] | None = None) -> CliRun:
    """`previsit <args>` in-process, with `--out out` appended when given.

    Output is captured as a terminal receives it (`color=True`: click does not strip escape
    sequences, as it does for a pipe). Log records at INFO and above are captured as the
    CLI's own handler would print them (under pytest the root logger already has handlers,
    so the CLI's basicConfig is a no-op and its lines would otherwise vanish).
    """
    argv = [str(a) for a in args]
    if out is not None:
        argv += ["--out", str(out)]
    runner = CliRunner()
    root = logging.getLogger()
    handler = _Lines()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    started = time.monotonic()
    try:
        result = runner.invoke(app, argv, env=clean_env(env), catch_exceptions=True,
                               color=True)
    finally:
        elapsed = time.monotonic() - started
        root.removeHandler(handler)
        root.setLevel(level)
    return CliRun(argv, result.exit_code, result.stdout, result.stderr,
                  handler.buffer.getvalue(), result.exception, elapsed, out)


def run_process(args: Sequence[str | Path], *, out: Path | None = None,
                env: Mapping[str, str | None] | None = None, memory_bytes: int = 2 << 30,
                timeout: float = 60.0) -> CliRun:
    """`previsit <args>` as a child process limited to `memory_bytes` of address space.

    For the inputs that would make an unguarded previsit read gigabytes: the limit turns
    "the test machine runs out of memory" into "previsit dies with MemoryError", which the
    test reports as the failure it is. A run still going after `timeout` is killed.
    """
    argv = [str(a) for a in args]
    if out is not None:
        argv += ["--out", str(out)]
    environ = {k: v for k, v in os.environ.items()}
    # A crash near the memory limit takes Rich seconds to draw; the plain traceback says the
    # same (and is all these tests look for).
    environ["_TYPER_STANDARD_TRACEBACK"] = "1"
    for name, value in clean_env(env).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    code = "import sys; from previsit.cli.app import main; sys.argv[0] = 'previsit'; main()"
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                              env=environ, timeout=timeout, preexec_fn=limit, cwd=ROOT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        return CliRun(argv, -9, _text(exc.stdout), _text(exc.stderr), "", exc,
                      time.monotonic() - started, out)
    elapsed = time.monotonic() - started
    stderr = done.stderr.decode("utf-8", "replace")
    crashed = RuntimeError("traceback") if "Traceback (most recent call last)" in stderr \
        else None
    return CliRun(argv, done.returncode, done.stdout.decode("utf-8", "replace"), stderr, "",
                  crashed, elapsed, out)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def run_args(*, source: Path | None = None, fhir_url: str | None = None,
             extra: Iterable[str] = ()) -> list[str]:
    """`run --date 2026-12-01 --timezone America/Chicago` with the source and options."""
    args = ["run", "--date", DAY, "--timezone", TZ]
    if source is not None:
        args += ["--source", str(source)]
    if fhir_url is not None:
        args += ["--fhir-url", fhir_url]
    return [*args, *extra]


# --- the small clinic day ---------------------------------------------------------------------


def appointment(aid: str, start: str, patient_reference: str, *, status: str = "booked",
                practitioner: str = "Practitioner/dr-a") -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": aid, "status": status, "start": start,
            "participant": [
                {"actor": {"reference": patient_reference}, "status": "accepted"},
                {"actor": {"reference": practitioner, "display": "Dr A"},
                 "status": "accepted"}]}


@dataclass
class Day:
    """Resources of a day, and which patient each appointment is for (the truth)."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    truth: dict[str, str | None] = field(default_factory=dict)  # appointment -> patient|None

    def add(self, *resources: dict[str, Any]) -> Day:
        self.resources.extend(resources)
        return self

    def book(self, aid: str, pid: str, time_of_day: str, *, reference: str | None = None
             ) -> Day:
        """An appointment on the day; `reference` overrides the patient reference written."""
        self.resources.append(appointment(aid, f"{DAY}T{time_of_day}:00-06:00",
                                          reference or f"Patient/{pid}"))
        self.truth[aid] = pid
        return self

    def write(self, folder: Path, name: str = "day.json") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({
            "resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in self.resources]}), encoding="utf-8")
        return folder


def chart(pid: str, *, age: int, sex: str, name: str,
          medication_text: str = "lisinopril 10 mg tablet") -> list[dict[str, Any]]:
    """A patient whose chart makes the shipped rules propose orders at a visit on DAY:
    hypertension on lisinopril (potassium/creatinine monitoring, a renewal running out), an
    HbA1c from last year, no colorectal screening on record."""
    return [
        patient(pid=pid, age=age, sex=sex, name=name),
        condition("38341003", pid=pid, display="Hypertension"),
        observation("4548-4", 400, 6.1, "%", pid=pid),
        medication("314076", medication_text, days_ago=300, supply_days=90, repeats=1,
                   pid=pid),
    ]


def clinic_day() -> Day:
    """Three patients, one booked appointment each, all of whom should be planned."""
    day = Day()
    day.add(*chart("pat-1", age=52, sex="female", name="Ana Able"))
    day.add(*chart("pat-2", age=61, sex="male", name="Ben Baker"))
    day.add(*chart("pat-3", age=67, sex="female", name="Cy Cole"))
    day.book("appt-1", "pat-1", "09:00").book("appt-2", "pat-2", "09:20") \
        .book("appt-3", "pat-3", "10:00")
    return day


# --- what the issue wants, checked the same way everywhere -------------------------------------


def subjects(bundle: Mapping[str, Any]) -> set[str]:
    """Every Patient reference an order in a transaction names (subject and any other)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            reference = value.get("reference")
            if isinstance(reference, str) and "Patient/" in reference:
                found.add(reference)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for entry in bundle.get("entry") or ():
        walk(entry.get("resource"))
    return found


def appointments_named(bundle: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for entry in bundle.get("entry") or ():
        for info in (entry.get("resource") or {}).get("supportingInfo") or ():
            reference = info.get("reference") if isinstance(info, Mapping) else None
            if isinstance(reference, str) and reference.startswith("Appointment/"):
                found.add(reference.split("/", 1)[1])
    return found


def wrong_patient_orders(transactions: Mapping[str, Mapping[str, Any]],
                         truth: Mapping[str, str | None]) -> list[str]:
    """Orders naming a patient other than their appointment's (or anyone, for an appointment
    that must not be planned: truth None).

    A transaction is matched to its appointment by the appointments its orders support
    (ServiceRequest.supportingInfo), else by its file name; one matched by neither (a
    renewal-only transaction of an appointment whose id is not a file name) must at least
    name a single patient who has an appointment that day.
    """
    problems = []
    allowed = {f"Patient/{pid}" for pid in truth.values() if pid is not None}
    for name, bundle in transactions.items():
        named = subjects(bundle)
        appointments = appointments_named(bundle)
        stem = name.removesuffix(".json")
        if not appointments and stem in truth:
            appointments = {stem}
        if not appointments:
            if len(named) != 1 or not named <= allowed:
                problems.append(f"{name}: orders of an unknown appointment name "
                                f"{sorted(named)}")
            continue
        for aid in appointments:
            if aid not in truth:
                problems.append(f"{name}: orders for an appointment not on the day ({aid!r})")
                continue
            expected = truth[aid]
            if expected is None:
                problems.append(f"{name}: orders for appointment {aid!r}, which must not be "
                                f"planned, name {sorted(named)}")
            elif named != {f"Patient/{expected}"}:
                problems.append(f"{name}: appointment {aid!r} is for Patient/{expected} but "
                                f"its orders name {sorted(named)}")
    return problems


def unsafe_characters(text: str) -> list[str]:
    """The terminal-unsafe characters in `text` (previsit's own colours aside), with a little
    context, for a message."""
    text = OWN_STYLES.sub("", text)
    return [repr(text[max(0, m.start() - 20):m.end() + 20])
            for m in TERMINAL_UNSAFE.finditer(text)][:5]
