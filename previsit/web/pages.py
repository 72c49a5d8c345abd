"""The app's pages, rendered from the same Jinja2 environment, templates and view-models as
the printed sheets: the plan page includes the visit sheet's article (sheets/visit.py's
`visit_sheet`), the schedule includes the huddle's schedule table (sheets/huddle.py). The
app adds only what a person does on screen: the action forms, the notices, the app bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from markupsafe import Markup

from previsit.plan import DayPlan, ProposalOutcome, Role, VisitPlan
from previsit.sheets.formatting import format_day
from previsit.sheets.huddle import HuddleRow, huddle
from previsit.sheets.render import environment, templates_dir
from previsit.sheets.selection import locations, practitioners
from previsit.sheets.visit import Item, visit_sheet
from previsit.suppressions import DeclineReason
from previsit.web.grants import ACTION_WORDS
from previsit.web.planning import ACTIONABLE_ON_SERVER


@cache
def stylesheet() -> bytes:
    """/static/app.css: the sheets' stylesheet, then the app's additions."""
    folder = templates_dir()
    return ((folder / "sheet.css").read_bytes() + b"\n" +
            (folder / "app.css").read_bytes())


@dataclass(frozen=True)
class Chrome:
    """What every app page shows around its content."""

    base: str  # the app's path prefix ("" at the root)
    user_label: str | None = None
    csrf: str | None = None
    schedule_link: str | None = None
    notice: str | None = None
    notice_kind: str = "info"  # info | error


def _render(template: str, chrome: Chrome, **context: Any) -> str:
    return environment().get_template(template).render(
        base=chrome.base, user_label=chrome.user_label, csrf=chrome.csrf,
        schedule_link=chrome.schedule_link, notice=chrome.notice,
        notice_kind=chrome.notice_kind, **context)


def message_page(chrome: Chrome, *, title: str, heading: str, message: str,
                 hint: str | None = None, kind: str = "error") -> str:
    return _render("app_message.html.j2", chrome, title=title, heading=heading,
                   message=message, hint=hint, kind=kind)


def start_page(chrome: Chrome, issuers: Sequence[tuple[str, str]]) -> str:
    return _render("app_start.html.j2", chrome, title="previsit", issuers=list(issuers))


@dataclass(frozen=True)
class ProposalChoice:
    identifier: str
    written: bool  # ours, open on the server (accept / dismiss); else not written yet
    of: str | None  # the order's name, when an item has several


@dataclass(frozen=True)
class ActionPanel:
    """What the signed-in user may do with each item's proposals (the template asks)."""

    base: str
    csrf: str
    appointment: str
    outcomes: Mapping[str, ProposalOutcome]  # identifier → outcome in this plan
    unavailable: Mapping[str, str]  # action → why not

    reasons: tuple[tuple[str, str], ...] = tuple((r.value, r.display) for r in DeclineReason)

    def allowed(self, action: str) -> bool:
        return action not in self.unavailable

    def proposals(self, item: Item) -> list[ProposalChoice]:
        seen: dict[str, ProposalChoice] = {}
        several = len({o.identifier for o in item.orders if o.identifier}) > 1
        for order in item.orders:
            identifier = order.identifier
            outcome = self.outcomes.get(identifier or "")
            if identifier is None or identifier in seen or outcome is None:
                continue
            if outcome not in ACTIONABLE_ON_SERVER and outcome != ProposalOutcome.PROPOSED:
                continue
            written = outcome in ACTIONABLE_ON_SERVER
            if not (self.allowed("dismiss") or self.allowed("accept" if written else "propose")):
                continue
            seen[identifier] = ProposalChoice(identifier, written,
                                              order.display if several else None)
        return list(seen.values())

    def nothing(self, item: Item) -> str:
        if not item.orders:
            return "Nothing to order"
        if self.unavailable and len(self.unavailable) == len(ACTION_WORDS):
            return "Actions unavailable (see above)"
        return "Nothing to do here"

    def cell(self, item: Item) -> Markup:
        macro = environment().get_template("app_actions.html.j2").module.cell  # type: ignore[attr-defined]
        return Markup(macro(item, self))


def plan_page(chrome: Chrome, plan: VisitPlan, *, basis: str, panel: ActionPanel | None,
              unavailable: Mapping[str, str]) -> str:
    """The plan page. Proposals not yet written read as the printed dry run does ("Not
    written"); the action column offers to write them."""
    shown = replace(plan, proposals=tuple(
        replace(p, outcome=ProposalOutcome.DRY_RUN) if p.outcome == ProposalOutcome.PROPOSED
        else p for p in plan.proposals))
    lines = [(ACTION_WORDS[action], why) for action, why in unavailable.items()]
    return _render("app_plan.html.j2", chrome,
                   title=f"Plan — {plan.patient_name or 'patient'}",
                   sheet=visit_sheet(shown), for_day=format_day(plan.visit.day),
                   actions=panel, basis=basis, unavailable=lines)


def schedule_page(chrome: Chrome, day: DayPlan, *, location: str | None,
                  practitioner: str | None, minutes_saved: Mapping[str, float],
                  plan_link: Callable[[HuddleRow], str]) -> str:
    view = huddle(day, location=location, practitioner=practitioner,
                  minutes_saved=minutes_saved)
    return _render(
        "app_schedule.html.j2", chrome, title=f"Clinic day {day.generated_for.isoformat()}",
        days=list(view.days), scope_location=view.location,
        scope_practitioner=view.practitioner,
        role_columns=[(r.column, r.heading) for r in Role], plan_link=plan_link,
        day_value=day.generated_for.isoformat(), location=location or "",
        practitioner=practitioner or "",
        location_options=[(g.key, g.label) for g in locations(day)],
        practitioner_options=[(g.key, g.label) for g in practitioners(day)])
