"""`previsit serve` on the command line: a configuration that cannot work stops it at start-up
with one line, never at a clinician's launch."""

from __future__ import annotations

from pathlib import Path

from previsit.cli.app import app
from typer.testing import CliRunner


def test_serve_refuses_a_today_that_is_not_a_date() -> None:
    result = CliRunner().invoke(app, ["serve", "--today", "tomorrow"])
    assert result.exit_code == 2
    assert "--today 'tomorrow' is not a date (YYYY-MM-DD)" in result.output


def test_serve_stops_at_start_up_when_a_client_secret_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "previsit.toml"
    config.write_text(
        '[web]\nstate_db = "state.sqlite3"\nkeyring_file = "web.keys"\n\n'
        '[[web.issuers]]\niss = "https://ehr.example.org/fhir/R4"\nclient_id = "previsit"\n'
        'client_type = "confidential-symmetric"\nclient_secret_env = "NO_SUCH_SECRET_VAR"\n',
        encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--config", str(config)],
                                env={"NO_SUCH_SECRET_VAR": ""})
    assert result.exit_code == 4
    assert "web.issuers[https://ehr.example.org/fhir/R4]" in result.output
