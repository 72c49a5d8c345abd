"""Configuration: TOML file, PREVISIT_* environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from previsit.config import Config, load_config
from previsit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "previsit.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "previsit.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.source.kind == "bundles" and config.source.timezone == "UTC"
    assert config.output.identifier_system == "urn:previsit:proposal"


def test_the_documented_example_is_a_valid_configuration_of_every_key() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.source.kind == "fhir"
    assert config.source.base_url == "https://ehr.example.org/fhir/R4"
    assert config.source.timezone == "America/Chicago"
    # every section and key of the model appears in the example (commented out or not)
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, field in Config.model_fields.items():
        assert f"[{section}]" in text
        assert field.annotation is not None
        for key in field.annotation.model_fields:
            assert f"{key} =" in text, f"{section}.{key} is not documented in the example"


def test_environment_overrides_the_file_and_options_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\nkind = "fhir"\nbase_url = "https://a.example/fhir"\n'
                           'concurrency = 2\n[rules]\ndisabled = ["aaa-screening"]\n')
    env = {"PREVISIT_SOURCE_BASE_URL": "https://b.example/fhir",
           "PREVISIT_RULES_DISABLED": "lung-cancer-screening, hiv-screening",
           "PREVISIT_SOURCE_CONCURRENCY": "4", "UNRELATED": "x"}
    config = load_config(path, env=env)
    assert config.source.base_url == "https://b.example/fhir"
    assert config.source.concurrency == 4
    assert config.rules.disabled == ("lung-cancer-screening", "hiv-screening")
    config = load_config(path, env=env, source__base_url="https://c.example/fhir",
                         source__concurrency=None)  # None: option not given
    assert config.source.base_url == "https://c.example/fhir"
    assert config.source.concurrency == 4


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\npath = "data"\n[rules]\nfolder = "my-rules"\n'
                           'valuesets = ["vsac"]\n[output]\nfolder = "out"\n'
                           '[auth]\nprivate_key_file = "keys/k.pem"\n')
    config = load_config(path, env={})
    assert config.source.path == tmp_path / "data"
    assert config.rules.folder == tmp_path / "my-rules"
    assert config.rules.valuesets == (tmp_path / "vsac",)
    assert config.output.folder == tmp_path / "out"
    assert config.auth.private_key_file == tmp_path / "keys" / "k.pem"


@pytest.mark.parametrize(("text", "env", "expected"), [
    ('[source]\ntimezone = "Mars/Olympus"\n', {}, "source.timezone: "),
    ('[source]\nconcurrency = 0\n', {}, "source.concurrency: "),
    ('[source]\nbase_uri = "x"\n', {}, "source.base_uri: Extra inputs"),
    ('[sorce]\nkind = "fhir"\n', {}, "sorce: Extra inputs"),
    ('[source]\nkind = "hl7v2"\n', {}, "source.kind: "),
    ("", {"PREVISIT_SOURCE_CONCURRENCY": "many"}, "source.concurrency: "),
    ('[source\nkind = "fhir"\n', {}, "not valid TOML"),
])
def test_a_bad_configuration_names_the_file_and_the_key(tmp_path: Path, text: str,
                                                        env: dict[str, str],
                                                        expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_the_timezone_error_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not an IANA time zone"):
        load_config(write(tmp_path, '[source]\ntimezone = "CST"\n'), env={})


def test_paths_given_on_the_command_line_are_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `previsit run --config /etc/previsit/previsit.toml --out out` from /srv/job writes to
    # /srv/job/out, not /etc/previsit/out; the file's own paths stay relative to the file.
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    path = write(config_dir, '[output]\nfolder = "from-file"\n[rules]\nfolder = "rules"\n')
    job = tmp_path / "job"
    job.mkdir()
    monkeypatch.chdir(job)
    config = load_config(path, env={}, output__folder=Path("out"),
                         source__path=Path("data"))
    assert config.output.folder == job / "out"
    assert config.source.path == job / "data"
    assert config.rules.folder == config_dir / "rules"
    assert load_config(path, env={}).output.folder == config_dir / "from-file"
    absolute = tmp_path / "elsewhere"
    assert load_config(path, env={}, output__folder=absolute).output.folder == absolute


def test_transaction_size_and_the_runs_waiting_budget(tmp_path: Path) -> None:
    defaults = load_config(None, env={})
    assert defaults.source.max_transaction_entries == 8  # Medplum's strict-isolation limit
    assert defaults.source.max_wait_seconds == 900.0
    path = write(tmp_path, "[source]\nmax_transaction_entries = 50\nmax_wait_seconds = 0\n")
    config = load_config(path, env={"PREVISIT_SOURCE_MAX_WAIT_SECONDS": "120"})
    assert config.source.max_transaction_entries == 50
    assert config.source.max_wait_seconds == 120.0
    with pytest.raises(ConfigError, match=r"source\.max_transaction_entries"):
        load_config(write(tmp_path, "[source]\nmax_transaction_entries = 0\n"), env={})


def test_scopes_default_to_what_the_run_needs_and_sheets_have_their_own_system(
        tmp_path: Path) -> None:
    config = load_config(None, env={})
    assert config.auth.scope is None and config.auth.scope_version == "v2"
    assert config.output.sheet_identifier_system == "urn:previsit:sheet"
    assert config.output.sheet_identifier_system != config.output.identifier_system
    path = write(tmp_path, '[auth]\nscope_version = "v1"\n')
    assert load_config(path, env={}).auth.scope_version == "v1"
    with pytest.raises(ConfigError, match=r"auth\.scope_version"):
        load_config(write(tmp_path, '[auth]\nscope_version = "v3"\n'), env={})
