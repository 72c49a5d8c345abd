"""`previsit serve`: the ASGI app (Starlette) — SMART launch, plan and schedule pages,
actions on proposals, and the CDS Hooks services (`previsit.web.cds`).

Every page is rendered on the server from the EHR's data read with the signed-in user's
token; the browser holds a random session id and nothing else. Every POST carries the
session's CSRF token and must come from the app's own origin. Every FHIR request of a
patient-level page goes through the `ConfinedTransport` of the launch patient.

Routes:
    GET  /                       start page (standalone launch) or the current session's page
    GET  /launch?iss=&launch=    EHR launch                 GET /standalone?iss=&level=
    GET  /callback               OAuth redirect URI         POST /logout
    GET  /plan[?appointment=]    the patient's plan         GET /schedule[?date=&…]
    POST /actions/{accept,dismiss,propose}
    GET  /cds-services           CDS Hooks discovery        POST /cds-services/{id}[/feedback]
    GET  /static/app.css         GET /healthz
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from previsit import actions
from previsit.auth import Secret
from previsit.config import Config
from previsit.errors import AppointmentError, PrevisitError, ProposalError, SourceError
from previsit.evaluate import Settings
from previsit.intervals import Duration
from previsit.plan import DayPlan, ProposalOutcome
from previsit.references import bare_id
from previsit.ruleset import RuleSet, load_ruleset
from previsit.run import RunOptions, run_day
from previsit.sheets.huddle import HuddleRow
from previsit.sources import VisitWindow
from previsit.sources.http import HttpSource
from previsit.suppressions import DeclineReason, FeedbackView, declines
from previsit.web import pages
from previsit.web.cds import CdsServices
from previsit.web.cds_auth import CdsAuthenticator
from previsit.web.confinement import ConfinementError
from previsit.web.fhir import FhirAccessError, FhirSession, confined_client
from previsit.web.grants import Grant, unavailable
from previsit.web.keyring import load_keyring
from previsit.web.planning import (
    ACTIONABLE_ON_SERVER,
    PatientPlan,
    Planner,
    choose_visit,
    now_in,
    plan_patient,
)
from previsit.web.security import (
    CSRF_FIELD,
    CsrfError,
    SecurityHeadersMiddleware,
    check_csrf,
    check_same_origin,
    csrf_token,
    expired_launch_cookie,
    expired_session_cookie,
    launch_cookie,
    launch_cookie_name,
    session_cookie,
    session_cookie_name,
)
from previsit.web.settings import WebSettings
from previsit.web.smart import SessionExpiredError, SmartApp, SmartLaunchError
from previsit.web.store import LaunchLevel, LaunchStateError, Session, Store

log = logging.getLogger(__name__)
PURGE_INTERVAL_S = 3600.0
MAX_FORM_BYTES = 16_384


class NotAllowed(PrevisitError):
    """A request the session may not make (wrong level, unknown proposal)."""


@dataclass(frozen=True)
class AppContext:
    """What every request handler needs; one per process."""

    config: Config
    settings: WebSettings
    store: Store
    smart: SmartApp
    cds: CdsServices
    planner: Planner
    http: httpx.AsyncClient  # discovery, tokens, JWKS
    fhir_transport: httpx.AsyncBaseTransport | None  # tests: a transport to the FHIR server
    clock: Callable[[], float]
    base: str  # the path of public_url ("" at the root)
    # "Now" for planning (which visit is next, what can still be drawn): the clock, unless a
    # demo or a test plans a fixed day.
    plan_clock: Callable[[], float]


def _settings(config: Config) -> Settings:
    horizon = config.planning.renewal_horizon_days
    return Settings(due_soon=Duration(config.planning.due_soon_days, "d"),
                    renewal_horizon=Duration(horizon, "d") if horizon is not None else None)


def create_app(config: Config, *, env: Mapping[str, str], ruleset: RuleSet | None = None,
               http: httpx.AsyncClient | None = None,
               fhir_transport: httpx.AsyncBaseTransport | None = None,
               clock: Callable[[], float] = time.time,
               plan_clock: Callable[[], float] | None = None) -> Starlette:
    """The ASGI app. Raises PrevisitError at start-up for a configuration that cannot work
    (unreadable keyring, missing client secret, bad rules): never at a clinician's launch."""
    settings = config.web
    keyring = load_keyring(file=settings.keyring_file, env_name=settings.keyring_env, env=env)
    store = Store(settings.state_db, keyring, clock=clock)
    client = http or httpx.AsyncClient(timeout=20.0, follow_redirects=False)
    rules = ruleset or load_ruleset(config.rules.folder,
                                    extra_valuesets=config.rules.valuesets,
                                    disabled=config.rules.disabled)
    planner = Planner(rules, _settings(config), config.source.timezone,
                      config.output.identifier_system, config.planning.statuses)
    smart = SmartApp(settings, store, client, env=env, clock=clock)
    cds = CdsServices(settings, store, CdsAuthenticator(settings, store, client, clock=clock),
                      planner, fhir_transport=fhir_transport, clock=plan_clock or clock)
    ctx = AppContext(config, settings, store, smart, cds, planner, client, fhir_transport,
                     clock, urlsplit(settings.public_url).path.rstrip("/"),
                     plan_clock or clock)
    handlers = _Handlers(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        handlers.purge()
        # The rules, value sets and modules live as long as the process: moved out of the
        # collector's sight, a full collection triggered by a large CDS prefetch does not
        # walk them again (tens of ms on a 1,000-resource request).
        gc.freeze()
        yield
        store.close()
        if http is None:
            await client.aclose()

    routes = [
        Route("/", handlers.home), Route("/healthz", handlers.health),
        Route("/launch", handlers.launch), Route("/standalone", handlers.standalone),
        Route("/callback", handlers.callback), Route("/logout", handlers.logout,
                                                      methods=["POST"]),
        Route("/plan", handlers.plan), Route("/schedule", handlers.schedule),
        Route("/actions/{action}", handlers.act, methods=["POST"]),
        Route("/static/app.css", handlers.css),
        *cds.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeadersMiddleware, settings=settings)
    return app


# --- the handlers -------------------------------------------------------------------------


_ERRORS: tuple[tuple[type[Exception], int, str, str | None], ...] = (
    (SessionExpiredError, 401, "Session ended", "Open previsit again from the patient's chart."),
    (LaunchStateError, 400, "Sign-in refused", "Open previsit again from the patient's chart."),
    (SmartLaunchError, 400, "Sign-in refused", "Open previsit again from the EHR; if it "
                                               "keeps failing, tell the EHR's administrators."),
    (CsrfError, 403, "Request refused", "Nothing was changed. Reload the plan and try again."),
    (ConfinementError, 403, "Outside this patient's chart",
     "previsit reads and writes only the patient it was opened for. Nothing was changed."),
    (NotAllowed, 403, "Not allowed", "Nothing was changed."),
    (ProposalError, 409, "Cannot act on this proposal", "Reload the plan to see its state."),
)


class _Handlers:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._last_purge = 0.0

    def purge(self) -> None:
        """Expired launch states, sessions, jti records and old feedback (hourly)."""
        now = self.ctx.clock()
        if now - self._last_purge >= PURGE_INTERVAL_S:
            self._last_purge = now
            counts = self.ctx.store.purge(
                feedback_months=self.ctx.settings.feedback_suppression_months)
            log.info("state database purged: %s", ", ".join(f"{k} {v}" for k, v in
                                                            counts.items() if v) or "nothing")

    # --- helpers ----------------------------------------------------------------------

    def _chrome(self, session_id: str | None = None, session: Session | None = None,
                notice: str | None = None, kind: str = "info") -> pages.Chrome:
        user = session.user.rsplit("/", 2) if session and session.user else None
        return pages.Chrome(
            base=self.ctx.base, user_label="/".join(user[-2:]) if user else None,
            csrf=csrf_token(session_id) if session_id else None,
            schedule_link=f"{self.ctx.base}/schedule" if session and session.level == "user"
            else None, notice=notice, notice_kind=kind)

    def _html(self, body: str, status: int = 200, cookies: tuple[str, ...] = ()) -> Response:
        response = HTMLResponse(body, status_code=status)
        for cookie in cookies:
            response.headers.append("Set-Cookie", cookie)
        return response

    def _error(self, exc: Exception, session_id: str | None = None,
               session: Session | None = None) -> Response:
        known = next((e for e in _ERRORS if isinstance(exc, e[0])), None)
        if known is not None:
            _, status, heading, hint = known
        else:
            if isinstance(exc, FhirAccessError):
                status, heading = (403 if exc.forbidden else 502), "The EHR refused"
                hint = "Nothing was changed by previsit."
            elif isinstance(exc, (SourceError, AppointmentError)):
                status, heading, hint = 502, "The chart could not be read", None
            else:
                status, heading, hint = 500, "previsit could not do this", None
        # The message can name the patient's resources: the type at WARNING, the rest at
        # DEBUG (no patient data in INFO logs).
        log.warning("request refused (%s)", type(exc).__name__)
        log.debug("refused: %s", getattr(exc, "reason", None) or exc)
        cookies = (expired_session_cookie(self.ctx.settings),) \
            if isinstance(exc, SessionExpiredError) else ()
        body = pages.message_page(self._chrome(session_id, session), title=heading,
                                  heading=heading, message=str(exc), hint=hint)
        return self._html(body, status, cookies)

    def _session(self, request: Request) -> tuple[str, Session]:
        session_id = request.cookies.get(session_cookie_name(self.ctx.settings))
        session = self.ctx.store.session(session_id) if session_id else None
        if session_id is None or session is None:
            raise SessionExpiredError("there is no previsit session in this browser, or it "
                                      "has ended")
        return session_id, session

    def _token(self, session_id: str) -> Callable[[], Awaitable[Secret]]:
        async def token() -> Secret:
            return await self.ctx.smart.access_token(session_id)
        return token

    def _client(self, session_id: str, session: Session, patient_id: str | None
                ) -> httpx.AsyncClient:
        return confined_client(session.issuer, self._token(session_id), patient_id=patient_id,
                               transport=self.ctx.fhir_transport)

    # --- pages ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def css(self, request: Request) -> Response:
        return Response(pages.stylesheet(), media_type="text/css")

    async def home(self, request: Request) -> Response:
        session_id = request.cookies.get(session_cookie_name(self.ctx.settings))
        if session_id and self.ctx.store.session(session_id) is not None:
            return RedirectResponse(f"{self.ctx.base}/plan", status_code=303)
        issuers = [(i.iss, i.label or i.iss) for i in self.ctx.settings.issuers]
        return self._html(pages.start_page(self._chrome(), issuers))

    async def launch(self, request: Request) -> Response:
        """EHR launch: an unknown iss gets an error page, never a redirect."""
        self.purge()
        iss, launch = request.query_params.get("iss"), request.query_params.get("launch")
        if not iss or not launch:
            return self._error(SmartLaunchError("the EHR's launch request needs iss and launch "
                                                "parameters"))
        binder = request.cookies.get(launch_cookie_name(self.ctx.settings))
        try:
            redirect = await self.ctx.smart.begin_ehr_launch(iss, launch, binder=binder)
        except PrevisitError as exc:
            return self._error(exc)
        return self._redirect_to_authorize(redirect.url, redirect.binder)

    async def standalone(self, request: Request) -> Response:
        iss = request.query_params.get("iss") or ""
        level: LaunchLevel = "user" if request.query_params.get("level") == "user" \
            else "patient"
        binder = request.cookies.get(launch_cookie_name(self.ctx.settings))
        try:
            redirect = await self.ctx.smart.begin_standalone_launch(iss, level=level,
                                                                    binder=binder)
        except PrevisitError as exc:
            return self._error(exc)
        return self._redirect_to_authorize(redirect.url, redirect.binder)

    def _redirect_to_authorize(self, url: str, binder: Secret) -> Response:
        response = RedirectResponse(url, status_code=302)
        response.headers.append("Set-Cookie", launch_cookie(self.ctx.settings, binder.reveal()))
        return response

    async def callback(self, request: Request) -> Response:
        binder = request.cookies.get(launch_cookie_name(self.ctx.settings))
        try:
            session_id, session = await self.ctx.smart.complete_launch(
                dict(request.query_params), binder=binder)
        except PrevisitError as exc:
            response = self._error(exc)
            response.headers.append("Set-Cookie", expired_launch_cookie(self.ctx.settings))
            return response
        target = "/plan" if session.level == "patient" else "/schedule"
        response = RedirectResponse(f"{self.ctx.base}{target}", status_code=303)
        response.headers.append("Set-Cookie", session_cookie(self.ctx.settings,
                                                             session_id.reveal()))
        response.headers.append("Set-Cookie", expired_launch_cookie(self.ctx.settings))
        return response

    async def logout(self, request: Request) -> Response:
        session_id = request.cookies.get(session_cookie_name(self.ctx.settings))
        try:
            check_same_origin(request.headers.items(), self.ctx.settings)
            form = await request.form(max_part_size=MAX_FORM_BYTES)
            check_csrf(session_id, _field(form, CSRF_FIELD))
        except CsrfError as exc:
            return self._error(exc)
        assert session_id is not None
        self.ctx.store.delete_session(session_id)
        body = pages.message_page(self._chrome(), title="Signed out", heading="Signed out",
                                  message="Your previsit session has ended; nothing of it is "
                                          "kept on the server.", kind="info")
        return self._html(body, 200, (expired_session_cookie(self.ctx.settings),))

    async def plan(self, request: Request) -> Response:
        session_id: str | None = None
        session: Session | None = None
        try:
            session_id, session = self._session(request)
            appointment = request.query_params.get("appointment") or None
            notice = _DONE.get(request.query_params.get("done") or "")
            patient_plan, grant_unavailable = await self._patient_plan(
                session_id, session, appointment)
        except PrevisitError as exc:
            return self._error(exc, session_id, session)
        return self._html(self._plan_page(session_id, session, patient_plan,
                                          grant_unavailable, notice))

    def _plan_page(self, session_id: str, session: Session, pp: PatientPlan,
                   grant_unavailable: Mapping[str, str], notice: str | None,
                   kind: str = "info") -> str:
        plan = pp.plan
        panel = None
        if pp.chosen.scheduled and plan.failed is None:
            panel = pages.ActionPanel(
                base=self.ctx.base, csrf=csrf_token(session_id),
                appointment=plan.visit.appointment_id,
                outcomes={p.identifier: p.outcome for p in plan.proposals},
                unavailable=grant_unavailable)
        return pages.plan_page(self._chrome(session_id, session, notice, kind), plan,
                               basis=pp.chosen.basis, panel=panel,
                               unavailable=grant_unavailable)

    async def _patient_plan(self, session_id: str, session: Session, appointment: str | None
                            ) -> tuple[PatientPlan, dict[str, str]]:
        """Read and plan the session's patient (or, for a user-level session, the patient of
        the appointment chosen on the schedule); every read confined to that patient."""
        now = now_in(self.ctx.planner.timezone, self.ctx.plan_clock())
        if session.level == "patient":
            assert session.patient is not None
            patient_id = session.patient
            launched_appointment = session.appointment
            encounter = session.encounter
        else:
            if not appointment:
                raise NotAllowed("open a patient's plan from the schedule")
            async with self._client(session_id, session, None) as client:
                booked = await FhirSession(client, session.issuer).read("Appointment",
                                                                        bare_id(appointment))
            patient_id = _appointment_patient(booked)
            launched_appointment, encounter = None, None
        async with self._client(session_id, session, patient_id) as client:
            fhir = FhirSession(client, session.issuer)
            chosen = await choose_visit(fhir, patient_id,
                                        appointment=appointment or launched_appointment,
                                        encounter=None if appointment else encounter,
                                        now=now, planner=self.ctx.planner)
            source = HttpSource(client, session.issuer)
            record = await source.patient_record(patient_id)
        found = self._declines(session.issuer, patient_id, chosen.visit.day or now.date())
        patient_plan = plan_patient(record, chosen, self.ctx.planner, today=now.date(),
                                    declines=found)
        grant = Grant(session.scope_granted, session.level)
        return patient_plan, unavailable(grant, actions_enabled=self.ctx.settings.enable_actions)

    def _declines(self, issuer: str, patient_id: str, day: date) -> Mapping[str, Any]:
        records = self.ctx.store.declines(issuer=issuer, patient_id=patient_id, since=0.0)
        return declines((FeedbackView(r.finding_key, r.outcome,
                                      r.reason.system if r.reason else None,
                                      r.reason.code if r.reason else None,
                                      r.reason.display if r.reason else None, r.outcome_at)
                         for r in records), timezone=self.ctx.planner.timezone,
                        months=self.ctx.settings.feedback_suppression_months, on=day)

    async def schedule(self, request: Request) -> Response:
        session_id: str | None = None
        session: Session | None = None
        try:
            session_id, session = self._session(request)
            if session.level != "user":
                raise NotAllowed("the schedule needs a sign-in without a patient in context "
                                 "(open previsit from the EHR's schedule, or sign in on "
                                 "previsit's start page)")
            params = request.query_params
            timezone = self.ctx.planner.timezone
            try:
                day = date.fromisoformat(params["date"]) if params.get("date") else \
                    now_in(timezone, self.ctx.plan_clock()).date()
            except ValueError:
                raise NotAllowed("the date is not a date (YYYY-MM-DD)") from None
            planning = self.ctx.config.planning
            window = VisitWindow(start=day, end=day + timedelta(days=1), timezone=timezone,
                                 statuses=planning.statuses,
                                 practitioners=planning.practitioners,
                                 locations=planning.locations,
                                 service_types=planning.service_types)
            async with self._client(session_id, session, None) as client:
                result = await run_day(HttpSource(client, session.issuer), self.ctx.planner.ruleset,
                                       RunOptions(window=window,
                                                  settings=self.ctx.planner.settings,
                                                  identifier_system=self.ctx.planner.identifier_system,
                                                  concurrency=4))
        except PrevisitError as exc:
            return self._error(exc, session_id, session)
        base = self.ctx.base

        def plan_link(row: HuddleRow) -> str:
            return f"{base}/plan?{urlencode({'appointment': row.appointment_id})}"

        day_plan: DayPlan = result.day
        body = pages.schedule_page(
            self._chrome(session_id, session), day_plan,
            location=params.get("location") or None,
            practitioner=params.get("practitioner") or None,
            minutes_saved=self.ctx.config.sheets.minutes_saved, plan_link=plan_link)
        return self._html(body)

    # --- actions ----------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        session_id: str | None = None
        session: Session | None = None
        try:
            if action not in ("accept", "dismiss", "propose"):
                raise NotAllowed(f"there is no action {action!r}")
            check_same_origin(request.headers.items(), self.ctx.settings)
            session_id = request.cookies.get(session_cookie_name(self.ctx.settings))
            form = await request.form(max_part_size=MAX_FORM_BYTES)
            # The CSRF token first: a forged POST learns nothing, not even whether the
            # session is alive.
            check_csrf(session_id, _field(form, CSRF_FIELD))
            session_id, session = self._session(request)
            appointment = _field(form, "appointment") or None
            identifier = _field(form, "identifier") or ""
            pp, grant_unavailable = await self._patient_plan(
                session_id, session, appointment if session.level == "user" else None)
            if action in grant_unavailable:
                raise NotAllowed(f"{action}: {grant_unavailable[action]}")
            if appointment and appointment != pp.plan.visit.appointment_id:
                raise NotAllowed("the plan changed since the page was shown; reload it")
            await self._perform(action, form, session_id, session, pp, identifier)
        except FhirAccessError as exc:
            if session is None or session_id is None:
                return self._error(exc)
            return await self._refused(action, exc, session_id, session)
        except PrevisitError as exc:
            return self._error(exc, session_id, session)
        query = {"done": action}
        if session.level == "user":
            query["appointment"] = pp.plan.visit.appointment_id
        return RedirectResponse(f"{self.ctx.base}/plan?{urlencode(query)}", status_code=303)

    async def _perform(self, action: str, form: Any, session_id: str, session: Session,
                       pp: PatientPlan, identifier: str) -> None:
        summary = pp.summary(identifier)
        if summary is None:
            raise NotAllowed("that proposal is not part of this patient's plan")
        actor = actions.Actor(_relative_user(session))
        when = datetime.fromtimestamp(self.ctx.clock()).astimezone()
        system = self.ctx.planner.identifier_system
        patient_id = pp.plan.visit.patient_id
        async with self._client(session_id, session, patient_id) as client:
            fhir = FhirSession(client, session.issuer)
            written = summary.outcome in ACTIONABLE_ON_SERVER and summary.existing
            if action == "accept":
                if not written or summary.existing is None:
                    raise NotAllowed("only a proposal already written can be accepted; "
                                     "propose it first")
                kind, rid = summary.existing.split("/", 1)
                proposal = await fhir.read(kind, rid)
                bundle = actions.accept(proposal, actor=actor, when=when,
                                        identifier_system=system)
            elif action == "propose":
                entry = pp.entries.get(identifier)
                if summary.outcome != ProposalOutcome.PROPOSED or entry is None:
                    raise NotAllowed("that proposal is already written (or not needed)")
                bundle = actions.propose_now(entry, actor=actor, when=when)
            else:
                try:
                    reason = DeclineReason(_field(form, "reason") or "")
                except ValueError:
                    raise NotAllowed("choose a reason for dismissing") from None
                text = (_field(form, "text") or "").strip()[:200] or None
                if reason == DeclineReason.OTHER and not text:
                    raise NotAllowed("say why in the note when the reason is \"Other\"")
                if written and summary.existing is not None:
                    kind, rid = summary.existing.split("/", 1)
                    proposal = await fhir.read(kind, rid)
                    bundle = actions.dismiss(proposal, reason=reason, text=text, actor=actor,
                                             when=when, identifier_system=system)
                elif summary.outcome == ProposalOutcome.PROPOSED and identifier in pp.entries:
                    bundle = actions.dismiss_unwritten(pp.entries[identifier], reason=reason,
                                                       text=text, actor=actor, when=when)
                else:
                    raise NotAllowed("that proposal cannot be dismissed any more")
            await fhir.transaction(bundle)
        if action == "dismiss":
            self.ctx.store.record_dismissal(
                issuer=session.issuer, patient_id=patient_id,
                finding_key=" ".join(summary.rule_ids),
                reason=_coding(reason, text), user=session.user)
        log.info("action %s done", action)

    async def _refused(self, action: str, exc: FhirAccessError, session_id: str,
                       session: Session) -> Response:
        """The EHR refused the write: show the plan again, saying what and why."""
        from previsit.web.grants import ACTION_WORDS

        why = ("the EHR refused the write (its authorization does not let previsit write "
               "this)" if exc.forbidden else "the EHR did not accept the write")
        notice = f"{ACTION_WORDS[action]} is unavailable: {why}. {exc} Nothing was changed."
        try:
            pp, grant_unavailable = await self._patient_plan(session_id, session, None)
        except PrevisitError:
            return self._error(exc, session_id, session)
        status = 403 if exc.forbidden else 502
        return self._html(self._plan_page(session_id, session, pp,
                                          {**grant_unavailable, action: why}, notice, "error"),
                          status)


_DONE = {"accept": "Accepted: the order is ready for signature in the EHR.",
         "dismiss": "Dismissed: the proposal is revoked and will not be proposed again.",
         "propose": "Proposed: the draft order is written to the chart."}


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _coding(reason: DeclineReason, text: str | None) -> Any:
    from previsit.suppressions import DECLINE_REASON_SYSTEM
    from previsit.web.store import Coding

    return Coding(DECLINE_REASON_SYSTEM, reason.value,
                  f"{reason.display}: {text}" if text else reason.display)


def _relative_user(session: Session) -> str:
    """The user as a reference relative to the FHIR base (how the EHR's own data names
    practitioners); the absolute form when it lives elsewhere."""
    user = session.user or ""
    prefix = session.issuer.rstrip("/") + "/"
    return user[len(prefix):] if user.startswith(prefix) else user


def _appointment_patient(resource: Mapping[str, Any]) -> str:
    for participant in resource.get("participant") or ():
        actor = (participant or {}).get("actor") or {}
        reference = actor.get("reference")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return bare_id(reference)
    raise NotAllowed("the appointment has no patient")
