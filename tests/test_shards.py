"""Shards: which patient a shard plans, how a shard is chosen, and a sharded run.

The expected shards were computed outside previsit: `printf %s ID | sha256sum`, the hex
digest read as an integer, mod N, plus 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from builders import shipped_rules
from previsit.cli.app import app
from typer.testing import CliRunner

from previsit.errors import ConfigError
from previsit.run import RunOptions, run_day
from previsit.shards import (
    MARKER,
    Shard,
    parse_shard,
    read_marker,
    shard_from_env,
    shard_of,
    write_marker,
)
from previsit.sources import VisitWindow
from previsit.sources.bundles import BundleSource

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_bundles"
WINDOW = VisitWindow(date(2026, 12, 1), date(2026, 12, 2), timezone="America/Chicago")


@pytest.mark.parametrize(("patient_id", "count", "expected"), [
    ("pat-maria-lopez", 4, 3),  # sha256 1f25104a...2e62
    ("pat-maria-lopez", 2, 1),
    ("pat-maria-lopez", 7, 3),
    ("pat-jose-nunez", 4, 4),  # sha256 9e2d0b4f...fb2b
    ("pat-jose-nunez", 7, 1),
    ("p1", 4, 3),  # sha256 f64551fc...f68a
    ("p1", 7, 5),
    ("Ünïcode-id", 4, 4),  # the UTF-8 bytes are hashed: sha256 2e082e01...25af
    ("123", 7, 6),  # sha256 a665a459...7ae3
    ("123", 1, 1),
])
def test_a_patient_lands_in_sha256_of_its_id_mod_n_plus_one(patient_id: str, count: int,
                                                               expected: int) -> None:
    assert shard_of(patient_id, count) == expected
    assert Shard(expected, count).holds(patient_id)
    assert not any(Shard(k, count).holds(patient_id) for k in range(1, count + 1)
                   if k != expected)


def test_the_shard_is_the_same_in_another_process_with_another_hash_seed() -> None:
    # Python's hash() of a str changes with PYTHONHASHSEED; the shard must not.
    code = "from previsit.shards import shard_of; print(shard_of('pat-maria-lopez', 4))"
    answers = set()
    for seed in ("1", "2", "random"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        answers.add(proc.stdout.strip())
    assert answers == {"3"}


def test_ten_thousand_patients_spread_evenly_over_four_shards() -> None:
    spread = Counter(shard_of(f"patient-{i}", 4) for i in range(10_000))
    assert set(spread) == {1, 2, 3, 4}
    assert all(2_350 <= n <= 2_650 for n in spread.values()), spread


def test_zero_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        shard_of("p1", 0)


# --- choosing the shard -------------------------------------------------------------------


def test_k_of_n_is_parsed_from_the_option() -> None:
    assert parse_shard("2/4") == Shard(2, 4)
    assert parse_shard(" 1/1 ") == Shard(1, 1)
    assert str(Shard(3, 8)) == "3/8"


@pytest.mark.parametrize(("text", "words"), [
    ("0/4", "K must be 1 to 4"),
    ("5/4", "K must be 1 to 4"),
    ("2/0", "1 to 10000 shards, not 0"),
    ("2", "write K/N"),
    ("a/b", "write K/N"),
    ("-1/4", "write K/N"),
    ("", "write K/N"),
])
def test_a_bad_k_of_n_says_what_to_write(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_shard(text)


def test_an_indexed_job_pod_takes_its_shard_from_the_job_variables() -> None:
    # JOB_COMPLETION_INDEX is 0-based; shards are 1-based.
    assert shard_from_env({"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "4"}) == Shard(1, 4)
    assert shard_from_env({"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "4"}) == Shard(4, 4)
    assert shard_from_env({}) is None
    assert shard_from_env({"JOB_COMPLETIONS": "4"}) is None  # not an indexed pod


def test_a_job_index_without_completions_or_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="set JOB_COMPLETIONS in the Job's pod template"):
        shard_from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ConfigError, match="K must be 1 to 4"):
        shard_from_env({"JOB_COMPLETION_INDEX": "4", "JOB_COMPLETIONS": "4"})
    with pytest.raises(ConfigError, match="whole numbers"):
        shard_from_env({"JOB_COMPLETION_INDEX": "x", "JOB_COMPLETIONS": "4"})


def test_the_marker_says_which_shard_wrote_a_folder(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    write_marker(tmp_path, Shard(2, 4))
    assert json.loads((tmp_path / MARKER).read_text()) == {
        "hash": "sha256(patient id) mod N + 1", "of": 4, "shard": 2}
    assert read_marker(tmp_path) == Shard(2, 4)
    write_marker(tmp_path, None)  # an unsharded run in the same folder
    assert not (tmp_path / MARKER).exists()


def test_a_broken_marker_is_named(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text('{"shard": 5, "of": 4}')
    with pytest.raises(ConfigError, match=r"shard\.json: not a shard marker"):
        read_marker(tmp_path)
    (tmp_path / MARKER).write_text("not json")
    with pytest.raises(ConfigError, match="not a shard marker"):
        read_marker(tmp_path)


# --- a sharded run ------------------------------------------------------------------------


def test_a_shard_plans_only_its_patients_and_all_of_their_visits() -> None:
    async def day(shard: Shard | None) -> dict[str, list[str]]:
        source = BundleSource(SAMPLE)
        options = RunOptions(window=WINDOW, write_back=True,
                             patients=shard.holds if shard else None)
        result = await run_day(source, shipped_rules(), options)
        visits: dict[str, list[str]] = {}
        for plan in (*result.day.plans, *result.day.ahead):
            visits.setdefault(plan.visit.patient_id, []).append(plan.visit.appointment_id)
        return visits

    whole = asyncio.run(day(None))
    parts = [asyncio.run(day(Shard(k, 4))) for k in range(1, 5)]
    assert sum(len(p) for p in parts) == len(whole) == 31
    for part in parts:
        for patient_id, appointments in part.items():
            assert appointments == whole[patient_id]  # both of Maria Lopez's, together
    assert parts[2]["pat-maria-lopez"] == ["appt-1201-0800-lopez-lab", "appt-1201-0920-lopez"]
    assert "pat-jose-nunez" in parts[3]


def _run(out: Path, *extra: str, env: dict[str, str] | None = None) -> int:
    result = CliRunner().invoke(app, [
        "run", "--source", str(SAMPLE), "--date", "2026-12-01", "--timezone",
        "America/Chicago", "--out", str(out), *extra], env=env)
    return result.exit_code


def test_the_job_variables_choose_the_same_shard_as_the_option(tmp_path: Path) -> None:
    assert _run(tmp_path / "option", "--shard", "1/4", "--quiet") == 0
    assert _run(tmp_path / "job", "--quiet",
                env={"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "4"}) == 0
    assert (tmp_path / "option" / "plan.json").read_bytes() == \
        (tmp_path / "job" / "plan.json").read_bytes()
    assert read_marker(tmp_path / "job") == Shard(1, 4)


def test_the_option_wins_over_the_job_variables(tmp_path: Path) -> None:
    assert _run(tmp_path, "--shard", "3/4", "--quiet",
                env={"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "4"}) == 0
    assert read_marker(tmp_path) == Shard(3, 4)


def test_a_bad_shard_option_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--source", str(SAMPLE), "--date", "2026-12-01",
                                      "--out", str(tmp_path), "--shard", "5/4"])
    assert result.exit_code == 2
    assert "K must be 1 to 4" in result.output
    assert not (tmp_path / "plan.json").exists()


def test_a_half_configured_job_fails_before_reading_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--source", str(SAMPLE), "--date", "2026-12-01",
                                      "--out", str(tmp_path)],
                                env={"JOB_COMPLETION_INDEX": "2"})
    assert result.exit_code == 4
    assert "JOB_COMPLETIONS" in result.output
