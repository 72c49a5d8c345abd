"""The streamed run's folder (run.run_to_folder, previsit.outputs) holds byte for byte what
the in-memory run writes (run.run_day, run.write_outputs, the sheets rendered from the
whole DayPlan): over two clinic days (a visit's own sheet is of its day, the day's
documents of the first), with failures, and for a day with no appointments at all.
The sample day itself is compared with its committed snapshot by test_golden_outputs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import appointment, bundle, patient, tiny_rules, write

from previsit import sheets
from previsit.config import Config
from previsit.files import write_text
from previsit.run import RunOptions, run_day, run_to_folder, write_outputs
from previsit.sources import VisitWindow
from previsit.sources.bundles import BundleSource

TWO_DAYS = VisitWindow(start=date(2026, 12, 1), end=date(2026, 12, 3),
                       timezone="America/Chicago")
MINUTES = Config().sheets.minutes_saved


def in_memory(folder: Path, rules: Path, window: VisitWindow, out: Path) -> None:
    """What the CLI wrote before the run streamed: the DayPlan, then every output of it."""
    options = RunOptions(window=window, processes=0)
    result = asyncio.run(run_day(BundleSource(folder), tiny_rules(rules), options))
    write_outputs(result, out)
    for plan in result.day.plans:
        write_text(out / "sheets" / sheets.visit_sheet_filename(plan),
                   sheets.render_visit_sheet(plan))
    write_text(out / "visits.html", sheets.render_visit_sheets(result.day))
    write_text(out / "huddle.html", sheets.render_huddle(result.day, minutes_saved=MINUTES))


def streamed(folder: Path, rules: Path, window: VisitWindow, out: Path) -> None:
    options = RunOptions(window=window, processes=0)
    asyncio.run(run_to_folder(BundleSource(folder), tiny_rules(rules), options, out,
                              minutes_saved=MINUTES))


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run-report.json"}


@pytest.mark.parametrize("appointments", [
    pytest.param([appointment("a1", "2026-12-01T09:00:00-06:00", pid="p1"),
                  appointment("a2", "2026-12-02T08:00:00-06:00", pid="p2"),
                  appointment("a2b", "2026-12-01T11:00:00-06:00", pid="p2"),
                  appointment("a3", "2026-12-02T10:00:00-06:00", pid="gone"),
                  appointment("a4", "2026-12-05T10:00:00-06:00", pid="p1")], id="two-days"),
    pytest.param([], id="no-appointments"),
])
def test_the_streamed_folder_is_what_the_day_plan_writes(tmp_path: Path,
                                                          appointments: list[object]) -> None:
    data = tmp_path / "data"
    write(data, "day.json", bundle(patient(pid="p1", age=50), patient(pid="p2", age=60),
                                   *appointments))
    in_memory(data, tmp_path / "rules", TWO_DAYS, tmp_path / "memory")
    streamed(data, tmp_path / "rules", TWO_DAYS, tmp_path / "streamed")
    written = files(tmp_path / "streamed")
    assert written == files(tmp_path / "memory")
    assert len([n for n in written if n.startswith("sheets/")]) == (4 if appointments else 0)


def test_a_sheet_that_cannot_be_rendered_is_left_out_and_the_rest_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    from previsit import outputs

    data = tmp_path / "data"
    write(data, "day.json", bundle(
        patient(pid="p1", age=50), patient(pid="p2", age=60),
        appointment("a1", "2026-12-01T09:00:00-06:00", pid="p1"),
        appointment("a2", "2026-12-01T10:00:00-06:00", pid="p2")))
    out = tmp_path / "out"
    write_text(out / "huddle.html", "last night's huddle")
    real = outputs.render_visit_sheet

    def broken_for_a2(plan: Any, **options: Any) -> str:
        if plan.visit.appointment_id == "a2":
            raise ValueError("a template bug")
        return real(plan, **options)

    def broken(*args: Any, **options: Any) -> Iterator[str]:
        yield "<!DOCTYPE html>"
        raise ValueError("a template bug")

    monkeypatch.setattr(outputs, "render_visit_sheet", broken_for_a2)
    monkeypatch.setattr(outputs, "render_huddle_parts", broken)
    streamed(data, tmp_path / "rules", TWO_DAYS, out)
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["visit-a1.html"]
    assert (out / "huddle.html").read_text() == "last night's huddle"
    assert "visit-a2" in (out / "visits.html").read_text()
    assert len(json.loads((out / "plan.json").read_text())["visits"]) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "previsit.sheets"] == [
        "a sheet could not be rendered (ValueError): visit-a2.html left out",
        "a sheet could not be rendered (ValueError): huddle.html left out"]
    assert not list(out.glob(".*"))  # no spool, no half-written file


def test_a_spool_reads_back_each_part_whatever_the_order_of_appends_and_reads(
        tmp_path: Path) -> None:
    from previsit.outputs import _Appender

    spool = _Appender(tmp_path / "spool")
    parts = [spool.append(b"first "), spool.append(b"second")]
    assert spool.read(parts[0]) == b"first "  # buffered appends are written before a read
    parts.append(spool.append(b" third"))  # an append after a read goes at the end
    assert [spool.read(p) for p in reversed(parts)] == [b" third", b"second", b"first "]
    spool.close()
    assert (tmp_path / "spool").read_bytes() == b"first second third"
