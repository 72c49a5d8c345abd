"""CDS Hooks 2.0 services: what is due, as cards, at booking (`appointment-book`) and at
chart open (`patient-view`), and the feedback clinicians give on them.

Spec: cds-hooks.hl7.org/2.0 (discovery, calling a service, prefetch, cards, feedback,
security). The cards are built from the same plan the sheet and the app show
(`planning.plan_patient` → `sheets.visit.visit_sheet`); a suggestion's resource is the
nightly write-back's own proposal (same identifier), so accepting it in the EHR and the
next nightly run can never make two.

Data, fastest first: the request's `prefetch` (templates below: the record's searches,
exactly those of the nightly run); for any key that is missing or null, one batch read
from the configured `fhirServer` with the request's `fhirAuthorization`, confined to the
context patient; with neither, no cards (and a logged reason), never an error — a CDS
client shows nothing rather than an error to a clinician.

Every call must carry the EHR's signed JWT (`cds_auth.py`); anything else is 401.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from previsit.appointments import visit_from_appointment
from previsit.auth import Secret
from previsit.errors import AppointmentError, PrevisitError, RecordError, SourceError
from previsit.jsonio import dumps, object_or_none
from previsit.plan import Kind, ProposalOutcome, Status
from previsit.record import RECORD_SEARCHES, PatientRecord, build_record
from previsit.sheets.formatting import KIND_LABELS, format_day
from previsit.sheets.visit import Item, visit_sheet
from previsit.sources.http import HttpSource
from previsit.suppressions import DECLINE_REASON_SYSTEM, DeclineReason, FeedbackView, declines
from previsit.web.cds_auth import CdsAuthenticator, CdsAuthError, CdsClient, FhirAuthorization
from previsit.web.confinement import ConfinementError, PatientConfinement
from previsit.web.fhir import FhirAccessError, FhirSession, confined_client
from previsit.web.planning import (
    ChosenVisit,
    PatientPlan,
    Planner,
    now_in,
    plan_patient,
    today_visit,
)
from previsit.web.settings import WebSettings
from previsit.web.store import Coding, Store, UnknownCardError
from previsit.web.urls import same_url

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 20 * 1024 * 1024  # a 1,000-resource prefetch is a few MB
TOPIC_SYSTEM = "https://previsit.dev/fhir/CodeSystem/finding-kind"
SUMMARY_LIMIT = 139  # CDS Hooks: "<140-character summary"
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# The overrides a clinician can choose on a card (the nightly run reads the first two).
OVERRIDE_REASONS = (DeclineReason.PATIENT_DECLINED, DeclineReason.DONE_ELSEWHERE,
                    DeclineReason.NOT_APPROPRIATE)


def _prefetch_key(resource_type: str) -> str:
    return resource_type[0].lower() + resource_type[1:]


def record_prefetch() -> dict[str, str]:
    """Prefetch templates for the record: the nightly run's own searches (one per type,
    every date: rules look back up to "ever" — hepatitis C once, AAA once)."""
    templates = {"patient": "Patient/{{context.patientId}}"}
    for resource_type, extra in RECORD_SEARCHES:
        query = "&".join(["patient={{context.patientId}}", *(f"{k}={v}" for k, v in extra)])
        templates[_prefetch_key(resource_type)] = f"{resource_type}?{query}"
    return templates


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]

    def discovery(self) -> dict[str, Any]:
        return {"id": self.id, "hook": self.hook, "title": self.title,
                "description": self.description, "prefetch": dict(self.prefetch),
                "usageRequirements": USAGE}


USAGE = ("Sign each call with a JWT from an issuer registered in previsit's [[web.cds_issuers]] "
         "(ES384 or RS384, aud = the service URL). Send the prefetch listed, or a "
         "fhirServer and fhirAuthorization with patient/*.rs-equivalent read scopes for "
         "Patient, Condition, MedicationRequest, Medication, Observation, Procedure, "
         "Immunization, ServiceRequest and Appointment.")

SERVICES: dict[str, Service] = {s.id: s for s in (
    Service("previsit-appointment-book", "appointment-book",
            "previsit: what is due before this visit",
            "While a visit is booked: the labs to draw before it (with a draw-by date that can "
            "still be met), the screenings and immunizations to schedule with it, and the "
            "prescriptions that run out before it — as draft orders to propose.",
            record_prefetch()),
    Service("previsit-patient-view", "patient-view",
            "previsit: open care gaps",
            "When a chart is opened: the patient's open gaps for the next booked visit (or "
            "today), as draft orders to propose.",
            {**record_prefetch(),
             "appointment": "Appointment?patient={{context.patientId}}"
                            "&status=booked,arrived,pending"}),
)}


class Refusal(PrevisitError):
    """A call answered with an OperationOutcome-like error instead of cards."""

    status = 400
    code = "invalid"

    def response(self) -> Response:
        return _json(_outcome(str(self), self.code), self.status)


class BadRequest(Refusal):
    """A CDS request that is not what the spec describes (answered 400)."""


class Unauthenticated(Refusal):
    status, code = 401, "login"


class UnknownService(Refusal):
    status, code = 404, "not-found"


def _outcome(message: str, code: str = "invalid") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}]}


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def markdown_escape(text: str) -> str:
    """Text from FHIR or rules as inert GitHub-flavoured markdown: every ASCII punctuation
    a renderer could read as syntax is backslash-escaped (CommonMark allows it before any
    ASCII punctuation), so `<script>`, links, emphasis and tables stay text; line breaks
    become spaces, so nothing starts a heading or a list."""
    flat = " ".join(text.split())
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~&\"'=:;$%@^/?,])", r"\\\1", flat)


@dataclass(frozen=True)
class HookRequest:
    service: Service
    hook_instance: str
    patient_id: str
    fhir_server: str | None
    authorization: FhirAuthorization | None
    prefetch: Mapping[str, Any]
    appointments: tuple[Mapping[str, Any], ...]  # appointment-book: being booked


def parse_request(service: Service, body: Any) -> HookRequest:
    """The request, checked against the spec's shape; BadRequest says what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the request body is not a JSON object")
    if body.get("hook") != service.hook:
        raise BadRequest(f"hook must be {service.hook!r} for service {service.id}")
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not instance:
        raise BadRequest("hookInstance is missing")
    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequest("context is missing or not an object")
    patient = context.get("patientId")
    if not isinstance(patient, str) or not _FHIR_ID.match(patient):
        raise BadRequest("context.patientId is missing or not a FHIR id")
    server = body.get("fhirServer")
    if server is not None and not isinstance(server, str):
        raise BadRequest("fhirServer is not a string")
    authorization = None
    if body.get("fhirAuthorization") is not None:
        if not isinstance(body["fhirAuthorization"], dict):
            raise BadRequest("fhirAuthorization is not an object")
        try:
            authorization = FhirAuthorization.parse(body["fhirAuthorization"])
        except CdsAuthError as exc:
            raise BadRequest(exc.reason) from None
        if server is None:
            raise BadRequest("fhirAuthorization without fhirServer")
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise BadRequest("prefetch is not an object")
    appointments: tuple[Mapping[str, Any], ...] = ()
    if service.hook == "appointment-book":
        bundle = context.get("appointments")
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("context.appointments must be a Bundle of the Appointments "
                             "being booked")
        appointments = tuple(e["resource"] for e in bundle.get("entry") or ()
                             if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                             and e["resource"].get("resourceType") == "Appointment")
        if not appointments:
            raise BadRequest("context.appointments holds no Appointment")
    return HookRequest(service, instance, patient, server, authorization, prefetch or {},
                       appointments)


class NoData(PrevisitError):
    """Nothing to plan from: answered with no cards, the reason logged."""


def _resources(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        return [e["resource"] for e in value.get("entry") or ()
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    return [value]


class CdsServices:
    def __init__(self, settings: WebSettings, store: Store, auth: CdsAuthenticator,
                 planner: Planner, *, fhir_transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._auth = auth
        self._planner = planner
        self._transport = fhir_transport
        self._clock = clock

    def routes(self) -> list[Route]:
        return [Route("/cds-services", self.discovery, methods=["GET"]),
                Route("/cds-services/{service_id}", self.call, methods=["POST"]),
                Route("/cds-services/{service_id}/feedback", self.feedback, methods=["POST"])]

    def url(self, path: str) -> str:
        return f"{self._settings.public_url}{path}"

    async def discovery(self, request: Request) -> Response:
        return _json({"services": [s.discovery() for s in SERVICES.values()]})

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest("the request body is too large")
        body = object_or_none(raw)
        if body is None:
            raise BadRequest("the request body is not a JSON object")
        return body

    async def _caller(self, request: Request, suffix: str) -> tuple[Service, CdsClient]:
        """The service called and its authenticated caller; Refusal otherwise."""
        service = SERVICES.get(request.path_params["service_id"])
        if service is None:
            raise UnknownService("no such CDS service")
        try:
            client = await self._auth.authenticate(
                request.headers.get("authorization"),
                self.url(f"/cds-services/{service.id}{suffix}"))
        except CdsAuthError:
            raise Unauthenticated(CdsAuthError.public_message) from None
        return service, client

    async def call(self, request: Request) -> Response:
        try:
            service, client = await self._caller(request, "")
            hook = parse_request(service, await self._body(request))
        except Refusal as exc:
            log.warning("CDS call refused (%s): %s", type(exc).__name__, exc)
            return exc.response()
        started = time.perf_counter()
        try:
            cards = await self.cards(hook, client)
        except NoData as exc:
            log.warning("CDS %s: no cards: %s", service.id, exc)
            cards = []
        log.info("CDS %s answered %d cards in %.0f ms", service.id, len(cards),
                 (time.perf_counter() - started) * 1000)
        return _json({"cards": cards})

    # --- from request to cards ---------------------------------------------------------

    def _fhir_base(self, hook: HookRequest, client: CdsClient) -> str:
        """The FHIR base this patient id belongs to: the configured one, else the request's,
        else the CDS client itself (feedback must be keyed by something stable)."""
        issuer = self._settings.cds_issuer_for(client.issuer)
        return (issuer.fhir_server if issuer and issuer.fhir_server else None) \
            or hook.fhir_server or client.issuer

    async def record(self, hook: HookRequest, client: CdsClient
                     ) -> tuple[PatientRecord, list[Mapping[str, Any]]]:
        """The patient's record and booked appointments: from prefetch; where a key is
        missing, from one confined batch read of the whole record (the nightly run's own
        reader). Raises NoData."""
        base = self._fhir_base(hook, client)
        confinement = PatientConfinement(base, hook.patient_id)
        wanted = hook.service.prefetch
        missing = [k for k in wanted if hook.prefetch.get(k) is None]
        resources: list[Mapping[str, Any]] = []
        for key in wanted:
            if key in missing:
                continue
            for resource in _resources(hook.prefetch[key]):
                if resource.get("resourceType") == "OperationOutcome":
                    continue
                try:
                    confinement.check_resource(resource)
                except ConfinementError as exc:
                    raise NoData(f"prefetch {key!r}: {exc}") from None
                resources.append(resource)
        appointments = [r for r in resources if r.get("resourceType") == "Appointment"]
        record: PatientRecord | None = None
        if missing:
            record, read_appointments = await self._read_missing(
                hook, client, record_missing=any(k != "appointment" for k in missing),
                appointments_missing="appointment" in missing)
            if "appointment" in missing:
                appointments = read_appointments
        if record is None:
            try:
                record = build_record(r for r in resources
                                      if r.get("resourceType") != "Appointment")
            except RecordError as exc:
                raise NoData(f"the prefetched record cannot be used: {exc}") from None
        return record, appointments

    async def _read_missing(self, hook: HookRequest, client: CdsClient, *,
                            record_missing: bool, appointments_missing: bool
                            ) -> tuple[PatientRecord | None, list[Mapping[str, Any]]]:
        if hook.authorization is None or hook.fhir_server is None:
            raise NoData("prefetch is incomplete and the request has no fhirServer and "
                         "fhirAuthorization to read the rest")
        issuer = self._settings.cds_issuer_for(client.issuer)
        if issuer is None or issuer.fhir_server is None or \
                not same_url(issuer.fhir_server, hook.fhir_server):
            raise NoData("the request's fhirServer is not the FHIR server configured for "
                         "this CDS client (web.cds_issuers fhir_server); not reading it")
        token = hook.authorization.access_token
        patient = hook.authorization.patient
        if patient is not None and patient != hook.patient_id:
            raise NoData("fhirAuthorization is for another patient than context.patientId")

        async def bearer() -> Secret:
            return token

        base = issuer.fhir_server
        record = None
        appointments: list[Mapping[str, Any]] = []
        try:
            async with confined_client(base, bearer, patient_id=hook.patient_id,
                                       transport=self._transport) as http:
                if record_missing:
                    record = await HttpSource(http, base).patient_record(hook.patient_id)
                if appointments_missing:
                    appointments = list(await FhirSession(http, base).search(
                        "Appointment", [("patient", hook.patient_id),
                                        ("status", ",".join(self._planner.statuses))]))
        except (SourceError, FhirAccessError, ConfinementError) as exc:
            raise NoData(f"reading the rest from fhirServer failed: {exc}") from None
        return record, appointments

    async def cards(self, hook: HookRequest, client: CdsClient) -> list[dict[str, Any]]:
        record, appointments = await self.record(hook, client)
        planner = self._planner
        now = now_in(planner.timezone, self._clock())
        today = now.date()
        chosen: list[ChosenVisit] = []
        if hook.service.hook == "appointment-book":
            for resource in hook.appointments:
                try:
                    visit = visit_from_appointment(resource, planner.timezone)
                except AppointmentError as exc:
                    raise NoData(f"context.appointments: {exc}") from None
                if visit.patient_id != hook.patient_id:
                    raise NoData("an appointment being booked is for another patient")
                chosen.append(ChosenVisit(visit, "the visit being booked", True))
        else:
            upcoming = []
            for resource in appointments:
                try:
                    visit = visit_from_appointment(resource, planner.timezone)
                except AppointmentError:
                    continue
                if visit.patient_id == hook.patient_id and visit.day is not None \
                        and visit.day >= today:
                    upcoming.append(visit)
            upcoming.sort(key=lambda v: (v.start or now, v.appointment_id))
            chosen.append(ChosenVisit(upcoming[0], "the next booked visit", True) if upcoming
                          else today_visit(hook.patient_id, now, "today"))
        base = self._fhir_base(hook, client)
        stored = self._store.declines(issuer=base, patient_id=hook.patient_id, since=0.0)
        views = [FeedbackView(r.finding_key, r.outcome, r.reason.system if r.reason else None,
                              r.reason.code if r.reason else None,
                              r.reason.display if r.reason else None, r.outcome_at)
                 for r in stored]
        out: list[dict[str, Any]] = []
        for target in chosen:
            found = declines(views, timezone=planner.timezone,
                             months=self._settings.feedback_suppression_months,
                             on=target.visit.day or today)
            plan = plan_patient(record, target, planner, today=today, declines=found)
            out += build_cards(plan, hook.service, public_url=self._settings.public_url,
                               citation_url=self._citation_url)
        if out:
            self._store.remember_cards([(c["uuid"], c.pop("_rules")) for c in out],
                                       service=hook.service.id, issuer=base,
                                       patient_id=hook.patient_id)
        return out

    def _citation_url(self, rule_id: str) -> str | None:
        try:
            rule = self._planner.ruleset.get(rule_id)
        except KeyError:
            return None
        return next((c.url for c in rule.citations if getattr(c, "url", None)), None)

    # --- feedback ----------------------------------------------------------------------

    async def feedback(self, request: Request) -> Response:
        """Accepted suggestions and overrides, stored against the cards' findings, entry by
        entry (feedback repeated is stored once); a card this service never issued is a 400
        (the entries before it are kept)."""
        try:
            service, _ = await self._caller(request, "/feedback")
            items = parse_feedback(await self._body(request))
            for item in items:
                self._store.record_cds_feedback(service=service.id, card_id=item.card,
                                                outcome=item.outcome, reason=item.reason,
                                                outcome_at=item.at)
        except UnknownCardError as exc:
            return BadRequest(str(exc)).response()
        except Refusal as exc:
            log.warning("CDS feedback refused (%s): %s", type(exc).__name__, exc)
            return exc.response()
        log.info("CDS %s: %d feedback entries recorded", service.id, len(items))
        return Response(status_code=200)


@dataclass(frozen=True)
class FeedbackItem:
    card: str
    outcome: Any  # "accepted" | "overridden"
    reason: Coding | None
    at: float


def parse_feedback(body: Any) -> list[FeedbackItem]:
    entries = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BadRequest("feedback must be a non-empty array")
    out = []
    for index, entry in enumerate(entries):
        where = f"feedback[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("card"), str):
            raise BadRequest(f"{where}: card is missing")
        outcome = entry.get("outcome")
        if outcome not in ("accepted", "overridden"):
            raise BadRequest(f"{where}: outcome must be accepted or overridden")
        at = entry.get("outcomeTimestamp")
        try:
            when = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{where}: outcomeTimestamp is not an ISO 8601 instant") from None
        if when.tzinfo is None:
            raise BadRequest(f"{where}: outcomeTimestamp needs a time zone")
        reason = None
        override = entry.get("overrideReason")
        if outcome == "overridden" and isinstance(override, dict):
            coding = override.get("reason")
            if isinstance(coding, dict):
                reason = Coding(_text(coding.get("system")), _text(coding.get("code")),
                                _text(coding.get("display")))
        out.append(FeedbackItem(entry["card"], outcome, reason, when.timestamp()))
    return out


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None


# --- cards ------------------------------------------------------------------------------


def build_cards(pp: PatientPlan, service: Service, *, public_url: str,
                citation_url: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """One card per kind with work to do before or at the visit, most urgent kind first.

    Each card's hidden `_rules` (removed before sending) lists its findings' rule ids: the
    feedback on the card is kept against them."""
    plan = pp.plan
    if plan.failed:
        return []
    sheet = visit_sheet(plan)
    by_kind: dict[str, list[Item]] = {}
    seen: set[str] = set()
    for item in (*sheet.before, *sheet.at_visit, *sheet.review):
        if item.rule_id in seen:
            continue
        seen.add(item.rule_id)
        by_kind.setdefault(item.kind, []).append(item)
    findings = {f.rule_id: f for f in plan.findings}
    cards = []
    for kind in Kind:
        items = by_kind.get(kind.value)
        if not items:
            continue
        cards.append(_card(pp, kind, items, findings, service, public_url, citation_url))
    return cards


def _card(pp: PatientPlan, kind: Kind, items: list[Item], findings: Mapping[str, Any],
          service: Service, public_url: str, citation_url: Callable[[str], str | None]
          ) -> dict[str, Any]:
    plan = pp.plan
    overdue = any(findings[i.rule_id].status == Status.OVERDUE for i in items)
    day = format_day(plan.visit.day) if pp.chosen.scheduled else None
    summary = _summary(kind, items, day)
    lines = []
    for item in items:
        parts = [f"**{markdown_escape(item.title)}**: {markdown_escape(item.why)}"]
        for order in item.orders:
            when = f" ({markdown_escape(order.when)})" if order.when else ""
            parts.append(f"{markdown_escape(order.display)}{when}")
        parts.append(f"Who: {markdown_escape(item.role)}")
        url = citation_url(item.rule_id)
        if url:
            parts.append(f"[Source]({url.replace(')', '%29').replace(' ', '%20')})")
        lines.append("- " + " · ".join(parts))
    rule_ids = [i.rule_id for i in items]
    suggestions = []
    for summary_ in plan.proposals:
        if summary_.outcome != ProposalOutcome.PROPOSED or \
                not set(summary_.rule_ids) & set(rule_ids):
            continue
        entry = pp.entries.get(summary_.identifier)
        if entry is None:
            continue
        suggestions.append({
            "label": f"Propose a draft order: {summary_.display}"[:SUMMARY_LIMIT],
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"previsit|{summary_.identifier}")),
            "isRecommended": True,
            "actions": [{"type": "create",
                         "description": f"Draft {summary_.resource_type} (proposal) for "
                                        f"{summary_.display}",
                         "resource": entry["resource"]}]})
    first = citation_url(items[0].rule_id)
    source: dict[str, Any] = {"label": "previsit",
                              "topic": {"system": TOPIC_SYSTEM, "code": kind.value,
                                        "display": KIND_LABELS[kind]}}
    if first:
        source["url"] = first
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "detail": "\n".join(lines),
        # A screening or a lab is never an emergency: overdue work is a warning at most.
        "indicator": "warning" if overdue else "info",
        "source": source,
        "overrideReasons": [{"system": DECLINE_REASON_SYSTEM, "code": r.value,
                             "display": r.display} for r in OVERRIDE_REASONS],
        "links": [{"label": "Open the pre-visit plan in previsit",
                   "url": f"{public_url}/launch", "type": "smart"}],
        "_rules": " ".join(rule_ids),
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "any"
    return card


_KIND_SUMMARY = {Kind.LAB: ("lab to draw before the visit", "labs to draw before the visit"),
                 Kind.SCREENING: ("screening due", "screenings due"),
                 Kind.IMMUNIZATION: ("immunization due", "immunizations due"),
                 Kind.RENEWAL: ("prescription to renew", "prescriptions to renew")}


def _summary(kind: Kind, items: Sequence[Item], day: str | None) -> str:
    one, many = _KIND_SUMMARY[kind]
    head = f"{len(items)} {one if len(items) == 1 else many}"
    if day:
        head += f" on {day}"
    text = f"{head}: {', '.join(i.title for i in items)}"
    return text if len(text) <= SUMMARY_LIMIT else text[:SUMMARY_LIMIT - 1] + "…"
