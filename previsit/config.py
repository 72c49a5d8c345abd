"""Configuration: one TOML file, overridable by environment variables, validated once.

Every key can be overridden with PREVISIT_<SECTION>_<KEY> (upper case), e.g.
PREVISIT_SOURCE_BASE_URL or PREVISIT_RULES_DISABLED="lung-cancer-screening,aaa-screening".
Secrets are never values in this file: the file names the environment variable or file
that holds them (`token_env`, `token_file`, `private_key_file`, `client_secret_env`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from previsit.errors import ConfigError
from previsit.files import read_text
from previsit.identifiers import DEFAULT_SHEET_SYSTEM, DEFAULT_SYSTEM
from previsit.scopes import READ, Permission, ScopeVersion, run_permissions, scope_text
from previsit.web.settings import WebSettings

ENV_PREFIX = "PREVISIT_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Section):
    kind: Literal["bundles", "fhir", "bulk"] = "bundles"
    path: Path = Path("sample_bundles")  # bundles: a folder of Bundles / NDJSON
    base_url: str | None = None  # fhir: the server's base, e.g. https://ehr.example/fhir/R4
    timezone: str = "UTC"  # the clinic's time zone: "tomorrow" and the window are local days
    concurrency: int = Field(default=8, ge=1, le=64)
    write_concurrency: int = Field(default=4, ge=1, le=64)  # transactions sent at a time
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)  # per request, with backoff
    max_retry_seconds: float = Field(default=120.0, gt=0)  # total backoff budget per request
    # The whole run's budget for pausing on rate limits (all requests share one pause).
    max_wait_seconds: float = Field(default=900.0, ge=0)
    # Entries per transaction Bundle. Medplum refuses a transaction with a conditional
    # create of more than 8 entries ("requires strict isolation"); HAPI takes far more. A
    # smaller limit a server states in a refusal is learned and used for the rest of the run.
    max_transaction_entries: int = Field(default=8, ge=1, le=1000)
    page_size: int = Field(default=100, ge=1, le=1000)  # the appointment search's pages
    # Pages of a record's searches (Observation, Encounter, …): a patient with thousands of
    # results is read in a few pages, not dozens. 1000 is Medplum's maximum _count; HAPI
    # answers a larger _count with pages of its own maximum (max_page_size), not an error.
    record_page_size: int = Field(default=1000, ge=1, le=1000)
    use_batch: bool = True  # read each record with one batch Bundle when the server can
    # A folder keeping each patient's record between nights (patient data: 0600 files in
    # 0700 folders), so that the next night asks only what changed (_lastUpdated) and how
    # many resources each search holds (_summary=count) instead of reading it all again
    # (previsit/sources/cache.py). Off when unset.
    cache_dir: Path | None = None
    # A kept record is read in full again at least this often: the bound on what
    # revalidation cannot see (a change in place without a new meta.lastUpdated).
    cache_max_age_days: float = Field(default=7.0, gt=0)
    # The next night asks for changes from this long before the last read (the server's
    # clock or ours, whichever is earlier): clock skew, writes committed late.
    cache_overlap_seconds: float = Field(default=600.0, ge=0)
    # Bounds on what a server can make a run read (a hostile or broken server: a 1 GiB body,
    # a gzip bomb, a byte every few seconds, next links that never end). What exceeds them
    # fails that patient; the defaults are far above any real record.
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # one body, inflated
    max_search_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # one search, all pages
    request_deadline_seconds: float = Field(default=120.0, gt=0)  # one request, to its last byte
    deadline_seconds: float = Field(default=3600.0, gt=0)  # all reading in a run
    # An HTTP(S) proxy, used only when set here: HTTP_PROXY and friends in the environment
    # are ignored (a proxy sees every request, credentials included).
    proxy: str | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone (e.g. America/Chicago)") from None
        return value


class AuthConfig(_Section):
    method: Literal["none", "bearer", "smart-backend", "client-secret"] = "none"
    token_env: str | None = "PREVISIT_TOKEN"  # bearer: variable holding the token
    token_file: Path | None = None  # bearer: or a file holding it
    client_id: str | None = None
    private_key_file: Path | None = None  # smart-backend: PEM private key
    key_id: str | None = None  # smart-backend: the kid registered with the EHR
    algorithm: Literal["RS384", "ES384"] = "RS384"
    # None: exactly what the command needs (`requested_scope`), in SMART v2 syntax unless
    # scope_version is "v1".
    scope: str | None = None
    scope_version: ScopeVersion = "v2"
    token_url: str | None = None  # default: discovered from .well-known/smart-configuration
    client_secret_env: str | None = "PREVISIT_CLIENT_SECRET"  # client-secret basic
    client_secret_file: Path | None = None


class PlausibleRange(_Section):
    """The range of results a patient can have, for one LOINC code in one unit."""

    unit: str  # the UCUM code results must carry for the range to apply
    min: float | None = None
    max: float | None = None


class PlanningConfig(_Section):
    days: int = Field(default=1, ge=1, le=31)  # how many clinic days from the start date
    due_soon_days: int = Field(default=60, ge=0)
    renewal_horizon_days: int | None = Field(default=None, ge=0)  # default: the rule's (90)
    statuses: tuple[str, ...] = ("booked", "arrived", "pending")
    practitioners: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    service_types: tuple[str, ...] = ()
    # The nightly run also orders the pre-visit labs of visits up to this many days after
    # the run day (AMA: labs 1-2 weeks before the visit); 0 turns the labs-ahead horizon off.
    labs_ahead_days: int = Field(default=7, ge=0, le=60)
    # Appointment codes ("system|code" or a bare code) of lab-only appointments, besides the
    # shipped lab-only-appointment value set (HL7 service-type pathology, SNOMED phlebotomy).
    lab_only_codes: tuple[str, ...] = ()
    # Plausible result ranges by LOINC code, replacing previsit's own (previsit/plausibility.py);
    # a range with neither min nor max switches the check off for that code.
    implausible: dict[str, PlausibleRange] = Field(default_factory=dict)


class RulesConfig(_Section):
    folder: Path | None = None  # default: the library shipped with previsit
    disabled: tuple[str, ...] = ()
    valuesets: tuple[Path, ...] = ()  # folders of ValueSets overriding shipped ones by URL


class OutputConfig(_Section):
    folder: Path = Path("out")
    identifier_system: str = DEFAULT_SYSTEM  # system of the proposals' identifiers
    sheet_identifier_system: str = DEFAULT_SHEET_SYSTEM  # system of the stored sheets'
    write_sheets: bool = False  # also store each sheet as a DocumentReference


class SheetsConfig(_Section):
    # Minutes of clinician time one prepared task saves (AMA STEPS Forward estimates are
    # per clinic; these defaults are deliberately conservative and meant to be tuned).
    minutes_saved: dict[str, float] = Field(default_factory=lambda: {
        "lab": 3.0, "screening": 2.0, "immunization": 1.5, "renewal": 2.0})


class BulkConfig(_Section):
    """source.kind = "bulk": records from a FHIR Bulk Data export of the clinic's panel
    (previsit/sources/bulk.py); appointments and write-back still go through the search API
    of source.base_url."""

    group_id: str | None = None  # the panel: [base]/Group/<group_id>/$export
    state_folder: Path | None = None  # the kept export and its state; default <output>/bulk-state
    incremental: bool = True  # export only what changed (_since) since the last clean export
    full_every_days: int = Field(default=7, ge=1)  # and a full export at least this often
    max_export_seconds: float = Field(default=3600.0, gt=0)  # for the server to finish an export
    # one exported NDJSON file at most (decoded): an endless or inflating file stops here
    max_file_bytes: int = Field(default=16 * 2**30, gt=0)


class Config(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    planning: PlanningConfig = Field(default_factory=PlanningConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    sheets: SheetsConfig = Field(default_factory=SheetsConfig)
    bulk: BulkConfig = Field(default_factory=BulkConfig)
    web: WebSettings = Field(default_factory=WebSettings)  # `previsit serve`


_LIST_KEYS = {"statuses", "practitioners", "locations", "service_types", "disabled",
              "valuesets", "frame_ancestors", "read_types", "cds_algorithms", "lab_only_codes"}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, model in Config.model_fields.items():
        assert model.annotation is not None
        for key in model.annotation.model_fields:
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in env:
                value: Any = env[name]
                if key in _LIST_KEYS:
                    value = [v.strip() for v in value.split(",") if v.strip()]
                out.setdefault(section, {})[key] = value
    return out


def requested_scope(config: Config) -> str:
    """The scope a run asks for: auth.scope if set, else exactly what the run needs (the
    proposals' writes, and the sheets' when output.write_sheets is on)."""
    if config.auth.scope:
        return config.auth.scope
    needs = run_permissions(sheets=config.output.write_sheets)
    if config.source.kind == "bulk":  # the clinic's panel: read it and export it
        needs = (*needs, Permission("Group", READ, "exporting the clinic's panel"))
    return scope_text(needs, config.auth.scope_version)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> Config:
    """Read the TOML file (if any), apply PREVISIT_* variables, then explicit overrides.

    Relative paths in the file are relative to the file's folder, so a config next to its
    rules folder works from any working directory. Relative paths given as overrides (the
    command line: --out, --source) are relative to the working directory, as a person
    typing them expects.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        text = read_text(path, ConfigError, "the configuration")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        base = path.resolve().parent
    for section, values in _env_overrides(os.environ if env is None else env).items():
        data.setdefault(section, {}).update(values)
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split("__", 1)
        if isinstance(value, Path) and not value.is_absolute():
            value = Path.cwd() / value  # not re-based on the file's folder below
        data.setdefault(section, {})[key] = value
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        where = f"{path}: " if path else ""
        raise ConfigError("\n".join(f"{where}{line}" for line in lines)) from None
    return _resolve_paths(config, base) if path is not None else config


def _resolve_paths(config: Config, base: Path) -> Config:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    config.source.path = fix(config.source.path) or config.source.path
    config.source.cache_dir = fix(config.source.cache_dir)
    config.rules.folder = fix(config.rules.folder)
    config.rules.valuesets = tuple(fix(p) or p for p in config.rules.valuesets)
    config.output.folder = fix(config.output.folder) or config.output.folder
    config.bulk.state_folder = fix(config.bulk.state_folder)
    config.auth.token_file = fix(config.auth.token_file)
    config.auth.private_key_file = fix(config.auth.private_key_file)
    config.auth.client_secret_file = fix(config.auth.client_secret_file)
    config.web = _resolve_web_paths(config.web, fix)
    return config


def _resolve_web_paths(web: WebSettings, fix: Callable[[Path | None], Path | None]
                       ) -> WebSettings:
    """The [web] paths against the file's folder (WebSettings is frozen: copied)."""
    issuers = tuple(issuer.model_copy(update={
        "client_secret_file": fix(issuer.client_secret_file),
        "private_key_file": fix(issuer.private_key_file)}) for issuer in web.issuers)
    return web.model_copy(update={"state_db": fix(web.state_db) or web.state_db,
                                  "keyring_file": fix(web.keyring_file) or web.keyring_file,
                                  "issuers": issuers})
