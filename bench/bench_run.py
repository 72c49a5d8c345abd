"""Whole-run benchmark: the real `previsit run`, at health-system sizes, timed and weighed.

    .venv/bin/python bench/bench_run.py                        # 1,000 / 5,000 / 10,000
    .venv/bin/python bench/bench_run.py --sizes 20             # smoke: a minute or so
    .venv/bin/python bench/bench_run.py --sizes 1000 --sources bundle --profile
    .venv/bin/python bench/bench_run.py --check --json results.json

For each size N (patients, one appointment each unless --visits-per-patient) it runs the
installed CLI, `.venv/bin/previsit run`, as a child process, so that its wall time and
peak memory are the command's own. Peak memory is that of the whole process tree (the run
and any worker processes it starts): the sum of the PSS of every process of the run's
session, sampled from /proc every 0.1 s, or the run's own peak RSS (wait4's ru_maxrss)
when that is larger — ru_maxrss alone would count one process of a pool:
- source `bundle`: a folder written by synthea_day.py (cached under --cache-dir by N);
- source `http`: a fresh fhir_bench_server.py per run (`--latency-ms`, default 50), as a
  dry run and with `--write-back` (`--modes`); the server counts the requests.

Prints the machine and date, one table (wall seconds, peak RSS, CPU seconds, read
requests and transactions per appointment, appointments per second, the server's CPU
seconds), the run report's `timings` per run (whatever keys the product writes), the
curve per source and mode (seconds per appointment and peak RSS against size) and
PASS/FAIL for each target of the issue. Each run is capped (--timeout, --max-rss-mb) and
reported as "did not finish" rather than hanging. `--check` makes a FAIL exit 1.

`--profile` instead runs each selected run under cProfile and prints where the time goes,
by stage (JSON decode, record build, evaluate, proposals + fhir.resources validation,
sheet rendering, JSON encoding of plan.json and transactions, I/O, HTTP client, waiting
on the network...), with the top cumulative entries of each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from fhir_bench_server import start_server_process, stop_server_process
from synthea_day import (
    DEFAULT_DAY,
    DEFAULT_TZ,
    DaySpec,
    Template,
    cached_day,
    find_synthea,
    load_templates,
)

ROOT = Path(__file__).resolve().parent.parent
MODES = ("dry-run", "write-back")
SOURCES = ("bundle", "http")


# --- the machine -------------------------------------------------------------------------


def _proc_field(path: str, name: str) -> str | None:
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        return None
    return None


def machine(python: Path) -> dict[str, str]:
    """What the README quotes: date, CPU, cores, RAM, Python, OS, commit."""
    memory_kb = _proc_field("/proc/meminfo", "MemTotal") or "0 kB"
    try:
        version = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": str(os.cpu_count()),
        "ram": f"{int(memory_kb.split()[0]) / 1024 ** 2:.1f} GiB",
        "python": version,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "commit": commit,
    }


_REFERENCE_LOOP = """
import time
best = float("inf")
for _ in range(3):
    started = time.perf_counter()
    total = 0
    for n in range(3_000_000):
        total += n % 7
    best = min(best, time.perf_counter() - started)
print(round(best * 1000))
"""


def reference_ms(python: Path) -> int | None:
    """How fast this machine runs Python right now: a fixed loop's best of 3, in ms. A
    shared or throttled machine can be a third slower one hour than the next while
    "others CPU s" stays near zero; compare runs only at a like figure."""
    try:
        done = subprocess.run([str(python), "-c", _REFERENCE_LOOP], capture_output=True,
                              text=True, check=True, timeout=120)
        return int(done.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


# --- one measured child process ----------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One child process: how it ended and what it cost."""

    outcome: str  # "ok", "exit 3", "timeout", "memory cap", "killed by signal 9"
    exit_code: int | None
    wall_seconds: float
    peak_rss_mb: float  # the run's peak memory: max(tree PSS sampled, own ru_maxrss)
    cpu_seconds: float  # user + system, of the run and its worker processes
    machine_cpu_seconds: float  # CPU time the whole machine spent meanwhile (/proc/stat)
    tree_pss_mb: float = 0.0  # peak of the sampled PSS sum over the run's processes
    own_rss_mb: float = 0.0  # wait4's ru_maxrss of the run's main process
    peak_processes: int = 1  # most processes of the run seen at once

    @property
    def finished(self) -> bool:
        return self.outcome == "ok" or self.outcome.startswith("exit ")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), 0 when unknown."""
    try:
        fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
    busy = sum(int(v) for i, v in enumerate(fields[1:9]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    value = _proc_field(f"/proc/{pid}/status", "VmRSS")
    return int(value.split()[0]) / 1024 if value else 0.0


def session_processes(session: int) -> list[int]:
    """The processes of a session (the run was started in its own: it and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == session:
            pids.append(int(entry.name))
    return pids


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()  # fields 3.. of proc(5): utime is 14th
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pss_mb(pids: Iterable[int]) -> float:
    """The summed PSS of these processes (shared pages counted once across them)."""
    total_kb = 0
    for pid in pids:
        value = _proc_field(f"/proc/{pid}/smaps_rollup", "Pss")
        total_kb += int(value.split()[0]) if value else 0
    return total_kb / 1024


def measure_command(command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path,
                    timeout: float, max_rss_mb: float) -> Measured:
    """Run `command`, reap it with wait4 (its own rusage, not the server's), cap it."""
    with log.open("wb") as out:
        busy_before = machine_busy_seconds()
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                   start_new_session=True)
        stopped_for: str | None = None
        peak_pss = 0.0
        peak_processes = 1
        cpu_seen: dict[int, float] = {}  # per process of the run: its CPU when last seen
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                tree = session_processes(process.pid)
                peak_processes = max(peak_processes, len(tree))
                for member in tree:
                    cpu_seen[member] = max(cpu_seen.get(member, 0.0), cpu_seconds_of(member))
                pss = tree_pss_mb(tree)
                peak_pss = max(peak_pss, pss)
                if stopped_for is None:
                    if time.perf_counter() - started > timeout:
                        stopped_for = "timeout"
                    elif max_rss_mb and max(pss, _rss_mb(process.pid)) > max_rss_mb:
                        stopped_for = "memory cap"
                    if stopped_for is not None:
                        os.killpg(process.pid, signal.SIGKILL)
                time.sleep(0.1)
        except BaseException:  # interrupted: do not leave the run behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        wall = time.perf_counter() - started
        machine_cpu = machine_busy_seconds() - busy_before
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code  # reaped here; Popen must not wait for it again
    if stopped_for is not None:
        outcome = stopped_for
    elif code < 0:
        outcome = f"killed by signal {-code}"
    else:
        outcome = "ok" if code == 0 else f"exit {code}"
    own = usage.ru_maxrss / 1024
    # Workers started by a fork server are not the run's children: its rusage misses them.
    # Their CPU as last sampled (up to 0.1 s of each one's end is missed) counts instead.
    own_cpu = usage.ru_utime + usage.ru_stime
    others = sum(cpu for member, cpu in cpu_seen.items() if member != process.pid)
    return Measured(outcome, code if code >= 0 else None, wall, max(own, peak_pss),
                    max(own_cpu, cpu_seen.get(process.pid, 0.0) + others), machine_cpu,
                    tree_pss_mb=peak_pss, own_rss_mb=own, peak_processes=peak_processes)


# --- runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    size: int  # patients
    source: str
    mode: str
    appointments: int
    measured: Measured
    planned: int | None = None
    failed: int | None = None
    reads: int | None = None  # HTTP read requests the server counted (GET + batch POST)
    transactions: int | None = None
    server_cpu_seconds: float | None = None
    server_peak_rss_mb: float | None = None
    timings: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def others_cpu_seconds(self) -> float:
        """CPU the machine spent on anything but previsit and the server during the run.

        Other work on a 2-core machine slows the run down: a large value marks a noisy
        figure (the benchmark's own polling is a few tenths of a second).
        """
        m = self.measured
        return max(0.0, m.machine_cpu_seconds - m.cpu_seconds -
                   (self.server_cpu_seconds or 0.0))

    @property
    def seconds_per_appointment(self) -> float | None:
        if not self.measured.finished or not self.appointments:
            return None
        return self.measured.wall_seconds / self.appointments

    def per_appointment(self, count: int | None) -> float | None:
        return None if count is None or not self.appointments else count / self.appointments

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reads_per_appointment"] = self.per_appointment(self.reads)
        data["transactions_per_appointment"] = self.per_appointment(self.transactions)
        data["others_cpu_seconds"] = round(self.others_cpu_seconds, 2)
        return data


@dataclass(frozen=True)
class Settings:
    python: Path
    previsit: Path
    synthea: Path
    cache_dir: Path
    work_dir: Path
    day: date
    timezone: str
    visits_per_patient: int
    latency_ms: float
    timeout: float
    max_rss_mb: float
    concurrency: int | None
    extra_args: tuple[str, ...]
    keep_outputs: bool
    profile: bool


def _env(settings: Settings) -> dict[str, str]:
    # A PREVISIT_* variable of the caller's shell would change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVISIT_")}
    if settings.concurrency is not None:
        env["PREVISIT_SOURCE_CONCURRENCY"] = str(settings.concurrency)
    return env


def _command(settings: Settings, source_args: Sequence[str], out: Path, write_back: bool,
             profile_to: Path | None) -> list[str]:
    run = ["run", *source_args, "--date", settings.day.isoformat(), "--timezone",
           settings.timezone, "--out", str(out), "--quiet",
           *(["--write-back"] if write_back else []), *settings.extra_args]
    if profile_to is not None:  # the console script is a Python file: run it under cProfile
        return [str(settings.python), "-m", "cProfile", "-o", str(profile_to),
                str(settings.previsit), *run]
    return [str(settings.previsit), *run]


def _report(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / "run-report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join("      " + line[:200] for line in text[-lines:])


def run_one(settings: Settings, templates: Sequence[Template], size: int, source: str,
            mode: str) -> tuple[Row, Path | None]:
    """One measured run; returns the row and, with --profile, the cProfile file."""
    spec = DaySpec(patients=size, appointments=size * settings.visits_per_patient,
                   day=settings.day, timezone=settings.timezone)
    label = f"{size}-{source}-{mode}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{label}-", dir=settings.work_dir))
    out = run_dir / "out"
    log = run_dir / "previsit.log"
    profile_to = run_dir / "run.prof" if settings.profile else None
    note = ""
    server = None
    stats: dict[str, Any] = {}
    try:
        if source == "bundle":
            folder = settings.cache_dir / (f"synthea-day-{size}p-{spec.appointments}a-"
                                           f"{spec.day}-{spec.timezone.replace('/', '_')}")
            made = cached_day(spec, templates, folder)
            note = (f"folder {made.bytes / 1e6:.0f} MB" +
                    ("" if made.reused else f", generated in {made.seconds:.0f} s"))
            command = _command(settings, ["--source", str(folder)], out, False, profile_to)
            measured = measure_command(command, env=_env(settings), cwd=run_dir, log=log,
                                       timeout=settings.timeout,
                                       max_rss_mb=settings.max_rss_mb)
        else:
            server, base_url = start_server_process(
                patients=size, appointments=spec.appointments, latency_ms=settings.latency_ms,
                synthea=settings.synthea, day=spec.day, timezone=spec.timezone)
            stats_url = base_url.rsplit("/", 1)[0] + "/__stats"
            httpx.post(stats_url + "/reset", timeout=30)
            command = _command(settings, ["--fhir-url", base_url], out, mode == "write-back",
                               profile_to)
            measured = measure_command(command, env=_env(settings), cwd=run_dir, log=log,
                                       timeout=settings.timeout,
                                       max_rss_mb=settings.max_rss_mb)
            try:
                stats = httpx.get(stats_url, timeout=30).json()
            except httpx.HTTPError:
                stats = {}
    finally:
        if server is not None:
            stop_server_process(server)
    report = _report(out) if measured.finished else {}
    visits = report.get("visits") or {}
    row = Row(size=size, source=source, mode=mode, appointments=spec.appointments,
              measured=measured, planned=visits.get("planned"), failed=visits.get("failed"),
              reads=stats.get("reads"), transactions=stats.get("transactions"),
              server_cpu_seconds=stats.get("cpu_seconds"),
              server_peak_rss_mb=stats.get("peak_rss_mb"),
              timings=report.get("timings") or {},
              note=note or (f"server peak RSS {stats['peak_rss_mb']:.0f} MB"
                            if "peak_rss_mb" in stats else ""))
    if not measured.finished or measured.outcome != "ok":
        print(f"    {label}: {measured.outcome}; last lines of {log}:\n{_tail(log)}",
              flush=True)
    kept_profile = None
    if profile_to is not None and profile_to.is_file():
        kept_profile = settings.work_dir / f"{label}.prof"
        shutil.move(profile_to, kept_profile)
    # The run's outputs stay until the benchmark ends (main removes the work folder): on an
    # ext4 without a journal (this VM's disk) a file made within minutes of thousands of
    # deletions nearby costs up to a millisecond, as the allocator steps over each recently
    # deleted inode, so removing them here made the next run pay for this one's cleanup
    # (measured: 2,000 output files in 0.07 s, or in 2.5 s after such deletions).
    return row, kept_profile


def plan_runs(sizes: Iterable[int], sources: Iterable[str], modes: Iterable[str]
              ) -> list[tuple[int, str, str]]:
    """(size, source, mode) in the order they run: by size, bundle first."""
    runs = []
    for size in sizes:
        for source in sources:
            if source == "bundle":
                # The bundle source's write-back is the transaction files: always written.
                runs.append((size, source, "local"))
            else:
                runs.extend((size, source, mode) for mode in modes)
    return runs


# --- printing ----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


HEADER = (f"{'size':>6} {'source':<6} {'mode':<10} {'appts':>6} {'wall s':>8} "
          f"{'peak MB':>8} {'tree PSS':>8} {'procs':>5} {'CPU s':>7} {'reads/appt':>10} "
          f"{'tx/appt':>7} "
          f"{'appts/s':>8} {'server CPU s':>12} {'others CPU s':>12} {'result':<10}")


def format_row(row: Row) -> str:
    m = row.measured
    rate = row.appointments / m.wall_seconds if m.finished and m.wall_seconds else None
    wall = _num(m.wall_seconds) if m.finished else f">{m.wall_seconds:.0f}"
    result = m.outcome if row.failed in (None, 0) else f"{m.outcome}, {row.failed} failed"
    return (f"{row.size:>6} {row.source:<6} {row.mode:<10} {row.appointments:>6} {wall:>8} "
            f"{_num(m.peak_rss_mb, 0):>8} {_num(m.tree_pss_mb, 0):>8} {m.peak_processes:>5} "
            f"{_num(m.cpu_seconds):>7} "
            f"{_num(row.per_appointment(row.reads), 2):>10} "
            f"{_num(row.per_appointment(row.transactions), 2):>7} {_num(rate):>8} "
            f"{_num(row.server_cpu_seconds):>12} {_num(row.others_cpu_seconds):>12} "
            f"{result:<10}")


def format_timings(row: Row) -> str:
    if not row.timings:
        return ""
    parts = []
    for key, value in row.timings.items():
        name = key.removesuffix("_seconds")
        parts.append(f"{name} {value:.2f} s" if isinstance(value, int | float)
                     else f"{name} {value}")
    return f"  {row.size:>6} {row.source:<6} {row.mode:<10} " + ", ".join(parts)


# --- targets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    target: str
    status: str  # PASS, FAIL, n/a
    detail: str


def _find(rows: Sequence[Row], size: int, source: str, mode: str) -> Row | None:
    return next((r for r in rows if (r.size, r.source, r.mode) == (size, source, mode)), None)


def _limit(target: str, row: Row | None, value: Callable[[Row], float | None], limit: float,
           unit: str, strict: bool = False) -> Verdict:
    if row is None:
        return Verdict(target, "n/a", "size not run")
    if not row.measured.finished:
        return Verdict(target, "FAIL", f"did not finish ({row.measured.outcome} after "
                       f"{row.measured.wall_seconds:.0f} s)")
    got = value(row)
    if got is None:
        return Verdict(target, "n/a", "not measured")
    ok = got < limit if strict else got <= limit
    return Verdict(target, "PASS" if ok else "FAIL", f"{got:,.2f} {unit}")


def _curves(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    curves: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.size):
        curves[(row.source, row.mode)].append(row)
    return curves


def check_targets(rows: Sequence[Row]) -> list[Verdict]:
    """The issue's targets, on whatever sizes were run."""
    verdicts = [
        _limit("bundle, 1,000 patients: wall <= 8 s", _find(rows, 1000, "bundle", "local"),
               lambda r: r.measured.wall_seconds, 8, "s"),
        _limit("bundle, 1,000 patients: peak RSS <= 400 MB",
               _find(rows, 1000, "bundle", "local"), lambda r: r.measured.peak_rss_mb, 400,
               "MB"),
    ]
    for mode in MODES:
        verdicts.append(_limit(f"http {mode}, 10,000 appointments: wall < 300 s",
                               _find(rows, 10000, "http", mode),
                               lambda r: r.measured.wall_seconds, 300, "s", strict=True))
    http = [r for r in rows if r.source == "http" and r.measured.finished]
    if http:
        worst = max(http, key=lambda r: r.per_appointment(r.reads) or 0.0)
        verdicts.append(_limit("http: <= 1.5 read requests per appointment (worst run)",
                               worst, lambda r: r.per_appointment(r.reads), 1.5,
                               f"reads/appt ({worst.size} {worst.mode})"))
    else:
        verdicts.append(Verdict("http: <= 1.5 read requests per appointment", "n/a",
                                "no HTTP run finished"))
    for (source, mode), curve in sorted(_curves(rows).items()):
        # memory flat whatever the source (the streaming run); time linear as well
        run = f"{source} {mode}"
        small, large = curve[0], curve[-1]
        if small is large:
            name = f"{run}: peak RSS at the largest size <= 1.3 x at the smallest"
            linear = f"{run}: linear time, s/appt at the largest size <= 1.25 x at " \
                "the smallest"
        else:
            name = f"{run}: peak RSS at {large.size:,} <= 1.3 x at {small.size:,}"
            linear = f"{run}: linear time, s/appt at {large.size:,} <= 1.25 x at " \
                f"{small.size:,}"
        if small is large:
            verdicts.append(Verdict(name, "n/a", "one size only"))
            verdicts.append(Verdict(linear, "n/a", "one size only"))
            continue
        if not (small.measured.finished and large.measured.finished):
            late = small if not small.measured.finished else large
            for target in (name, linear):
                verdicts.append(Verdict(target, "FAIL", f"{late.size:,} did not finish "
                                        f"({late.measured.outcome})"))
            continue
        ratio = large.measured.peak_rss_mb / small.measured.peak_rss_mb
        verdicts.append(Verdict(name, "PASS" if ratio <= 1.3 else "FAIL",
                                f"{ratio:.2f} x ({small.measured.peak_rss_mb:,.0f} -> "
                                f"{large.measured.peak_rss_mb:,.0f} MB)"))
        per_small, per_large = small.seconds_per_appointment, large.seconds_per_appointment
        assert per_small is not None and per_large is not None
        ratio = per_large / per_small
        verdicts.append(Verdict(linear, "PASS" if ratio <= 1.25 else "FAIL",
                                f"{ratio:.2f} x ({per_small * 1e3:.1f} -> "
                                f"{per_large * 1e3:.1f} ms per appointment)"))
    return verdicts


def print_curves(rows: Sequence[Row]) -> None:
    for (source, mode), curve in sorted(_curves(rows).items()):
        if len(curve) < 2:
            continue
        base = curve[0]
        points = []
        for row in curve:
            per = row.seconds_per_appointment
            rss = row.measured.peak_rss_mb / base.measured.peak_rss_mb \
                if base.measured.peak_rss_mb else 0.0
            points.append(f"{row.size:,}: {'-' if per is None else f'{per * 1e3:.1f} ms/appt'}"
                          f", {row.measured.peak_rss_mb:,.0f} MB ({rss:.2f} x)")
        print(f"  {source} {mode}: " + "; ".join(points))


# --- profiling -----------------------------------------------------------------------------

# A function's own time goes to the first stage its file or name matches; a function that
# matches none (helpers such as previsit.intervals, builtins) is charged to its callers'
# stages in proportion to the time each caller spent in it, as gprof does.
STAGE_FILES: tuple[tuple[str, str], ...] = (
    ("json/decoder.py", "JSON decode"),
    ("json/encoder.py", "JSON encode (plan.json, transactions, report)"),
    ("previsit/record.py", "record build"),
    ("previsit/evaluate.py", "evaluate (rules)"),
    ("previsit/proposals.py", "proposals + fhir.resources validation"),
    ("previsit/documents.py", "proposals + fhir.resources validation"),
    ("fhir/resources/", "proposals + fhir.resources validation"),
    ("fhir_core/", "proposals + fhir.resources validation"),
    ("pydantic/", "proposals + fhir.resources validation"),
    ("pydantic_core/", "proposals + fhir.resources validation"),
    ("previsit/sheets.py", "sheet rendering"),
    ("jinja2/", "sheet rendering"),
    ("markupsafe/", "sheet rendering"),
    ("previsit/sources/bundles.py", "bundle source (indexing)"),
    ("previsit/sources/http.py", "HTTP client"),
    ("httpx/", "HTTP client"),
    ("httpcore/", "HTTP client"),
    ("h11/", "HTTP client"),
    ("tenacity/", "HTTP client"),
    ("anyio/", "HTTP client"),
    ("previsit/ruleset.py", "start-up (imports, rule library)"),
    ("yaml/", "start-up (imports, rule library)"),
    ("<frozen importlib", "start-up (imports, rule library)"),
    ("pathlib.py", "file I/O"),
    ("asyncio/", "asyncio event loop"),
    ("logging/", "logging"),
    ("previsit/run.py", "orchestration (run, cli)"),
    ("cli/app.py", "orchestration (run, cli)"),
    ("previsit/cli/app.py", "orchestration (run, cli)"),
)
STAGE_BUILTINS: tuple[tuple[str, str], ...] = (
    ("orjson.loads", "JSON decode"),
    ("_json.scanstring", "JSON decode"),
    ("orjson.dumps", "JSON encode (plan.json, transactions, report)"),
    ("_json.encode_basestring", "JSON encode (plan.json, transactions, report)"),
    ("select.epoll", "waiting on the network (epoll)"),
    ("_io.", "file I/O"),
    ("io.open", "file I/O"),
    ("posix.", "file I/O"),
    ("_socket.socket", "socket I/O"),
    ("_ssl.", "socket I/O"),
)
StatKey = tuple[str, int, str]


def stage_of(key: StatKey) -> str | None:
    filename, _, name = key
    path = filename.replace("\\", "/")
    if name == "<module>" or "<frozen importlib" in path:
        return "start-up (imports, rule library)"
    if path == "~":
        return next((stage for marker, stage in STAGE_BUILTINS if marker in name), None)
    if path.endswith("json/__init__.py"):
        return "JSON decode" if name.startswith("load") else \
            "JSON encode (plan.json, transactions, report)"
    if path.endswith("previsit/plan.py") and "json" in name:
        return "JSON encode (plan.json, transactions, report)"
    return next((stage for marker, stage in STAGE_FILES if marker in path), None)


def stage_times(stats: Mapping[StatKey, Any]) -> tuple[dict[str, float],
                                                          dict[StatKey, dict[str, float]]]:
    """Seconds per stage (summing to the profiled total) and each function's shares.

    An unmatched function's shares are the time-weighted mix of its callers' shares,
    found by iterating to a fixed point (recursion and mutual recursion need no special
    case; self-calls are ignored). Whatever reaches no stage is "other".
    """
    shares: dict[StatKey, dict[str, float]] = {}
    edges: dict[StatKey, list[tuple[StatKey, float]]] = {}
    for key, entry in stats.items():
        own = stage_of(key)
        if own is not None:
            shares[key] = {own: 1.0}
            continue
        callers = [(caller, float(data[3])) for caller, data in entry[4].items()
                   if caller in stats and caller != key and float(data[3]) > 0]
        total = sum(weight for _, weight in callers)
        edges[key] = [(caller, weight / total) for caller, weight in callers]
        shares[key] = {} if callers else {"other": 1.0}
    for _ in range(200):
        change = 0.0
        for key, callers in edges.items():
            if not callers:
                continue
            mixed: dict[str, float] = {}
            for caller, fraction in callers:
                for stage, part in shares[caller].items():
                    mixed[stage] = mixed.get(stage, 0.0) + part * fraction
            change = max(change, abs(sum(mixed.values()) - sum(shares[key].values())))
            shares[key] = mixed
        if change < 1e-9:
            break
    for mix in shares.values():  # a cycle nothing outside it calls
        missing = 1.0 - sum(mix.values())
        if missing > 1e-6:
            mix["other"] = mix.get("other", 0.0) + missing
    seconds: dict[str, float] = defaultdict(float)
    for key, entry in stats.items():
        for stage, fraction in shares[key].items():
            seconds[stage] += float(entry[2]) * fraction
    return dict(seconds), shares


def print_profile(path: Path, top: int) -> None:
    loaded = pstats.Stats(str(path))
    stats: Mapping[StatKey, Any] = loaded.stats  # type: ignore[attr-defined]
    seconds, shares = stage_times(stats)
    total = sum(seconds.values()) or 1.0
    print(f"  profiled total {total:.1f} s (cProfile's overhead inflates Python-heavy stages "
          "by up to ~2x; compare shares, not absolute seconds)")
    print(f"  {'stage':<48} {'seconds':>8} {'share':>6}")
    for stage, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {stage:<48} {value:>8.2f} {value / total:>6.1%}")
    by_stage: dict[str, list[tuple[float, float, int, StatKey]]] = defaultdict(list)
    for key, (_, calls, own_time, cumulative, _) in stats.items():
        parts = shares.get(key) or {"other": 1.0}
        main = max(parts.items(), key=lambda item: item[1])[0]
        by_stage[main].append((cumulative, own_time, calls, key))
    print("\n  top cumulative entries per stage (cumulative s, own s, calls, function):")
    for stage, _ in sorted(seconds.items(), key=lambda item: -item[1]):
        entries = sorted(by_stage.get(stage, ()), key=lambda e: -e[0])[:top]
        if not entries:
            continue
        print(f"  [{stage}]")
        for cumulative, own_time, calls, (filename, line, name) in entries:
            where = name if filename == "~" else \
                f"{name} ({_short(filename)}:{line})"
            print(f"    {cumulative:>8.2f} {own_time:>8.2f} {calls:>9} {where}")


def _short(filename: str) -> str:
    path = filename.replace("\\", "/")
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- main ----------------------------------------------------------------------------------


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # run the clean-ups: child, server


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000],
                        help="patients per run (default: 1000 5000 10000)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="HTTP runs: dry run and/or --write-back")
    parser.add_argument("--visits-per-patient", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds before a run is stopped (default 900)")
    parser.add_argument("--max-rss-mb", type=float, default=16000.0,
                        help="stop a run whose RSS passes this (0: no cap)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="PREVISIT_SOURCE_CONCURRENCY for the runs (default: previsit's)")
    parser.add_argument("--date", type=date.fromisoformat, default=DEFAULT_DAY)
    parser.add_argument("--timezone", default=DEFAULT_TZ)
    parser.add_argument("--synthea", type=Path, default=find_synthea())
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv",
                        help="virtualenv whose bin/previsit is measured")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "previsit-bench-cache",
                        help="generated bundle folders, reused by size")
    parser.add_argument("--previsit-arg", action="append", default=[], dest="extra_args",
                        help="extra argument for every `previsit run` (repeatable)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each case this many times and keep the fastest")
    parser.add_argument("--keep-outputs", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="run under cProfile and print time per stage instead")
    parser.add_argument("--profile-top", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target FAILs")
    args = parser.parse_args(argv)
    if args.synthea is None or not args.synthea.is_dir():
        parser.error("no Synthea folder: pass --synthea")
    previsit = args.venv / "bin" / "previsit"
    if not previsit.is_file():
        parser.error(f"{previsit} not found: install previsit in --venv")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        python=args.venv / "bin" / "python", previsit=previsit, synthea=args.synthea,
        cache_dir=args.cache_dir,
        work_dir=Path(tempfile.mkdtemp(prefix="previsit-bench-")), day=args.date,
        timezone=args.timezone, visits_per_patient=args.visits_per_patient,
        latency_ms=args.latency_ms, timeout=args.timeout, max_rss_mb=args.max_rss_mb,
        concurrency=args.concurrency, extra_args=tuple(args.extra_args),
        keep_outputs=args.keep_outputs, profile=args.profile)
    info = machine(settings.python)
    print(f"previsit whole-run benchmark, {info['date']}, commit {info['commit']}")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, "
          f"Python {info['python']}, {info['os']}")
    print(f"data: Synthea replicas from {settings.synthea}, {settings.visits_per_patient} "
          f"appointment(s) per patient on {settings.day} ({settings.timezone}); HTTP: "
          f"benchmark server, {settings.latency_ms:g} ms per response; cap {settings.timeout:g} "
          f"s and {settings.max_rss_mb:g} MB per run; work dir {settings.work_dir}")
    print("others CPU s: CPU time the machine spent on anything but previsit and the "
          "benchmark server during the run (other work slows the run: a noisy figure)")
    speed = [reference_ms(settings.python)]
    print(f"machine speed: reference loop {speed[0]} ms (lower is faster; see reference_ms)\n",
          flush=True)
    templates = load_templates(settings.synthea)
    rows: list[Row] = []
    profiles: list[tuple[str, Path]] = []
    print(HEADER, flush=True)
    for size, source, mode in plan_runs(args.sizes, args.sources, args.modes):
        row, profile = run_one(settings, templates, size, source, mode)
        for attempt in range(2, args.repeat + 1):
            again, _ = run_one(settings, templates, size, source, mode)
            if again.measured.finished and (not row.measured.finished or
                                            again.measured.wall_seconds <
                                            row.measured.wall_seconds):
                row = again
            if attempt == args.repeat:
                row = replace(row, note=f"{row.note}, fastest of {args.repeat}".lstrip(", "))
        rows.append(row)
        print(format_row(row) + (f"  {row.note}" if row.note else ""), flush=True)
        if profile is not None:
            profiles.append((f"{size} {source} {mode}", profile))
    timings = [line for line in (format_timings(r) for r in rows) if line]
    if timings:
        print("\nrun-report.json timings:")
        print("\n".join(timings))
    if len({r.size for r in rows}) > 1:
        print("\ncurve (ms of wall per appointment, peak RSS against the smallest size):")
        print_curves(rows)
    for label, path in profiles:
        print(f"\nprofile of {label} ({path}):")
        print_profile(path, args.profile_top)
    speed.append(reference_ms(settings.python))
    print(f"\nmachine speed: reference loop {speed[0]} ms before the runs, {speed[1]} ms after")
    verdicts = [] if args.profile else check_targets(rows)
    if verdicts:
        print("\ntargets:")
        for verdict in verdicts:
            print(f"  {verdict.status:<4} {verdict.target}: {verdict.detail}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "machine": info, "latency_ms": settings.latency_ms, "reference_ms": speed,
            "rows": [r.to_json() for r in rows],
            "targets": [asdict(v) for v in verdicts]}, indent=2, default=str) + "\n",
            encoding="utf-8")
    if not settings.keep_outputs and not profiles:
        shutil.rmtree(settings.work_dir, ignore_errors=True)
    failed = any(v.status == "FAIL" for v in verdicts)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
