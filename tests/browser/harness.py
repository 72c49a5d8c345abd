"""What the browser tests and docs/make_screenshots.py share: the sample day and Chromium.

The sample clinic day (sample_bundles/) is planned with the shipped rules along the same
path as `previsit run` on the bundles (BundleSource → run_day), dry: nothing is written.
The reference screenshots therefore show exactly what the tests check.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import date, timedelta
from pathlib import Path

from previsit.plan import DayPlan
from previsit.ruleset import load_ruleset
from previsit.run import RunOptions, run_day
from previsit.sources import VisitWindow
from previsit.sources.bundles import BundleSource

REPO = Path(__file__).resolve().parents[2]
# The sample day is a constant of sample_bundles/generate.py (Riverside Family Medicine).
SAMPLE_DAY = date(2026, 12, 1)
SAMPLE_TIMEZONE = "America/Chicago"
MINUTES_SAVED = {"lab": 3.0, "screening": 2.0, "immunization": 1.5, "renewal": 2.0}


class SampleDataMissing(RuntimeError):
    pass


def sample_folder() -> Path:
    # An override lets a developer render a regenerated day before committing it.
    return Path(os.environ.get("PREVISIT_SAMPLE_BUNDLES", REPO / "sample_bundles"))


def plan_sample_day(folder: Path | None = None) -> DayPlan:
    folder = folder or sample_folder()
    window = VisitWindow(start=SAMPLE_DAY, end=SAMPLE_DAY + timedelta(days=1),
                         timezone=SAMPLE_TIMEZONE)
    source = BundleSource(folder)
    result = asyncio.run(run_day(source, load_ruleset(), RunOptions(window=window)))
    if not result.day.plans:
        raise SampleDataMissing(
            f"{folder} has no appointments on {SAMPLE_DAY}: generate the sample day with "
            "`.venv/bin/python sample_bundles/generate.py`")
    return result.day


# Chromium from Debian (no browser download); flags keep it from phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--mute-audio"]
INSTALL = ("install Chromium with `apt-get update && apt-get install -y chromium` and "
           "Playwright with `.venv/bin/pip install playwright` (tests/install-deps.sh does both)")
# Letter at 96 CSS px per inch: the sheets must fit 8.5 in without scrolling sideways.
LETTER_WIDTH, LETTER_HEIGHT = 816, 1056


def chromium_path() -> str | None:
    for candidate in (os.environ.get("PREVISIT_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None
