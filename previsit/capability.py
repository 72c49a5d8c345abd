"""What a FHIR server says it can do, and what that means for a previsit run.

`parse_capabilities` reads a CapabilityStatement (GET [base]/metadata) into
`ServerCapabilities`, which the HTTP source consults (is `batch` listed?). `check_server`
is what `previsit config check` prints: one `CheckLine` per thing that will or won't work,
in plain words. `check_access` then judges the credentials themselves: the scope the token
endpoint granted against what the run needs (one failed line per missing permission), and
write permission, tried without writing anything (`verify_create`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from httpx._client import UseClientDefault  # the type of httpx.USE_CLIENT_DEFAULT

from previsit.errors import SourceError
from previsit.jsonio import object_or_none
from previsit.operation_outcome import describe_failure
from previsit.record import RECORD_SEARCHES
from previsit.scopes import Permission, missing_permissions, v1_writes
from previsit.sources.bodies import capped_send

Level = Literal["ok", "info", "warn", "fail"]

# What previsit reads for one patient, and writes.
RECORD_TYPES = tuple(rtype for rtype, _ in RECORD_SEARCHES)
WRITE_TYPES = ("ServiceRequest", "MedicationRequest")
SHEET_TYPE = "DocumentReference"
APPOINTMENT_REQUIRED = ("date", "status")
_PARTS = "each visit's proposals in transactions of source.max_transaction_entries at most"
APPOINTMENT_FILTERS = {"practitioner": "practitioner", "location": "location",
                       "service-type": "service type"}


@dataclass(frozen=True)
class ResourceSupport:
    type: str
    interactions: frozenset[str]
    search_params: frozenset[str] | None  # None: the statement does not list any
    conditional_create: bool
    search_include: frozenset[str]
    conditional_update: bool = False


@dataclass(frozen=True)
class ServerCapabilities:
    fhir_version: str | None
    software: str | None
    system_interactions: frozenset[str]
    resources: Mapping[str, ResourceSupport]

    @property
    def batch(self) -> bool:
        return "batch" in self.system_interactions

    @property
    def transaction(self) -> bool:
        return "transaction" in self.system_interactions

    @property
    def r4(self) -> bool:
        return bool(self.fhir_version and self.fhir_version.startswith("4.0."))

    def can(self, resource_type: str, interaction: str) -> bool:
        support = self.resources.get(resource_type)
        return support is not None and interaction in support.interactions

    def searchable(self, resource_type: str, param: str) -> bool | None:
        """True/False as the statement says; None when it lists no parameters at all."""
        support = self.resources.get(resource_type)
        if support is None:
            return False
        if support.search_params is None:
            return None
        return param in support.search_params

    def includes(self, resource_type: str, include: str) -> bool | None:
        support = self.resources.get(resource_type)
        if support is None or not support.search_include:
            return None
        return include in support.search_include or "*" in support.search_include


def parse_capabilities(statement: Mapping[str, Any]) -> ServerCapabilities:
    """Read the server-mode `rest` entry of a CapabilityStatement, as far as it goes: a
    part of the wrong shape inside it (an interaction or a searchParam that is not a list)
    reads as absent. ValueError when it is not a CapabilityStatement at all, or its `rest`
    is not a list (nothing in it can be read: callers then treat it as no statement)."""
    if not isinstance(statement, Mapping) or \
            statement.get("resourceType") != "CapabilityStatement":
        raise ValueError("not a CapabilityStatement")
    if not isinstance(statement.get("rest", []), list):
        raise ValueError("a CapabilityStatement whose rest is not a list")
    rest = next((r for r in _list(statement.get("rest")) if isinstance(r, Mapping)
                 and r.get("mode", "server") == "server"), {})
    resources: dict[str, ResourceSupport] = {}
    for entry in _list(rest.get("resource")):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            continue
        params = [p.get("name") for p in _list(entry.get("searchParam"))
                  if isinstance(p, Mapping)]
        resources[entry["type"]] = ResourceSupport(
            type=entry["type"],
            interactions=_codes(entry.get("interaction")),
            search_params=frozenset(p for p in params if isinstance(p, str)) or None,
            conditional_create=entry.get("conditionalCreate") is True,
            search_include=frozenset(i for i in _list(entry.get("searchInclude"))
                                     if isinstance(i, str)),
            conditional_update=entry.get("conditionalUpdate") is True)
    software = statement.get("software")
    return ServerCapabilities(
        fhir_version=statement.get("fhirVersion") if isinstance(statement.get("fhirVersion"),
                                                                 str) else None,
        software=software.get("name") if isinstance(software, Mapping) and
        isinstance(software.get("name"), str) else None,
        system_interactions=_codes(rest.get("interaction")),
        resources=resources)


def _list(value: Any) -> list[Any]:
    """A JSON array, or nothing: a server's `"rest": 5` lists no rest entries."""
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class CheckLine:
    level: Level
    topic: str
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.topic}: {self.message}"


def assess(caps: ServerCapabilities, smart: Mapping[str, Any] | None) -> list[CheckLine]:
    """Plain-words verdicts on a CapabilityStatement (and the SMART configuration, if any)."""
    lines: list[CheckLine] = []

    def add(level: Level, topic: str, message: str) -> None:
        lines.append(CheckLine(level, topic, message))

    version = caps.fhir_version or "not stated"
    if caps.r4:
        add("ok", "FHIR version", f"{version} (R4), the version previsit speaks")
    elif caps.fhir_version is None:
        add("warn", "FHIR version", "the server does not state its FHIR version; previsit "
            "assumes R4 (4.0.x)")
    else:
        add("fail", "FHIR version", f"the server speaks FHIR {version}; previsit needs R4 "
            "(4.0.x) — point source.base_url at the server's R4 endpoint")

    # Reading appointments.
    if not caps.can("Appointment", "search-type"):
        add("fail", "appointments", "the server does not offer Appointment search: "
            "no visits can be planned")
    else:
        missing = [p for p in APPOINTMENT_REQUIRED if caps.searchable("Appointment", p) is False]
        if missing:
            add("fail", "appointments", f"Appointment search lacks {_join(missing)}: the "
                "visit window cannot be read")
        else:
            add("ok", "appointments", "appointments can be searched by date and status")
        for param, words in APPOINTMENT_FILTERS.items():
            known = caps.searchable("Appointment", param)
            if known is False:
                add("warn", "appointments", f"filtering by {words} will not work (the server "
                    f"does not list Appointment?{param}); leave planning.{_cfg(param)} empty")
            elif known is None:
                add("info", "appointments", f"the server does not list its Appointment search "
                    f"parameters; filtering by {words} may be refused")

    # Reading a patient's record.
    if caps.can("Patient", "read"):
        add("ok", "records", "Patient read is supported")
    else:
        add("fail", "records", "Patient read is not listed: no patient record can be read")
    for rtype in RECORD_TYPES:
        if not caps.can(rtype, "search-type"):
            add("fail", "records", f"{rtype} search is not offered: records will lack "
                f"{rtype} data and rules that need it will say 'unknown'")
        elif caps.searchable(rtype, "patient") is False:
            add("fail", "records", f"{rtype}?patient= is not supported: records will lack "
                f"{rtype} data")
    if caps.includes("MedicationRequest", "MedicationRequest:medication") is False:
        add("warn", "records", "MedicationRequest?_include=MedicationRequest:medication is "
            "not listed: medications given by reference may be unnamed or the search refused")
    if caps.batch:
        add("ok", "batch", "batch is supported: each patient's record is read in one round "
            "trip (more only for long histories)")
    else:
        add("warn", "batch", f"batch is not listed: each record takes {1 + len(RECORD_TYPES)} "
            "or more requests (slower, still works)")

    # Writing proposals back.
    if caps.transaction:
        add("ok", "write-back", f"transaction is supported ({_PARTS})")
    else:
        add("fail", "write-back", "transaction is not listed: --write-back will not work "
            "(planning and sheets still do)")
    for rtype in WRITE_TYPES:
        if not caps.can(rtype, "create"):
            add("fail", "write-back", f"{rtype} create is not listed: proposals of this kind "
                "cannot be written")
        elif caps.resources[rtype].conditional_create:
            add("ok", "write-back", f"conditional create on {rtype}: re-runs cannot "
                "duplicate proposals")
        else:
            add("fail", "write-back", f"conditional create on {rtype} is not listed: a "
                "re-run could write duplicate proposals, so do not use --write-back here")
    # Sheets are stored with a conditional update (PUT DocumentReference?identifier=...), so a
    # re-run replaces the visit's sheet instead of adding a second one.
    if not caps.can(SHEET_TYPE, "update"):
        add("warn", "sheets", "DocumentReference update is not listed: --write-sheets will "
            "not work")
    elif not caps.resources[SHEET_TYPE].conditional_update:
        add("warn", "sheets", "conditional update on DocumentReference is not listed: "
            "--write-sheets could store a visit's sheet twice; do not use it here")
    else:
        add("ok", "sheets", "sheets can be stored as DocumentReferences (conditional update: "
            "one per visit, replaced on a re-run)")

    # Authorization.
    if smart is None:
        add("info", "SMART", "no .well-known/smart-configuration: fine for auth.method none "
            "or bearer; smart-backend then needs auth.token_url")
    else:
        token = smart.get("token_endpoint")
        methods = _strings(smart.get("token_endpoint_auth_methods_supported"))
        algs = _strings(smart.get("token_endpoint_auth_signing_alg_values_supported"))
        if not isinstance(token, str):
            add("warn", "SMART", "the SMART configuration has no token_endpoint; set "
                "auth.token_url")
        else:
            add("ok", "SMART", f"token endpoint {token}")
        if methods and "private_key_jwt" not in methods:
            add("warn", "SMART", "private_key_jwt is not among the token endpoint's auth "
                f"methods ({_join(methods)}): smart-backend may be refused")
        usable = [a for a in ("RS384", "ES384") if a in algs]
        if algs and not usable:
            add("warn", "SMART", f"the token endpoint accepts {_join(algs)}, neither RS384 "
                "nor ES384")
        elif usable:
            add("info", "SMART", f"signing algorithms accepted: {_join(usable)}")
    return lines


async def check_server(client: httpx.AsyncClient, base_url: str, *, probe: bool = True,
                       max_bytes: int = 64 * 2**20) -> list[CheckLine]:
    """Connect, read the CapabilityStatement and SMART configuration, and say what works.

    /metadata and .well-known/smart-configuration are read without credentials (the spec
    makes both public); with `probe`, one authenticated search (Appointment?_count=1)
    shows whether the configured credentials are accepted.
    """
    base = base_url.rstrip("/")
    lines: list[CheckLine] = []
    headers = {"Accept": "application/fhir+json"}
    try:
        response = await _get(client, f"{base}/metadata", headers, max_bytes, auth=None)
        if response.status_code in (401, 403):  # some servers protect /metadata too
            response = await _get(client, f"{base}/metadata", headers, max_bytes)
    except httpx.HTTPError as exc:
        return [CheckLine("fail", "server", f"cannot reach {base}: {_transport(exc)}")]
    except SourceError as exc:
        return [CheckLine("fail", "server", f"{base}/metadata: {exc}")]
    if response.status_code != 200:
        return [CheckLine("fail", "server", f"{describe_failure(response, base)}: this does "
                          "not look like a FHIR server's base URL")]
    try:
        caps = parse_capabilities(object_or_none(response.content) or {})
    except (ValueError, AttributeError):
        return [CheckLine("fail", "server", f"{base}/metadata is not a CapabilityStatement: "
                          "this does not look like a FHIR server's base URL")]
    lines.append(CheckLine("ok", "server", f"reached {base}"
                           + (f" ({caps.software})" if caps.software else "")))

    smart: Mapping[str, Any] | None = None
    try:
        answer = await _get(client, f"{base}/.well-known/smart-configuration",
                            {"Accept": "application/json"}, max_bytes, auth=None)
        if answer.status_code == 200:
            smart = object_or_none(answer.content)
    except (httpx.HTTPError, SourceError):
        smart = None
    lines.extend(assess(caps, smart))

    if probe:
        lines.append(await _probe(client, base))
    return lines


async def _get(client: httpx.AsyncClient, url: str, headers: Mapping[str, str], max_bytes: int,
               *, auth: httpx.Auth | UseClientDefault | None =
               httpx.USE_CLIENT_DEFAULT) -> httpx.Response:
    """GET with the body read under the same cap as a run's reads (a hostile URL cannot
    make `config check` read a gigabyte)."""
    return await capped_send(client, client.build_request("GET", url, headers=headers),
                             max_bytes, url, auth=auth)


async def _probe(client: httpx.AsyncClient, base: str) -> CheckLine:
    try:
        response = await client.get(f"{base}/Appointment", params={"_count": "1"},
                                    headers={"Accept": "application/fhir+json"})
    except SourceError as exc:  # AuthError from the token endpoint
        return CheckLine("fail", "credentials", str(exc))
    except httpx.HTTPError as exc:
        return CheckLine("fail", "credentials", f"cannot reach {base}: {_transport(exc)}")
    if response.status_code == 200:
        return CheckLine("ok", "credentials", "an authenticated search succeeded")
    if response.status_code in (401, 403):
        return CheckLine("fail", "credentials", f"{describe_failure(response, base)}: the "
                         "server refused the configured credentials")
    return CheckLine("warn", "credentials", describe_failure(response, base))


# --- the credentials' permissions ------------------------------------------------------------


def granted_scope(auth: httpx.Auth | None) -> str | None:
    """The scope the token endpoint granted (None for a static token or no credentials)."""
    from previsit.auth import ClientSecretBasic, SmartBackendAuth

    return auth.granted_scope if isinstance(auth, (SmartBackendAuth, ClientSecretBasic)) \
        else None


def assess_scopes(granted: str | None, needs: Sequence[Permission]) -> list[CheckLine]:
    """One failed line per needed permission the granted scope lacks, naming the scope."""
    if granted is None:
        return [CheckLine("info", "scopes", "the credentials do not say what they grant (no "
                          "token response to read); the write check below tries them")]
    lines = [CheckLine("fail", "scopes", f"{p.scope()} is not granted: {p.why} will be "
                       f"refused (granted: {granted or 'nothing'})")
             for p in missing_permissions(needs, granted)]
    old = v1_writes(granted)
    if old:
        lines.append(CheckLine("warn", "scopes", f"{', '.join(old)}: SMART v1 .write scopes "
                               "grant nothing on some servers (Medplum); set auth.scope_version "
                               "= \"v2\" (the default) or ask for v2 scopes"))
    if not lines:
        lines.append(CheckLine("ok", "scopes", f"the token grants every permission the run "
                               f"needs ({len(needs)} resource types)"))
    return lines


async def verify_create(client: httpx.AsyncClient, base: str, need: Permission,
                        identifier_system: str) -> CheckLine:
    """Whether the credentials may create `need.resource_type`, found out without writing:
    a conditional create whose condition matches a resource already there (one of ours if
    any: identifier in our system; else any, by _id) answers 200 and creates nothing, or
    403 when creating is not allowed."""
    resource_type = need.resource_type
    headers = {"Accept": "application/fhir+json"}
    found = None
    searches = [{"_count": "1"}]
    if identifier_system:
        searches.insert(0, {"identifier": f"{identifier_system}|", "_count": "1"})
    for params in searches:
        try:
            answer = await client.get(f"{base}/{resource_type}", params=params, headers=headers)
        except (httpx.HTTPError, SourceError) as exc:
            return CheckLine("warn", "write check", f"could not look for a {resource_type} to "
                             f"check writing with: {_transport(exc)}")
        if answer.status_code != 200:
            return CheckLine("warn", "write check", f"could not look for a {resource_type} to "
                             f"check writing with: {describe_failure(answer, base)}")
        found = _first_resource(answer, resource_type)
        if found is not None:
            break
    if found is None:
        return CheckLine("info", "write check", f"creating {resource_type} not tried: there is "
                         f"no {resource_type} on the server to match without writing one")
    condition = next((f"identifier={identifier_system}|{i['value']}" for i in
                      found.get("identifier") or () if isinstance(i, Mapping)
                      and i.get("system") == identifier_system and i.get("value")),
                     f"_id={found['id']}")
    body = {k: v for k, v in found.items() if k not in ("id", "meta", "text")}
    try:
        response = await client.post(f"{base}/{resource_type}", json=body, headers={
            **headers, "Content-Type": "application/fhir+json", "If-None-Exist": condition})
    except (httpx.HTTPError, SourceError) as exc:
        return CheckLine("warn", "write check", f"creating {resource_type} could not be tried: "
                         f"{_transport(exc)}")
    if response.status_code == 200:
        return CheckLine("ok", "write check", f"creating {resource_type} is allowed (a "
                         "conditional create matched an existing one: nothing was written)")
    if response.status_code == 201:
        made = object_or_none(response.content) or {}
        return CheckLine("warn", "write check", f"creating {resource_type} is allowed, but the "
                         f"check's conditional create was not matched and created "
                         f"{resource_type}/{made.get('id', '?')}: delete it")
    if response.status_code in (401, 403):
        return CheckLine("fail", "write check", f"creating {resource_type} is refused "
                         f"({describe_failure(response, base)}): {need.why} will fail; the "
                         f"token needs {need.scope()} (SMART v2)")
    return CheckLine("warn", "write check", f"creating {resource_type} could not be "
                     f"checked: {describe_failure(response, base)}")


async def check_access(client: httpx.AsyncClient, base_url: str, auth: httpx.Auth | None,
                       needs: Sequence[Permission], systems: Mapping[str, str]
                       ) -> list[CheckLine]:
    """The granted scope against the run's needs, then each write tried without writing
    (`systems`: the identifier system of our own resources of each written type)."""
    base = base_url.rstrip("/")
    lines = assess_scopes(granted_scope(auth), needs)
    for need in needs:
        if "c" in need.letters:
            lines.append(await verify_create(client, base, need,
                                             systems.get(need.resource_type, "")))
    return lines


def _first_resource(response: httpx.Response, resource_type: str) -> dict[str, Any] | None:
    bundle = object_or_none(response.content) or {}
    for entry in bundle.get("entry") or ():
        found = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(found, dict) and found.get("resourceType") == resource_type \
                and isinstance(found.get("id"), str):
            return found
    return None


def _codes(items: Any) -> frozenset[str]:
    return frozenset(str(i["code"]) for i in _list(items) if isinstance(i, Mapping)
                     and isinstance(i.get("code"), str))


def _strings(value: Any) -> list[str]:
    """A list field of the SMART configuration; anything that is not a list reads as absent."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _join(items: Any) -> str:
    return ", ".join(str(i) for i in items)


def _cfg(param: str) -> str:
    return {"practitioner": "practitioners", "location": "locations",
            "service-type": "service_types"}[param]


def _transport(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
