"""Merging shards: four shards of the sample day merge into the committed snapshot of a
single run, byte for byte; folders that are not one day's complete shards are refused,
each with the reason; counts, problems and exit codes merge as a single run reports them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from golden_outputs import GOLDEN, manifest, normalised
from previsit.cli.app import app
from typer.testing import CliRunner

from previsit.errors import MergeError
from previsit.merge import merge_shards, write_merged
from previsit.shards import MARKER

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_bundles"
RUN = ["run", "--source", str(SAMPLE), "--date", "2026-12-01", "--timezone",
       "America/Chicago", "--quiet"]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"PREVISIT_SOURCE_KIND": "bundles"})


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The sample day planned as four shards, once for the module (copy before changing)."""
    base = tmp_path_factory.mktemp("shards")
    folders = []
    for k in range(1, 5):
        out = base / f"out-{k}"
        assert _cli(*RUN, "--out", str(out), "--shard", f"{k}/4").exit_code == 0
        folders.append(out)
    return folders


@pytest.fixture
def copies(shards: list[Path], tmp_path: Path) -> list[Path]:
    """The four shard folders, copied so a test may spoil them."""
    out = []
    for folder in shards:
        shutil.copytree(folder, tmp_path / folder.name)
        out.append(tmp_path / folder.name)
    return out


def _edit(path: Path, change: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def test_four_merged_shards_are_the_single_runs_snapshot_byte_for_byte(
        shards: list[Path], tmp_path: Path) -> None:
    day = tmp_path / "day"
    result = _cli("merge", *map(str, reversed(shards)), "--out", str(day))  # any order
    assert result.exit_code == 0, result.output
    assert "merged 4 shards of 2026-12-01: 33 appointments (31 patients), 33 planned" in \
        result.output
    # the same comparison test_golden_outputs makes of a single run: every file, the
    # report without its timings
    assert manifest(normalised(day)) == (GOLDEN / "MANIFEST").read_text(encoding="utf-8")
    assert not (day / MARKER).exists()


def test_each_shard_holds_part_of_the_day(shards: list[Path]) -> None:
    plans = [json.loads((f / "plan.json").read_text()) for f in shards]
    sizes = [len(p["visits"]) for p in plans]
    assert sum(sizes) == 33
    assert all(0 < n < 33 for n in sizes)
    # the three visits further out, whose pre-visit labs the run orders, are split too
    assert sum(len(p["labs_ahead"]) for p in plans) == 3
    transactions = [len(list((f / "transactions").glob("*.json"))) for f in shards]
    assert sum(transactions) == len(list((GOLDEN / "transactions").glob("*.json")))


def test_merging_twice_into_a_used_folder_gives_the_same_bytes(shards: list[Path],
                                                               tmp_path: Path) -> None:
    day = tmp_path / "day"
    (day / "transactions").mkdir(parents=True)
    (day / "transactions" / "appt-from-yesterday.json").write_text("{}")
    (day / MARKER).write_text('{"shard": 1, "of": 2}')
    assert _cli("merge", *map(str, shards), "--out", str(day), "--quiet").exit_code == 0
    first = normalised(day)
    assert "transactions/appt-from-yesterday.json" not in first
    assert not (day / MARKER).exists()
    assert _cli("merge", *map(str, shards), "--out", str(day), "--quiet").exit_code == 0
    assert normalised(day) == first


def test_one_shard_of_one_is_the_whole_day(tmp_path: Path) -> None:
    assert _cli(*RUN, "--out", str(tmp_path / "only"), "--shard", "1/1").exit_code == 0
    assert _cli("merge", str(tmp_path / "only"), "--out", str(tmp_path / "day"),
                "--quiet").exit_code == 0
    assert manifest(normalised(tmp_path / "day")) == \
        (GOLDEN / "MANIFEST").read_text(encoding="utf-8")


# --- what merge refuses ---------------------------------------------------------------------


def _refused(folders: list[Path], out: Path, words: str) -> None:
    with pytest.raises(MergeError, match=words):
        merge_shards(folders, out)
    result = _cli("merge", *map(str, folders), "--out", str(out))
    assert result.exit_code == 4
    assert "previsit: " in result.output
    assert not (out / "plan.json").exists()


def test_a_missing_shard_is_named(copies: list[Path], tmp_path: Path) -> None:
    _refused([copies[0], copies[1], copies[3]], tmp_path / "day",
             r"shard 3/4 missing: give all 4 output folders")
    _refused([copies[0]], tmp_path / "day", r"shards 2/4, 3/4, 4/4 missing")


def test_a_shard_given_twice_is_named(copies: list[Path], tmp_path: Path) -> None:
    twin = tmp_path / "again"
    shutil.copytree(copies[1], twin)
    _refused([*copies, twin], tmp_path / "day", r"shard 2/4 appears twice")


def test_a_folder_claiming_another_split_is_refused(copies: list[Path], tmp_path: Path) -> None:
    (copies[3] / MARKER).write_text('{"shard": 4, "of": 5}')
    _refused(copies, tmp_path / "day", r"belongs to another shard than 4/5")
    # a shard of five that happened to plan nobody still belongs to another split
    _edit(copies[3] / "plan.json", lambda d: d.update(visits=[], labs_ahead=[]))
    shutil.rmtree(copies[3] / "transactions")
    _refused(copies, tmp_path / "day", "differ in the number of shards")


def test_shards_of_different_dates_or_rules_are_refused(copies: list[Path],
                                                        tmp_path: Path) -> None:
    _edit(copies[2] / "plan.json", lambda d: d.update(date="2026-12-02"))
    _refused(copies, tmp_path / "day", "differ in the planned date")
    _edit(copies[2] / "plan.json", lambda d: d.update(date="2026-12-01"))
    _edit(copies[1] / "plan.json", lambda d: d["ruleset"].update(rules=["only-one"]))
    _refused(copies, tmp_path / "day", r"differ in the rule library")


def test_a_dry_run_shard_is_not_merged_with_write_back_shards(copies: list[Path],
                                                              tmp_path: Path) -> None:
    _edit(copies[0] / "run-report.json", lambda d: d.update(write_back=False))
    _refused(copies, tmp_path / "day", r"differ in write-back")


def test_a_shard_that_wrote_nothing_is_named(copies: list[Path], tmp_path: Path) -> None:
    (copies[1] / "plan.json").unlink()
    _refused(copies, tmp_path / "day", r"out-2: no plan\.json — did this shard finish\?")


def test_a_folder_of_an_unsharded_run_is_refused(copies: list[Path], tmp_path: Path) -> None:
    (copies[0] / MARKER).unlink()
    _refused(copies, tmp_path / "day", r"out-1: no shard\.json")


def test_a_folder_whose_marker_lies_is_refused(copies: list[Path], tmp_path: Path) -> None:
    (copies[0] / MARKER).write_text('{"shard": 2, "of": 4}')
    (copies[1] / MARKER).write_text('{"shard": 1, "of": 4}')
    _refused(copies, tmp_path / "day", r"belongs to another shard than 2/4")


def test_a_stray_transaction_is_refused(copies: list[Path], tmp_path: Path) -> None:
    (copies[0] / "transactions" / "appt-not-here.json").write_text("{}")
    _refused(copies, tmp_path / "day", r"appt-not-here\.json is not the transaction of a visit")


def test_merging_into_a_shards_own_folder_is_refused(copies: list[Path]) -> None:
    before = (copies[2] / "plan.json").read_bytes()
    with pytest.raises(MergeError, match=r"is one of the shards' folders"):
        merge_shards(copies, copies[2])
    result = _cli("merge", *map(str, copies), "--out", str(copies[2]))
    assert result.exit_code == 4
    assert (copies[2] / "plan.json").read_bytes() == before


def test_a_broken_run_report_is_named(copies: list[Path], tmp_path: Path) -> None:
    _edit(copies[0] / "run-report.json", lambda d: d.pop("proposals"))
    _refused(copies, tmp_path / "day", r"run-report\.json: not a previsit run report")


# --- how counts merge -------------------------------------------------------------------------


def test_server_counts_are_summed_problems_kept_once_in_shard_order_timings_the_slowest(
        copies: list[Path], tmp_path: Path) -> None:
    appointment = {"where": "GET Appointment/a9", "message": "no Patient participant"}

    def shard_report(index: int) -> Callable[[Any], None]:
        def change(d: Any) -> None:
            d["proposals"].update(created=10 * index, already_present=index)
            d["sheets_stored"] = {"created": index, "updated": 1}
            d["http_requests"] = 100 + index
            d["timings"] = {"total_seconds": float(index), "records_seconds": 5.0 - index}
            # every shard reads the whole appointment list: each reports its problems
            d["source_problems"] = [appointment, {"where": f"file {index}", "message": "x"}]
        return change

    for index, folder in enumerate(copies, start=1):
        _edit(folder / "run-report.json", shard_report(index))
    merged = merge_shards(copies)
    report = merged.result.report.to_json()
    assert report["proposals"]["created"] == 100
    assert report["proposals"]["already_present"] == 10
    assert report["sheets_stored"] == {"created": 10, "updated": 4}
    assert report["http_requests"] == 410
    assert report["timings"] == {"records_seconds": 4.0, "total_seconds": 4.0}
    # then the bookings a run did not plan, from the merged plans, as a run lists them
    deceased = {"where": "Appointment/appt-1201-1050-wojcik",
                "message": "the patient is recorded as deceased on 2026-10-19: the booking was "
                           "not planned and no order was written; cancel it"}
    assert report["source_problems"] == [appointment, *({"where": f"file {i}", "message": "x"}
                                                        for i in range(1, 5)), deceased]


def test_a_failed_visit_makes_the_merged_day_partial_as_a_single_run(
        copies: list[Path], tmp_path: Path) -> None:
    def fail_all(d: Any) -> None:
        for visit in d["visits"]:
            visit["failed"] = "record could not be read: HTTP 503"
    # one shard lost all of its visits; the other three planned theirs: a single run of
    # the day would report a partial day (3), not "nothing done" (4)
    _edit(copies[1] / "plan.json", fail_all)
    merged = merge_shards(copies)
    failed = [p.visit.appointment_id for p in merged.day.plans if p.failed]
    assert merged.result.exit_code == 3
    assert [f.appointment for f in merged.result.report.failures] == failed
    assert len(failed) == len(json.loads((copies[1] / "plan.json").read_text())["visits"])
    for folder in copies:
        _edit(folder / "plan.json", fail_all)
    assert merge_shards(copies).result.exit_code == 4


def test_write_merged_writes_what_merge_shards_built(shards: list[Path], tmp_path: Path) -> None:
    merged = merge_shards(shards)
    paths = write_merged(merged, tmp_path)
    assert json.loads(paths["plan"].read_text())["date"] == "2026-12-01"
    assert [p.name for p in sorted(paths["transactions"].glob("*.json"))] == \
        [t.name for t in merged.transactions]


def test_a_failed_visit_further_out_makes_the_day_partial_as_in_a_single_run(
        copies: list[Path]) -> None:
    holder = next(f for f in copies
                  if json.loads((f / "plan.json").read_text())["labs_ahead"])

    def fail_first_ahead(d: Any) -> None:
        d["labs_ahead"][0]["failed"] = "record could not be read: HTTP 503"

    _edit(holder / "plan.json", fail_first_ahead)
    failed = json.loads((holder / "plan.json").read_text())["labs_ahead"][0]
    merged = merge_shards(copies)
    assert merged.result.report.failures == ()  # the clinic day itself is whole
    assert merged.result.exit_code == 3
    report = merged.result.report_json()
    assert report["labs_ahead"]["failures"] == [
        {"appointment": failed["visit"]["appointment_id"],
         "reason": "record could not be read: HTTP 503"}]
    assert report["labs_ahead"]["visits"] == 3
