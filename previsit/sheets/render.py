"""Rendering the sheets: the Jinja2 environment, the templates and their stylesheet.

The templates (templates/*.html.j2 and templates/sheet.css) only lay out text; the
view-models (visit.py, huddle.py) decide everything. Jinja2 autoescapes every value, so a
FHIR string can never become markup; `finalize` turns a stray None into a dash rather than
"None".

Chart text is also kept from rearranging or flooding the page: every value loses the bidi
embeddings, overrides and marks it carries (a U+202E in a unit printed "10-80-6202" for
2026-08-01) and is cut at MAX_SHOWN characters with an ellipsis (a 10 MB name made a
157 MB huddle); values from the chart are shown inside `<bdi>` (the `or_missing` and `bdi`
filters), which keeps a right-to-left name readable without reordering its neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import jinja2
from markupsafe import Markup

from previsit.plan import DayPlan, Role, VisitPlan
from previsit.sheets.formatting import format_day
from previsit.sheets.huddle import Huddle, huddle
from previsit.sheets.selection import scope_labels, select_plans
from previsit.sheets.visit import visit_sheet
from previsit.shipped import shipped_dir
from previsit.text import shorten, without_bidi_controls

Paper = Literal["letter", "a4"]
_PAGE_SIZES: dict[str, str] = {"letter": "letter", "a4": "A4"}


def templates_dir() -> Path:
    """The shipped templates (package data in a wheel, templates/ in a checkout)."""
    return shipped_dir("templates")


# The most characters of one value a sheet shows: far more than any name, reason or
# explanation needs, far less than what a broken chart can hold.
MAX_SHOWN = 1000


def _shown(value: str) -> str:
    return shorten(without_bidi_controls(value), MAX_SHOWN)


def _or_missing(value: Any, placeholder: str = "—") -> Markup:
    """A value from the chart, isolated (<bdi>), or a visibly marked placeholder when FHIR
    did not give one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Markup('<span class="missing">{}</span>').format(placeholder)
    return _bdi(value)


def _bdi(value: Any) -> Markup:
    """A value from the chart in its own bidi isolate (a dash when there is none)."""
    if value is None:
        return Markup("—")
    return Markup("<bdi>{}</bdi>").format(_shown(str(value)))


def _finalize(value: Any) -> Any:
    if value is None:
        return "—"
    if isinstance(value, str) and not isinstance(value, Markup):
        return _shown(value)  # every value, attributes too: no bidi controls, capped
    return value


def _number(value: float) -> str:
    return f"{value:g}"


_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    """The Jinja2 environment: autoescape on for every template whatever its name."""
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=True,
            undefined=jinja2.StrictUndefined, finalize=_finalize, trim_blocks=True,
            lstrip_blocks=True, keep_trailing_newline=True)
        env.filters["or_missing"] = _or_missing
        env.filters["bdi"] = _bdi
        env.filters["number"] = _number
        _ENV = env
    return _ENV


def _css() -> Markup:
    # Our own stylesheet, inlined so the page needs nothing from outside. It is read as
    # text, not parsed as a template, so CSS braces never meet Jinja syntax.
    return Markup((templates_dir() / "sheet.css").read_text(encoding="utf-8"))


def _page_size(paper: str) -> str:
    try:
        return _PAGE_SIZES[paper.lower()]
    except KeyError:
        raise ValueError(f"paper must be one of {', '.join(_PAGE_SIZES)}, not {paper!r}") \
            from None


def _render(template: str, *, title: str, paper: str, **context: Any) -> str:
    return environment().get_template(template).render(
        title=title, css=_css(), page_size=_page_size(paper), **context)


def render_visit_sheet(plan: VisitPlan, *, paper: Paper = "letter",
                       article: str | None = None) -> str:
    """One visit's planning sheet as a standalone HTML page. `article`: the visit's
    `render_visit_article` for its own day, when already rendered."""
    sheet: Any = Markup(article) if article is not None else visit_sheet(plan)
    title = f"Visit plan {plan.visit.appointment_id}".strip()
    return _render("visits.html.j2", title=title, paper=paper, sheets=[sheet],
                   for_day=format_day(plan.visit.day))


def render_visit_article(plan: VisitPlan, for_day: date | None) -> str:
    """One visit's sheet as it stands in a document of the sheets of `for_day`: what
    `render_visit_sheets_from` joins."""
    return environment().get_template("visit_article.html.j2").render(
        sheet=visit_sheet(plan), for_day=format_day(for_day))


def render_visit_sheets(day: DayPlan, *, location: str | None = None,
                        practitioner: str | None = None, paper: Paper = "letter") -> str:
    """Every selected visit's sheet in one printable document, one visit per page."""
    plans = select_plans(day, location=location, practitioner=practitioner)
    where, who = scope_labels(day, location, practitioner)
    return _render("visits.html.j2", title=f"Visit plans {day.generated_for.isoformat()}",
                   paper=paper, sheets=[visit_sheet(p) for p in plans],
                   for_day=format_day(day.generated_for), scope_location=where,
                   scope_practitioner=who)


def render_visit_sheets_from(generated_for: date, articles: Iterable[str], *,
                             paper: Paper = "letter") -> Iterator[str]:
    """`render_visit_sheets` of a whole day (no location or practitioner chosen), in parts,
    from its visits' articles (`render_visit_article`) in time order: the document of
    thousands of visits is never one string."""
    return environment().get_template("visits.html.j2").generate(
        title=f"Visit plans {generated_for.isoformat()}", css=_css(),
        page_size=_page_size(paper), sheets=(Markup(a) for a in articles),
        for_day=format_day(generated_for), scope_location="all", scope_practitioner="all")


def render_huddle(day: DayPlan, *, location: str | None = None,
                  practitioner: str | None = None,
                  minutes_saved: Mapping[str, float], paper: Paper = "letter") -> str:
    """The clinic-day huddle sheet: one page group per day in the plan (see `huddle`)."""
    return render_huddle_view(huddle(day, location=location, practitioner=practitioner,
                                     minutes_saved=minutes_saved),
                              day.generated_for, paper=paper)


def render_huddle_view(view: Huddle, generated_for: date, *, paper: Paper = "letter") -> str:
    """The huddle sheet of a view-model (`huddle`, or `whole_day_huddle` in a run)."""
    return "".join(render_huddle_parts(view, generated_for, paper=paper))


def render_huddle_parts(view: Huddle, generated_for: date, *, paper: Paper = "letter"
                        ) -> Iterator[str]:
    """`render_huddle_view` in parts, for a huddle of thousands of rows."""
    return environment().get_template("huddle.html.j2").generate(
        title=f"Huddle {generated_for.isoformat()}", css=_css(), page_size=_page_size(paper),
        days=list(view.days), scope_location=view.location,
        scope_practitioner=view.practitioner,
        role_columns=[(r.column, r.heading) for r in Role], for_day=view.for_day)
