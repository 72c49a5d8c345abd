"""Reference screenshots of the sample day's sheets, for the README and for review.

Run from the repository root after changing the templates or the sample data:

    .venv/bin/python docs/make_screenshots.py

It plans sample_bundles/ exactly as the browser tests do (tests/browser/harness.py),
renders the 9:20 visit's sheet and the clinic-day huddle, and has headless Chromium (the
Debian package, driven by Playwright) photograph them at Letter width:
docs/visit-sheet.png (the whole sheet) and docs/huddle-sheet.png (the top of the huddle:
the schedule as the team sees it first), each cropped to the sheet of paper. The HTML is
kept next to them only when --keep-html is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

from harness import (  # noqa: E402
    CHROMIUM_ARGS,
    INSTALL,
    LETTER_HEIGHT,
    LETTER_WIDTH,
    MINUTES_SAVED,
    chromium_path,
    plan_sample_day,
)

from previsit import sheets  # noqa: E402
from previsit.plan import DayPlan, VisitPlan  # noqa: E402
from previsit.sheets.formatting import format_time  # noqa: E402

SCALE = 1.5  # device pixels per CSS pixel: sharp text in the README without huge files
HUDDLE_HEIGHT = 1150  # CSS px of the huddle shown: header, schedule, start of the task lists


def featured_visit(day: DayPlan, clock: str = "9:20 AM") -> VisitPlan:
    """The visit the issue's acceptance names ("the 9:20 patient"), else the busiest."""
    for plan in sheets.select_plans(day):
        if format_time(plan.visit.start) == clock and not plan.failed:
            return plan
    return max(day.plans, key=lambda p: len(p.actionable))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go")
    parser.add_argument("--keep-html", action="store_true", help="also keep the HTML")
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print(f"Playwright is not installed: {INSTALL}", file=sys.stderr)
        return 2
    executable = chromium_path()
    if executable is None:
        print(f"Chromium was not found: {INSTALL}", file=sys.stderr)
        return 2

    day = plan_sample_day()
    visit = featured_visit(day)
    pages = {
        "visit-sheet": sheets.render_visit_sheet(visit),
        "huddle-sheet": sheets.render_huddle(day, minutes_saved=MINUTES_SAVED),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": LETTER_WIDTH, "height": LETTER_HEIGHT},
            device_scale_factor=SCALE, java_script_enabled=False, offline=True)
        page = context.new_page()
        for name, html in pages.items():
            source = (args.out if args.keep_html else Path(tmp)) / f"{name}.html"
            source.write_text(html, encoding="utf-8")
            page.goto(source.as_uri())
            target = args.out / f"{name}.png"
            sheet = page.locator("article.sheet").first
            if name == "huddle-sheet":
                box = sheet.bounding_box()
                assert box is not None
                page.screenshot(path=str(target), full_page=True, clip={
                    "x": box["x"], "y": box["y"], "width": box["width"],
                    "height": min(box["height"], HUDDLE_HEIGHT)})
            else:
                sheet.screenshot(path=str(target))
            print(f"{target} ({target.stat().st_size // 1024} KiB)")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
