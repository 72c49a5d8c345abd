"""Issue 8, items 9-16 (low severity): sheets, PDFs, options, plan files, keys, odd inputs.

9   bidi controls (U+202E …) in names and units reorder what a sheet shows (a date read
    backwards). Wanted: no bidi override/embedding/isolate characters in a sheet.
10  no length cap on displayed values: a 10 MB name makes 10 MB sheets. Wanted: capped.
11  the PDF fetch blocker is a plain function, which WeasyPrint 70 does not accept as a
    url_fetcher: any reference in a page crashes the PDF. Wanted: blocked, PDF written.
12  `--fhir-url http://user:pass@host` is printed with its password. Wanted: never printed.
13  `--date 9999-12-31` (OverflowError), `--date ""` (silently tomorrow),
    `lookback: 99999999999999999999y` in a rule (OverflowError at evaluation). Wanted:
    usage error 2 for the options, the rule refused (exit 4) naming its file.
14  `previsit sheet` on a plan.json holding `[]` or deep JSON: traceback. Wanted: exit 4.
15  a birthDate in the future gives age -4, silently. Wanted: no negative age, said so.
16  `keys generate --overwrite` writes through a symlink; a UTF-8 BOM makes a bundle file
    unreadable; 100,000 duplicate ids make a report of one line each; FAILED lines name the
    patient's id. Wanted: the link's target untouched; BOM files read; problems
    summarised; the console names appointments, never patients.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from builders import observation, patient, tiny_rules
from hostile_server import Chart, HostileFhirServer, Recorder, deep_json

from hostile.harness import (
    DAY,
    chart,
    clinic_day,
    run_args,
    run_cli,
)

if TYPE_CHECKING:
    from hostile.conftest import AssumedInterface

OVERRIDES = re.compile("[\u202a-\u202e]")


def sheets_of(out: Path) -> dict[str, str]:
    paths = [*sorted((out / "sheets").glob("*.html")), out / "visits.html", out / "huddle.html"]
    return {p.name: p.read_text(encoding="utf-8") for p in paths if p.exists()}


# --- 9, 10: sheets ---------------------------------------------------------------------------


def test_bidi_controls_do_not_reach_the_sheets(tmp_path: Path) -> None:
    day = clinic_day()
    for resource in day.resources:
        if resource.get("id") == "pat-1":
            resource["name"] = [{"family": "Able\u202e1202-21-10\u202c", "given": ["Ana"]}]
    day.add(observation("2823-3", 20, 4.1, "\u202eL/lomm", pid="pat-1"))

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert run.exit_code == 0, run.explain()
    sheets = sheets_of(tmp_path / "out")
    assert "visit-appt-1.html" in sheets
    # the chart's embeddings and overrides (LRE RLE PDF LRO RLO) are gone; isolating a value
    # (<bdi>, or FSI…PDI) is how a sheet may keep a right-to-left name readable
    assert {name: OVERRIDES.findall(html) for name, html in sheets.items()
            if OVERRIDES.search(html)} == {}


def test_a_10_mb_name_does_not_make_10_mb_sheets(tmp_path: Path,
                                                 assumed: AssumedInterface) -> None:
    day = clinic_day()
    for resource in day.resources:
        if resource.get("id") == "pat-1":
            resource["name"] = [{"family": "A" * 10_000_000, "given": ["Ana"]}]

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert run.exit_code == 0, run.explain()
    sizes = {name: len(html.encode()) for name, html in sheets_of(tmp_path / "out").items()}
    assert "visit-appt-1.html" in sizes
    assert {n: s for n, s in sizes.items() if s > assumed.sheet_max_bytes} == {}
    assert len(run.printed) < 100_000


# --- 11: PDF ---------------------------------------------------------------------------------


def test_pdf_blocks_every_fetch_and_is_still_written(tmp_path: Path,
                                                     other_host: Recorder) -> None:
    pytest.importorskip("weasyprint")
    from previsit.pdf import write_pdf

    # previsit's sheets reference nothing; this page stands for one that somehow does
    html = (f'<html><head><link rel="stylesheet" href="{other_host.url}/leak.css"></head>'
            f'<body><p>Sheet</p><img src="{other_host.url}/pixel.png?patient=pat-1">'
            f'<img src="file:///etc/passwd"></body></html>')
    target = tmp_path / "sheet.pdf"

    write_pdf(html, target)

    assert target.read_bytes()[:5] == b"%PDF-"
    assert other_host.requests == []


# --- 12: secrets in options -----------------------------------------------------------------


def test_password_in_the_fhir_url_is_never_printed(hostile_server: HostileFhirServer,
                                                   tmp_path: Path) -> None:
    hostile_server.chart = Chart(*clinic_day().resources)
    url = hostile_server.base_url.replace("http://", "http://nightly:pw-7d3f9a@")

    run = run_cli(run_args(fhir_url=url), out=tmp_path / "out")

    # planned (loopback may carry credentials), or refused because a URL must not carry them
    assert run.exit_code in (0, 4), run.explain()
    assert "pw-7d3f9a" not in run.printed
    for path in (tmp_path / "out").glob("*.json"):
        assert "pw-7d3f9a" not in path.read_text(encoding="utf-8"), path.name


# --- 13: odd option values ------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "9999-12-31",
    "",
    "2026-13-01",
    "tomorrow",
])
def test_a_date_that_cannot_be_planned_is_a_usage_error(value: str, tmp_path: Path) -> None:
    day = clinic_day()

    run = run_cli(["run", "--date", value, "--source", day.write(tmp_path / "day")],
                  out=tmp_path / "out")

    assert not run.crashed, run.explain()
    assert run.exit_code == 2, run.explain()
    assert "--date" in run.error
    assert not (tmp_path / "out" / "plan.json").exists()


def test_an_impossible_lookback_is_refused_with_the_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    tiny_rules(rules)
    rule = rules / "fit.yaml"
    rule.write_text(rule.read_text().replace("lookback: 1y", "lookback: 99999999999999999999y"))
    day = clinic_day()
    day.add(observation("29771-3", 100, pid="pat-1"))  # a FIT: the look-back is computed

    validate = run_cli(["rules", "validate", rules])
    run = run_cli(run_args(source=day.write(tmp_path / "day"), extra=["--rules", str(rules)]),
                  out=tmp_path / "out")

    for result in (run, validate):
        assert not result.crashed, result.explain()
        assert result.exit_code == 4, result.explain()
        assert "fit.yaml" in result.error


# --- 14: previsit sheet on a broken plan.json ------------------------------------------------


@pytest.mark.parametrize("content", [
    pytest.param("[]", id="a list"),
    pytest.param(deep_json(100_000), id="100k deep"),
    pytest.param('{"resourceType": "previsit-plan"}', id="no visits"),
    pytest.param("{", id="truncated"),
])
def test_sheet_on_a_broken_plan_file_is_a_clean_error(content: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(content)

    run = run_cli(["sheet", plan])

    assert not run.crashed, run.explain()
    assert run.exit_code == 4, run.explain()
    assert "plan.json" in run.error


# --- 15: a birth date in the future ---------------------------------------------------------


def test_a_future_birth_date_gives_no_negative_age(tmp_path: Path) -> None:
    day = clinic_day()
    day.resources[0] = patient(pid="pat-1", sex="female", name="Ana Able", birth="2030-06-01")

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert not run.crashed, run.explain()
    visit = run.visits["appt-1"]
    assert visit["patient_age"] is None or visit["patient_age"] >= 0, visit["patient_age"]
    said = json.dumps([visit["issues"], visit["failed"]]).lower()
    assert "birth" in said, "the impossible birth date must be reported, not silently used"


# --- 16: keys, BOM, duplicates, patient ids on the console ----------------------------------


def test_keys_generate_overwrite_does_not_follow_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    link = tmp_path / "previsit.pem"
    link.symlink_to(victim)

    run = run_cli(["keys", "generate", "--private-key", link, "--algorithm", "ES384",
                   "--overwrite"])

    assert not run.crashed, run.explain()
    assert victim.read_text() == "precious\n"


def test_a_bundle_file_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    day = clinic_day()
    folder = day.write(tmp_path / "day")
    path = folder / "day.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())

    run = run_cli(run_args(source=folder), out=tmp_path / "out")

    assert run.exit_code == 0, run.explain()
    assert run.planned == {"appt-1": "pat-1", "appt-2": "pat-2", "appt-3": "pat-3"}
    assert run.report["source_problems"] == []


def test_100k_duplicate_ids_do_not_make_a_100k_line_report(tmp_path: Path,
                                                          assumed: AssumedInterface) -> None:
    day = clinic_day()
    folder = day.write(tmp_path / "day")
    copy = observation("4548-4", 10, 6.0, "%", pid="pat-1")
    (folder / "zz-duplicates.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": copy}] * 100_000}))

    run = run_cli(run_args(source=folder), out=tmp_path / "out")

    assert run.exit_code == 0, run.explain()
    assert run.planned == {"appt-1": "pat-1", "appt-2": "pat-2", "appt-3": "pat-3"}
    assert (tmp_path / "out" / "run-report.json").stat().st_size < assumed.report_max_bytes
    assert (tmp_path / "out" / "plan.json").stat().st_size < assumed.plan_max_bytes
    assert "zz-duplicates.json" in json.dumps(run.report["source_problems"])


def test_failed_lines_name_the_appointment_not_the_patient(hostile_server: HostileFhirServer,
                                                           tmp_path: Path) -> None:
    day = clinic_day()
    day.add(*chart("pat-zz-4471", age=60, sex="male", name="Hal Hidden")[1:])  # no Patient
    day.book("appt-4", "pat-zz-4471", "11:00")
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(run_args(fhir_url=hostile_server.base_url), out=tmp_path / "out")

    assert run.exit_code == 3, run.explain()
    assert "appt-4" in run.stdout  # the failure is shown, by its appointment
    assert "pat-zz-4471" not in run.printed
    assert DAY in run.stdout


def test_failed_lines_name_the_patient_with_verbose(hostile_server: HostileFhirServer,
                                                     tmp_path: Path) -> None:
    day = clinic_day()
    day.add(*chart("pat-zz-4471", age=60, sex="male", name="Hal Hidden")[1:])  # no Patient
    day.book("appt-4", "pat-zz-4471", "11:00")
    hostile_server.chart = Chart(*day.resources)

    run = run_cli(run_args(fhir_url=hostile_server.base_url, extra=["--verbose"]),
                  out=tmp_path / "out")

    assert run.exit_code == 3, run.explain()
    failed = [line for line in run.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("  FAILED appointment 4 of 4 (appt-4, 11:00)")
    assert "pat-zz-4471" in failed[0]
    assert "pat-zz-4471" in run.failures["appt-4"]  # the report keeps it
