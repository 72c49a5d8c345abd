"""`--out` and `--source` given on the command line are relative to the working directory,
not to the configuration file's folder (where paths written in the file stay relative to).

`previsit run --config /etc/previsit/previsit.toml --out out` from a job's folder wrote into
/etc/previsit/out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from previsit.cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


def test_out_and_source_on_the_command_line_are_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "previsit.toml"
    config.write_text('[source]\ntimezone = "America/Chicago"\n[output]\nfolder = "from-file"\n',
                      encoding="utf-8")
    job = tmp_path / "job"
    shutil.copytree(ROOT / "sample_bundles", job / "day")
    monkeypatch.chdir(job)
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--source", "day",
                                      "--date", "2026-12-01", "--out", "out", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (job / "out" / "plan.json").is_file()
    assert not (etc / "out").exists() and not (etc / "from-file").exists()


def test_the_files_own_output_folder_stays_relative_to_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "previsit.toml"
    config.write_text(f'[source]\nkind = "bundles"\npath = "{ROOT / "sample_bundles"}"\n'
                      'timezone = "America/Chicago"\n[output]\nfolder = "from-file"\n',
                      encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--date", "2026-12-01",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert (etc / "from-file" / "plan.json").is_file()
