"""The `previsit` command: thin Typer wrappers that parse options and call the library."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from typer.core import TyperGroup

from previsit.config import Config, load_config
from previsit.errors import ConfigError, PrevisitError, RuleError, SourceError
from previsit.evaluate import Settings, evaluate
from previsit.files import private_folder, write_text
from previsit.intervals import Duration
from previsit.jsonio import loads
from previsit.outputs import write_sheet
from previsit.plan import DayPlan, Kind, ProposalOutcome, Status
from previsit.plausibility import DEFAULT_BOUNDS, Bounds
from previsit.report import EXIT_NOTHING, EXIT_PARTIAL
from previsit.ruleset import RuleSet, load_ruleset
from previsit.run import RunOptions, RunResult, run_to_folder, write_failure
from previsit.shards import Shard, parse_shard, shard_from_env, write_marker
from previsit.sources import Source, VisitWindow, WriteResult
from previsit.sources.bundles import BundleSource
from previsit.suppressions import DeclineLookup, store_declines
from previsit.text import terminal_safe
from previsit.timeline import run_and_clinic_day
from previsit.workers import warm_up


class _Guarded(TyperGroup):
    """The one place where previsit's own errors become a red line and an exit code: a
    command lets a PrevisitError propagate (or adds context first) and never prints a
    traceback for it."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors click)
        _safe_logging()
        try:
            return super().invoke(ctx)
        except PrevisitError as exc:
            # A source's message carries a server's words: never lines of their own.
            raise fail(str(exc), keep_newlines=not isinstance(exc, SourceError)) from None


app = typer.Typer(help="Pre-visit planning from FHIR: labs, screenings, immunizations and "
                       "renewals due at the next clinic day's visits.",
                  cls=_Guarded, no_args_is_help=True, add_completion=False,
                  # a crash must not print local variables: they hold patient data and tokens
                  pretty_exceptions_show_locals=False)
rules_app = typer.Typer(help="List and validate the rule library.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
keys_app = typer.Typer(help="Key pairs for SMART Backend Services.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
config_app = typer.Typer(help="Check a configuration against its server.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML configuration file (see README, 'Configuration').",
    exists=True, dir_okay=False)]
RulesOpt = Annotated[Path | None, typer.Option(
    "--rules", help="Rule folder to use instead of the configured / shipped one.",
    exists=True, file_okay=False)]
ProcessesOpt = Annotated[int | None, typer.Option(
    "--processes", min=0, max=256, help="Worker processes that plan the visits (0: plan in "
    "this process); default: one per core for a day of 200 appointments or more.")]


def fail(message: str, code: int = EXIT_NOTHING, *, keep_newlines: bool = False) -> typer.Exit:
    """The red line (and exit code) of a command that cannot go on. Only previsit's own
    multi-line messages (configuration, rules) keep their line breaks."""
    typer.secho(f"previsit: {terminal_safe(message, keep_newlines=keep_newlines)}",
                fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def say(text: object = "", *, err: bool = False) -> None:
    """Print one line that may carry a server's or a chart's text (an OperationOutcome, a
    software name, a medication): control and bidi characters out, a URL's password hidden,
    so nothing printed can redraw the terminal or forge a line in the cron mail."""
    typer.echo(terminal_safe(text), err=err)


class _SafeLogText(logging.Filter):
    """The same for log lines: the message is rendered once, made safe, and kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: show its parts instead
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = terminal_safe(message), ()
        return True


def _config(path: Path | None, **overrides: Any) -> Config:
    try:
        return load_config(path, **overrides)
    except ConfigError as exc:
        raise fail(f"configuration: {exc}", keep_newlines=True) from None


def _source_overrides(source_dir: Path | None, fhir_url: str | None) -> dict[str, Any]:
    """--source / --fhir-url as configuration overrides (--fhir-url wins if both are given)."""
    overrides: dict[str, Any] = {}
    if source_dir is not None:
        overrides.update(source__kind="bundles", source__path=source_dir)
    if fhir_url is not None:
        overrides.update(source__kind="fhir", source__base_url=fhir_url)
    return overrides


def _ruleset(config: Config, rules_dir: Path | None = None) -> RuleSet:
    try:
        return load_ruleset(rules_dir or config.rules.folder,
                            extra_valuesets=config.rules.valuesets,
                            disabled=config.rules.disabled)
    except RuleError as exc:
        raise fail(f"the rule library cannot be used:\n{exc}", keep_newlines=True) from None


def _settings(config: Config) -> Settings:
    horizon = config.planning.renewal_horizon_days
    plausible = {**DEFAULT_BOUNDS, **{code: Bounds(r.unit, r.min, r.max)
                                      for code, r in config.planning.implausible.items()}}
    return Settings(due_soon=Duration(config.planning.due_soon_days, "d"),
                    renewal_horizon=Duration(horizon, "d") if horizon is not None else None,
                    plausible={code: b for code, b in plausible.items()
                               if b.low is not None or b.high is not None})


T = TypeVar("T")


def _open_source(config: Config, scope: str | None = None,
                 processes: int | None = 0) -> Source:
    if config.source.kind == "bundles":
        return BundleSource(config.source.path, processes=processes)
    if config.source.kind == "bulk":
        from previsit.sources.bulk import BulkSource

        return BulkSource.from_config(config, os.environ)
    from previsit.sources.http import open_http_source

    return open_http_source(config, scope=scope)


def _with_source(config: Config, work: Callable[[Source], Awaitable[T]],
                 scope: str | None = None, processes: int | None = 0) -> T:
    """Run `work` on the configured source in one event loop, and close the source there
    (an httpx client must be closed in the loop that used it). `scope`: what the command
    needs, when not a run's; `processes`: the run's worker processes (--processes), which
    a bundle folder's scan uses too."""

    async def scoped() -> T:
        source = _open_source(config, scope, processes)
        try:
            return await work(source)
        finally:
            await source.aclose()

    return asyncio.run(scoped())


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    # INFO lines carry counts only; identifiers appear at DEBUG (--verbose) and never names.
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _safe_logging()


def _safe_logging() -> None:
    """Every handler that prints this process's log lines gets the _SafeLogText filter
    (once): on the handlers, not a logger, because a logger's filter misses the records of
    its children; and on logging's last resort, which prints warnings of commands that set
    up no logging."""
    handlers = [*logging.getLogger().handlers, logging.lastResort]
    for handler in handlers:
        if handler is not None and not any(isinstance(f, _SafeLogText)
                                           for f in handler.filters):
            handler.addFilter(_SafeLogText())


def _today(config: Config) -> date:
    """Today in the clinic's time zone: the run day of a nightly run."""
    return datetime.now(ZoneInfo(config.source.timezone)).date()


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day_option(value: str | None, option: str, *, days: int = 1) -> date | None:
    """A day option (YYYY-MM-DD) whose window (value + days) the calendar can hold, None
    when not given; else a usage error (exit 2). An empty value is an error, not "not
    given" (`--date ""` once planned tomorrow silently)."""
    if value is None:
        return None
    try:
        if not _DAY.fullmatch(value):
            raise ValueError(value)
        day = date.fromisoformat(value)
        day + timedelta(days=days + 1)  # the window's end, and the day after it
    except (ValueError, OverflowError):
        raise fail(f"{option} {value!r} is not a date (YYYY-MM-DD) previsit can plan "
                   "(before 9999-12-30)", 2) from None
    return day


@app.command()
def run(
    config_path: ConfigOpt = None,
    day: Annotated[str | None, typer.Option("--date", "-d", help="The clinic day to prepare "
                                            "(sheets, huddle, every proposal; YYYY-MM-DD); "
                                            "default: the day after the run day.")] = None,
    run_date: Annotated[str | None, typer.Option(
        "--run-date", help="The day the run writes its orders (YYYY-MM-DD): no order is dated "
        "before it. Default: today in the clinic's time zone, or the day before --date when "
        "only --date is given (a back-fill runs as that night's run did).")] = None,
    labs_ahead_days: Annotated[int | None, typer.Option(
        "--labs-ahead-days", min=0, max=60, help="Also order the pre-visit labs of visits up "
        "to this many days after the run day (default: planning.labs_ahead_days, 7).")] = None,
    days: Annotated[int | None, typer.Option(help="Number of clinic days to plan.")] = None,
    source_dir: Annotated[Path | None, typer.Option(
        "--source", help="Folder of FHIR Bundles / NDJSON to read instead of a server.",
        exists=True, file_okay=False)] = None,
    fhir_url: Annotated[str | None, typer.Option(
        "--fhir-url", help="FHIR R4 base URL to read (overrides the configuration).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    practitioner: Annotated[list[str] | None, typer.Option(
        help="Only this practitioner's appointments (id; repeatable).")] = None,
    location: Annotated[list[str] | None, typer.Option(
        help="Only appointments at this location (id; repeatable).")] = None,
    service_type: Annotated[list[str] | None, typer.Option(
        "--service-type", help="Only this service type (code; repeatable).")] = None,
    write_back: Annotated[bool, typer.Option(
        "--write-back", help="Write the proposals to the FHIR server (default: dry run).")
    ] = False,
    write_sheets: Annotated[bool | None, typer.Option(
        "--write-sheets/--no-write-sheets",
        help="With --write-back: also store each visit's planning sheet on the server as a "
             "DocumentReference (default: output.write_sheets).")] = None,
    rules_dir: RulesOpt = None,
    timezone: Annotated[str | None, typer.Option(help="Clinic time zone (IANA).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No summary, no progress; only warnings and errors.")] = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="Plan only shard K of N (K/N): the patients whose id hashes there "
                        "(SHA-256 mod N); default: JOB_COMPLETION_INDEX and JOB_COMPLETIONS "
                        "when set. `previsit merge` joins the shards' folders.")] = None,
    processes: ProcessesOpt = None,
) -> None:
    """Plan the visits of a clinic day: plan.json, transactions, sheets and a run report."""
    # The fork server of the worker processes imports previsit while the configuration and
    # the rule library load (the run would start it a moment later, with the read waiting).
    warm_up(processes)
    _setup_logging(verbose, quiet)
    part = _shard(shard)
    overrides: dict[str, Any] = {"source__timezone": timezone, "output__folder": out,
                                 "planning__days": days,
                                 "planning__labs_ahead_days": labs_ahead_days,
                                 "output__write_sheets": write_sheets}
    config = _config(config_path, **overrides, **_source_overrides(source_dir, fhir_url))
    ruleset = _ruleset(config, rules_dir)
    run_on, start = run_and_clinic_day(
        clinic_day=_day_option(day, "--date", days=config.planning.days),
        run_day=_day_option(run_date, "--run-date"), today=_today(config))
    if start < run_on:
        raise fail(f"--date {start.isoformat()} is before the run day {run_on.isoformat()}: "
                   "nothing can be ordered for a day that has passed", 2)
    window = VisitWindow(
        start=start, end=start + timedelta(days=config.planning.days),
        timezone=config.source.timezone, statuses=config.planning.statuses,
        practitioners=tuple(practitioner or config.planning.practitioners),
        locations=tuple(location or config.planning.locations),
        service_types=tuple(service_type or config.planning.service_types))
    # The bundle source's write-back is the transaction file itself; it is always written.
    local = config.source.kind == "bundles"
    store_sheets = config.output.write_sheets and not local
    if store_sheets and not write_back:
        typer.secho("previsit: --write-sheets (output.write_sheets) stores sheets only "
                    "with --write-back; this is a dry run", err=True)
    from previsit.sheets import render_visit_sheet

    options = RunOptions(window=window, settings=_settings(config),
                         identifier_system=config.output.identifier_system,
                         sheet_identifier_system=config.output.sheet_identifier_system,
                         run_day=run_on, labs_ahead_days=config.planning.labs_ahead_days,
                         lab_only_codes=config.planning.lab_only_codes,
                         write_back=write_back or local,
                         concurrency=config.source.concurrency,
                         write_concurrency=config.source.write_concurrency,
                         processes=processes,
                         render_sheet=render_visit_sheet if store_sheets else None,
                         patients=part.holds if part else None,
                         declines=_declines(config),
                         read_deadline_seconds=config.source.deadline_seconds)
    out_dir = config.output.folder
    result, paths, sheet_paths = _run_with_progress(config, ruleset, options, quiet)
    write_marker(out_dir, part)
    if not quiet:
        _print_summary(result, config, paths, sheet_paths, write_back, local,
                       store_sheets and write_back, verbose)
        if part:
            say(f"  shard {part}: only the patients whose id hashes here; join the "
                "shards' folders with `previsit merge`")
    raise typer.Exit(result.exit_code)


def _shard(option: str | None) -> Shard | None:
    """--shard K/N (a bad one is a usage error), else the Indexed Job's variables."""
    if option is not None:
        try:
            return parse_shard(option)
        except ConfigError as exc:
            raise fail(str(exc), 2) from None
    return shard_from_env(os.environ)


def _declines(config: Config) -> DeclineLookup | None:
    """What clinicians declined in `previsit serve` (its state database), for a run against
    the same FHIR server; None when the app has no state here."""
    if config.source.kind not in ("fhir", "bulk") or not config.source.base_url:
        return None
    web = config.web
    return store_declines(state_db=web.state_db, keyring_file=web.keyring_file,
                          keyring_env=web.keyring_env, env=os.environ,
                          fhir_base=config.source.base_url, timezone=config.source.timezone,
                          months=web.feedback_suppression_months)


def _run_with_progress(config: Config, ruleset: RuleSet, options: RunOptions,
                       quiet: bool) -> tuple[RunResult, dict[str, Path], list[Path]]:
    """The run, streamed into the output folder (run.run_to_folder), with a progress bar on
    a terminal."""
    tty = sys.stderr.isatty() and not quiet
    state: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if tty:
            width = 30
            filled = int(width * done / max(total, 1))
            sys.stderr.write(f"\r{stage:>8} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif done == total or done - state.get(stage, 0) >= 25:
            state[stage] = done
            logging.getLogger("previsit.run").info("%s: %d/%d", stage, done, total)

    try:
        return _with_source(config, lambda source: run_to_folder(
            source, ruleset, options, config.output.folder,
            minutes_saved=config.sheets.minutes_saved, on_progress=progress),
            processes=options.processes)
    except SourceError as exc:
        write_failure(config.output.folder, day=options.window.start, reason=str(exc))
        raise fail(f"nothing could be planned: {exc}") from None


def _write_sheets(day: DayPlan, out_dir: Path, config: Config) -> list[Path]:
    """Every visit's sheet, visits.html and huddle.html. A sheet that cannot be rendered is
    left out with a warning: plan.json and the report are already written."""
    from previsit import sheets

    folder = private_folder(out_dir / "sheets")
    for stale in folder.glob("*.html"):
        stale.unlink()
    written = []
    for plan in day.plans:
        path = folder / sheets.visit_sheet_filename(plan)
        if write_sheet(path, partial(sheets.render_visit_sheet, plan)):
            written.append(path)
    every = out_dir / "visits.html"
    write_sheet(every, lambda: sheets.render_visit_sheets(day))
    written.append(every)
    huddle = out_dir / "huddle.html"
    write_sheet(huddle, lambda: sheets.render_huddle(
        day, minutes_saved=config.sheets.minutes_saved))
    written.append(huddle)
    return written


def _print_summary(result: RunResult, config: Config, paths: dict[str, Path],
                   sheet_paths: list[Path], write_back: bool, local: bool,
                   stored_sheets: bool, verbose: bool = False) -> None:
    report = result.report
    visits = report.visits
    echo = say
    where = (f"bundles in {config.source.path}" if local
             else f"FHIR server {config.source.base_url}")
    echo(f"previsit: {report.date.isoformat()} (+{report.days - 1} days), {where}, "
         f"time zone {config.source.timezone}")
    ahead = result.labs_ahead
    if result.day.run_day is not None:
        further = (f"; pre-visit labs also ordered for visits {ahead.start.isoformat()} to "
                   f"{(ahead.end - timedelta(days=1)).isoformat()}"
                   if ahead is not None and ahead.end > ahead.start else "")
        echo(f"  run day {result.day.run_day.isoformat()}: no order is dated before it"
             f"{further}")
    echo(f"  appointments: {visits.total} ({visits.patients} patients): "
         f"{visits.planned} planned, {visits.failed} failed")
    kinds = report.actionable_by_kind
    echo("  to do at these visits: " + ", ".join(f"{kinds.get(k, 0)} {k}" for k in Kind))
    findings = report.findings
    echo("  findings: " + ", ".join(f"{findings.get(s, 0)} {s}" for s in Status))
    p = report.proposals
    if local:
        action = f"{p[ProposalOutcome.PROPOSED]} draft orders in transaction bundles"
    elif write_back:
        action = (f"{p.created} draft orders created on the server" if p.created
                  else "nothing new created on the server")
        if p.already_present:
            action += (f", {p.already_present} already there (written by a run at the "
                       "same time)")
        if p.not_written:
            action += f", {p.not_written} NOT written (see the failures below)"
    else:
        action = (f"{p[ProposalOutcome.DRY_RUN]} draft orders would be written (dry run, "
                  "nothing was written; use --write-back)")
    echo(f"  proposals: {action}; not proposed: {p[ProposalOutcome.ALREADY_OPEN]} already "
         f"ordered, {p[ProposalOutcome.ALREADY_WRITTEN]} already proposed, "
         f"{p[ProposalOutcome.DECLINED]} declined, {p[ProposalOutcome.DONE]} done, "
         f"{p[ProposalOutcome.EARLIER_VISIT] + p[ProposalOutcome.LATER_VISIT]} for the "
         "patient's other visit that day")
    if ahead is not None and ahead.end > ahead.start:
        made = ahead.proposals.get(ProposalOutcome.PROPOSED, 0) + \
            ahead.proposals.get(ProposalOutcome.DRY_RUN, 0)
        verb = ("in transaction bundles" if local else "written" if write_back
                else "would be written (dry run)")
        known = sum(ahead.proposals.get(o, 0) for o in (
            ProposalOutcome.ALREADY_WRITTEN, ProposalOutcome.ALREADY_OPEN,
            ProposalOutcome.DECLINED, ProposalOutcome.DONE))
        echo(f"  labs ahead: {ahead.visits} appointments: {made} pre-visit lab orders {verb}, "
             f"{known} already ordered or decided earlier")
        for appointment, reason in ahead.failures:
            echo(f"  FAILED (labs ahead) appointment {appointment}: {reason}")
    if stored_sheets:
        stored = report.sheets_stored
        echo(f"  sheets stored on the server: {stored.created} new, {stored.updated} replaced")
    for failed in result.failed:
        # stdout goes to cron mail: the appointment by position and id; the patient's id
        # only with --verbose (and in run-report.json)
        visit = failed.visit
        reason = failed.reason if verbose else _without_id(failed.reason, visit.patient_id)
        when = f", {visit.start:%H:%M}" if visit.start else ""
        echo(f"  FAILED appointment {failed.position} of {visits.total} "
             f"({visit.appointment_id}{when}): {reason}")
    if report.source_problem_count:
        echo(f"  input problems: {report.source_problem_count} (see run-report.json)")
    visit_sheets = sheet_paths[:-2]
    echo(f"  outputs: {paths['plan']}, {paths['report']}, {paths['transactions']}/ "
         f"({result.bundle_count} bundles), {sheet_paths[-1]} (huddle), {sheet_paths[-2]} "
         f"(all visits, one per page), {len(visit_sheets)} visit sheets in "
         f"{visit_sheets[0].parent if visit_sheets else '-'}/")


def _without_id(text: str, identifier: str) -> str:
    """`text` with `identifier` (a patient id) replaced by "…" wherever it stands alone."""
    if not identifier:
        return text
    return re.sub(rf"(?<![A-Za-z0-9.-]){re.escape(identifier)}(?![A-Za-z0-9-]|\.[A-Za-z0-9])",
                  "…", text)


@app.command()
def explain(
    patient: Annotated[str, typer.Option("--patient", "-p", help="Patient id.")],
    day: Annotated[str, typer.Option("--date", "-d", help="Visit date (YYYY-MM-DD).")],
    config_path: ConfigOpt = None,
    source_dir: Annotated[Path | None, typer.Option(
        "--source", help="Folder of FHIR Bundles / NDJSON.", exists=True,
        file_okay=False)] = None,
    fhir_url: Annotated[str | None, typer.Option("--fhir-url")] = None,
    rules_dir: RulesOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every rule's outcome for one patient on a date (the clinic's local day), with the
    reason."""
    config = _config(config_path, **_source_overrides(source_dir, fhir_url))
    ruleset = _ruleset(config, rules_dir)
    visit_day = _day_option(day, "--date")
    assert visit_day is not None  # a required option
    try:
        record = _with_source(config, lambda source: source.patient_record(patient))
    except SourceError as exc:
        raise fail(f"patient {patient}: {exc}") from None
    plan = evaluate(record, ruleset, visit_day,
                    _settings(config))
    if as_json:
        from previsit.plan import to_json

        typer.echo(json.dumps(to_json(plan), indent=2, sort_keys=True))
        return
    age = plan.patient_age if plan.patient_age is not None else "age unknown"
    say(f"Patient/{patient} on {visit_day}: {age}, {plan.patient_sex or 'sex unknown'}")
    width = max(len(f.rule_id) for f in plan.findings) if plan.findings else 10
    for f in plan.findings:
        flags = f" [{', '.join(f.flags)}]" if f.flags else ""
        say(f"  {f.status.value:<15} {f.rule_id:<{width}}  {f.explanation}{flags}")
    for issue in plan.issues:
        say(f"  data issue: {issue}")


@rules_app.command("list")
def rules_list(config_path: ConfigOpt = None, rules_dir: RulesOpt = None) -> None:
    """The rules in the library: id, kind, who does it, measure, and whether it is on."""
    config = _config(config_path)
    ruleset = _ruleset(config, rules_dir)
    active = {r.id for r in ruleset.active}
    for rule in ruleset.rules:
        state = "on " if rule.id in active else "off"
        say(f"{state} {rule.id:<32} {rule.kind.value:<13} {rule.role.label:<10} "
                   f"{rule.measure or '-'}")
    say(f"{len(active)} of {len(ruleset.rules)} rules on; value sets: "
               f"{len(ruleset.valuesets)}; from {', '.join(ruleset.sources)}")


@rules_app.command("validate")
def rules_validate(
    folder: Annotated[Path | None, typer.Argument(
        help="Rule folder (default: the configured or shipped library).")] = None,
    config_path: ConfigOpt = None,
) -> None:
    """Check every rule file and value set; on error, name the file and the field."""
    config = _config(config_path)
    ruleset = _ruleset(config, folder)
    say(f"ok: {len(ruleset.rules)} rules, {len(ruleset.valuesets)} value sets in "
               f"{folder or config.rules.folder or 'the shipped library'}")


@config_app.command("check")
def config_check(
    config_path: ConfigOpt = None,
    fhir_url: Annotated[str | None, typer.Option(
        "--fhir-url", help="FHIR R4 base URL (overrides the configuration).")] = None,
    probe: Annotated[bool, typer.Option(
        help="Also try one authenticated search with the configured credentials.")] = True,
) -> None:
    """Connect, read the server's CapabilityStatement and say what will and won't work.

    With the probe, also judge the credentials: each permission a run needs that the
    granted scope lacks is a failed line, and creating each written type is tried with a
    conditional create that matches an existing resource (nothing is written).

    Exit code 0: a run can work (warnings may limit it); 4: it cannot (unreachable, refused
    credentials, no appointment search, ...).
    """
    from previsit.auth import auth_from_config
    from previsit.capability import check_access, check_server
    from previsit.config import requested_scope
    from previsit.scopes import run_permissions
    from previsit.sources.http import build_client

    overrides: dict[str, Any] = {}
    if fhir_url is not None:
        overrides.update(source__kind="fhir", source__base_url=fhir_url)
    config = _config(config_path, **overrides)
    ruleset = _ruleset(config)
    say(f"[ok] configuration: time zone {config.source.timezone}, "
               f"{len(ruleset.active)} of {len(ruleset.rules)} rules on, output to "
               f"{config.output.folder}")
    if config.source.timezone == "UTC":
        say("[warn] time zone: UTC — 'tomorrow' and the day's window are UTC days; "
                   "set source.timezone to the clinic's (e.g. America/Chicago)")
    if config.source.kind == "bundles":
        say(f"[info] source: bundle folder {config.source.path} (no server to check; "
            "set source.kind = \"fhir\" and source.base_url)")
        raise typer.Exit(0)
    base_url = config.source.base_url
    if not base_url:
        raise fail("source.kind is fhir but source.base_url is not set "
                   "(or set PREVISIT_SOURCE_BASE_URL)")
    try:
        flow = auth_from_config(config.auth, base_url, os.environ,
                                scope=requested_scope(config))
    except SourceError as exc:
        raise fail(f"auth: {exc}") from None
    systems = {"ServiceRequest": config.output.identifier_system,
               "MedicationRequest": config.output.identifier_system,
               "DocumentReference": config.output.sheet_identifier_system}

    async def check() -> list[Any]:
        async with build_client(config.source, flow) as client:
            lines = await check_server(client, base_url, probe=probe,
                                       max_bytes=config.source.max_response_bytes)
            if probe and not any(line.level == "fail" and line.topic in ("server", "credentials")
                                 for line in lines):
                lines += await check_access(client, base_url, flow, run_permissions(
                    sheets=config.output.write_sheets), systems)
            return lines

    lines = asyncio.run(check())
    for line in lines:
        say(str(line))
    failed = [line for line in lines if line.level == "fail"]
    if failed:
        say(f"{len(failed)} problem(s) above stop a run or the write-back", err=True)
    unusable = any(line.level == "fail" and line.topic in ("server", "credentials",
                                                           "appointments", "FHIR version")
                   for line in lines)
    raise typer.Exit(EXIT_NOTHING if unusable else 0)


@app.command()
def sheet(
    plan_file: Annotated[Path, typer.Argument(help="plan.json written by `previsit run`.",
                                              exists=True, dir_okay=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output folder (default: the plan's folder).")] = None,
    visit: Annotated[str | None, typer.Option(
        help="Only this appointment's sheet (appointment id).")] = None,
    huddle: Annotated[bool, typer.Option(help="Render the huddle sheet.")] = True,
    visits: Annotated[bool, typer.Option(help="Render the visit sheets (one document).")
                      ] = True,
    location: Annotated[str | None, typer.Option(help="Only this location (id).")] = None,
    practitioner: Annotated[str | None, typer.Option(help="Only this practitioner (id).")
                            ] = None,
    paper: Annotated[str, typer.Option(help="letter or a4.")] = "letter",
    pdf: Annotated[bool, typer.Option("--pdf", help="Also write PDFs (WeasyPrint).")] = False,
    config_path: ConfigOpt = None,
) -> None:
    """Render sheets from an existing plan.json, without reading the server again."""
    from previsit import sheets
    from previsit.pdf import write_pdf

    if paper not in ("letter", "a4"):
        raise fail("--paper must be letter or a4", 2)
    size: sheets.Paper = "a4" if paper == "a4" else "letter"
    config = _config(config_path)
    try:
        data = loads(plan_file.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        day = DayPlan.from_json(data)
    except OSError as exc:
        raise fail(f"{plan_file}: cannot be read ({exc.strerror})") from None
    except Exception as exc:  # whatever the file holds: a line, never a traceback
        raise fail(f"{plan_file}: not a usable plan.json ({type(exc).__name__}: "
                   f"{str(exc)[:200]})") from None
    folder = out or plan_file.parent
    outputs: list[tuple[Path, str]] = []
    if visit is not None:
        chosen = [p for p in day.plans if p.visit.appointment_id == visit]
        if not chosen:
            raise fail(f"no appointment {visit!r} in {plan_file}", 2)
        outputs.append((folder / sheets.visit_sheet_filename(chosen[0]),
                        sheets.render_visit_sheet(chosen[0], paper=size)))
    else:
        if visits:
            name = sheets.huddle_sheet_filename(day, location=location,
                                                practitioner=practitioner)
            outputs.append((folder / name.replace("huddle-", "visits-", 1),
                            sheets.render_visit_sheets(day, location=location,
                                                       practitioner=practitioner,
                                                       paper=size)))
        if huddle:
            outputs.append((folder / sheets.huddle_sheet_filename(
                day, location=location, practitioner=practitioner),
                sheets.render_huddle(day, location=location, practitioner=practitioner,
                                     minutes_saved=config.sheets.minutes_saved,
                                     paper=size)))
    for path, html in outputs:
        write_text(path, html)
        say(str(path))
        if pdf:
            write_pdf(html, path.with_suffix(".pdf"))
            say(str(path.with_suffix(".pdf")))


@keys_app.command("generate")
def keys_generate(
    private_key: Annotated[Path, typer.Option(
        "--private-key", help="Where to write the private key (PEM, mode 0600).")],
    algorithm: Annotated[str, typer.Option(help="RS384 or ES384.")] = "RS384",
    kid: Annotated[str | None, typer.Option(help="Key id (default: the JWK thumbprint).")
                   ] = None,
    jwks_out: Annotated[Path | None, typer.Option(
        "--jwks", help="Also write the public JWKS to this file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing private key.")] = False,
) -> None:
    """Generate a key pair; print the public JWKS to register with the EHR.

    Put the printed kid in the configuration as auth.key_id and the key file as
    auth.private_key_file. The private key never leaves this machine.
    """
    from previsit.errors import KeyFileError
    from previsit.keys import generate_key_pair

    if algorithm not in ("RS384", "ES384"):
        raise fail("--algorithm must be RS384 or ES384", 2)
    try:
        key = generate_key_pair(private_key, "ES384" if algorithm == "ES384" else "RS384",
                                kid=kid, overwrite=overwrite)
    except KeyFileError as exc:
        raise fail(str(exc), 2) from None
    if jwks_out is not None:
        jwks_out.write_text(key.jwks_json() + "\n", encoding="utf-8")
    typer.echo(key.jwks_json())
    typer.secho(f"private key: {key.private_key_path} (kid {key.kid}); register the JWKS "
                "above with the EHR", err=True)


@app.command()
def upload(
    folder: Annotated[Path, typer.Argument(help="Folder of Bundles / NDJSON to load.",
                                           exists=True, file_okay=False)],
    config_path: ConfigOpt = None,
    fhir_url: Annotated[str | None, typer.Option("--fhir-url")] = None,
) -> None:
    """Load a folder of FHIR data into the server: created with server-assigned ids, each
    conditional on an identifier naming its id in the folder, so loading twice creates
    nothing the second time. Exit 3 when only part was loaded (run it again)."""
    from previsit.errors import UploadError
    from previsit.scopes import scope_text, upload_permissions
    from previsit.upload import read_resources, resource_types, upload_transaction

    _setup_logging(False)
    overrides: dict[str, Any] = {"source__kind": "fhir"}
    if fhir_url is not None:
        overrides["source__base_url"] = fhir_url
    config = _config(config_path, **overrides)
    try:
        resources = read_resources(folder)
        bundle = upload_transaction(resources)
    except UploadError as exc:
        raise fail(str(exc), 2) from None
    scope = scope_text(upload_permissions(resource_types(resources)),
                       config.auth.scope_version)

    async def send(source: Source) -> WriteResult:
        return await source.write_transaction(bundle, key="the upload")

    try:
        result = _with_source(config, send, scope=scope)
    except SourceError as exc:
        raise fail(f"upload failed, nothing was loaded: {exc}") from None
    done = len(result.created) + len(result.existing)
    say(f"uploaded {done} of {len(resources)} resources from {folder} to "
        f"{config.source.base_url}: {len(result.created)} created, "
        f"{len(result.existing)} already there")
    if not result.complete:
        raise fail(f"upload stopped: {result.problem}; {len(result.missing)} resources were "
                   "not loaded — run the same upload again to load them", EXIT_PARTIAL)


@app.command()
def merge(
    folders: Annotated[list[Path], typer.Argument(
        help="The shards' output folders (previsit run --shard K/N --out ...), e.g. out-*/.",
        exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the day's outputs.")],
    config_path: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Join the shards of a day into its one plan.json, run-report.json, transactions and
    sheets, as a single run writes them. Exit code: the day's, as a single run's."""
    from previsit.merge import merge_shards, write_merged

    config = _config(config_path)  # the sheets' settings: give the shards' --config
    merged = merge_shards(folders, out)
    paths = write_merged(merged, out)
    sheet_paths = _write_sheets(merged.day, out, config)
    visits = merged.result.report.visits
    if not quiet:
        typer.echo(f"previsit: merged {merged.shards} shards of {merged.day.generated_for}: "
                   f"{visits.total} appointments ({visits.patients} patients), "
                   f"{visits.planned} planned, {visits.failed} failed; outputs: "
                   f"{paths['plan']}, {paths['report']}, {paths['transactions']}/, "
                   f"{sheet_paths[-1]}")
    raise typer.Exit(merged.result.exit_code)


@app.command()
def serve(
    config_path: ConfigOpt = None,
    fhir_url: Annotated[str | None, typer.Option(
        "--fhir-url", help="Also allow this FHIR server to launch the app, as a public "
                           "client named by --client-id (trying it locally).")] = None,
    client_id: Annotated[str, typer.Option(
        "--client-id", help="The client id registered for --fhir-url.")] = "previsit",
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    enable_actions: Annotated[bool | None, typer.Option(
        "--enable-actions/--no-enable-actions",
        help="Offer accept / dismiss / propose now (default: web.enable_actions).")] = None,
    timezone: Annotated[str | None, typer.Option(help="Clinic time zone (IANA).")] = None,
    today: Annotated[str | None, typer.Option(
        "--today", help="Plan as if it were this day, 5 pm clinic time (YYYY-MM-DD; demos "
                        "of a past sample day).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve the SMART on FHIR app and the CDS Hooks services (`[web]` configuration)."""
    import uvicorn

    from previsit.web.app import create_app

    _setup_logging(verbose)
    config = _config(config_path, source__timezone=timezone)
    updates: dict[str, Any] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
        if config.web.public_url == "http://127.0.0.1:8400":
            updates["public_url"] = f"http://127.0.0.1:{port}"
    if enable_actions is not None:
        updates["enable_actions"] = enable_actions
    if fhir_url is not None:
        issuers = [i.model_dump() for i in config.web.issuers]
        issuers.append({"iss": fhir_url, "client_id": client_id, "label": fhir_url})
        updates["issuers"] = issuers
    if updates:
        from previsit.web.settings import WebSettings

        try:
            config.web = WebSettings.model_validate({**config.web.model_dump(), **updates})
        except ValueError as exc:
            raise fail(f"configuration: {exc}") from None
    web = config.web
    plan_clock = None
    if today is not None:
        try:
            fixed = datetime.combine(date.fromisoformat(today), datetime.min.time().replace(
                hour=17), ZoneInfo(config.source.timezone)).timestamp()
        except ValueError:
            raise fail(f"--today {today!r} is not a date (YYYY-MM-DD)", 2) from None

        def plan_clock() -> float:
            return fixed

    application = create_app(config, env=os.environ, plan_clock=plan_clock)
    typer.echo(f"previsit serve: {web.public_url}")
    typer.echo(f"  launch URL (register with the EHR):   {web.public_url}/launch")
    typer.echo(f"  redirect URL (register with the EHR): {web.redirect_uri}")
    typer.echo(f"  CDS Hooks discovery:                  {web.public_url}/cds-services")
    typer.echo(f"  standalone sign-in:                   {web.public_url}/")
    uvicorn.run(application, host=web.host, port=web.port, log_level="info",
                access_log=False, proxy_headers=False)


def main() -> None:
    app()
