"""The whole in-EHR flow in headless Chromium, as a clinician lives it (issue 11, item 3).

The nightly run writes the sample day's proposals to the EHR simulator; the EHR opens
previsit from a chart (EHR launch) → the EHR's authorization page → previsit's plan of
that patient; the clinician accepts a lab and dismisses an immunization as done
elsewhere; the EHR then holds exactly the order-ready request, the revoked proposal and
two Provenances; and the next nightly run neither re-proposes the dismissed one nor
duplicates the accepted one. JavaScript is off: the app needs none.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

from ehr_sim import (
    CLIENT_ID,
    GREENBERG,
    GREENBERG_VISIT,
    PLAN_NOW,
    STATIC_TOKEN,
    TIMEZONE,
    ehr_server,
    search,
    web_config,
)

from previsit.config import Config
from previsit.web.app import create_app

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(config: Config) -> Iterator[str]:
    """`previsit serve`'s app on uvicorn, in a thread, on the configured port."""
    import uvicorn

    app = create_app(config, env={}, plan_clock=lambda: PLAN_NOW)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.web.port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield config.web.public_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def nightly(config_path: Path, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", "from previsit.cli.app import main; main()", "run",
         "--config", str(config_path), "--date", "2026-12-01", "--timezone", TIMEZONE,
         "--write-back", "--out", str(out), "--quiet"],
        env={**os.environ, "PREVISIT_TOKEN": STATIC_TOKEN}, capture_output=True, text=True,
        timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads((out / "run-report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    report["_greenberg"] = next(v for v in plan["visits"]
                                if v["visit"]["appointment_id"] == GREENBERG_VISIT)
    return report


def ours(server: Any, patient: str) -> dict[str, dict[str, Any]]:
    return {r["identifier"][0]["value"]: r
            for r in search(server, "ServiceRequest", patient=patient)
            if r.get("identifier", [{}])[0].get("system") == "urn:previsit:proposal"}


def test_ehr_launch_accept_dismiss_and_the_next_nightly_run(browser: Any, tmp_path: Path
                                                            ) -> None:
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with ehr_server(app_url) as ehr:
        config = web_config(tmp_path, ehr, app_url, port=port)
        config_path = tmp_path / "previsit.toml"
        first = nightly(config_path, tmp_path / "night-1")
        assert first["proposals"]["created"] > 0
        written_before = ours(ehr, GREENBERG)
        tsh_id = next(k for k, r in written_before.items()
                      if r["code"]["coding"][0]["code"] == "3016-3")

        with serving(config):
            context = browser.new_context(java_script_enabled=False,
                                          viewport={"width": 1100, "height": 1400})
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            # The EHR opens previsit from Susan Greenberg's 9:20 appointment.
            page.goto(f"{ehr.root_url}/ehr/launch?client_id={CLIENT_ID}&patient={GREENBERG}"
                      f"&appointment={GREENBERG_VISIT}&user=okafor")
            assert page.title() == "Authorize"  # the EHR's own sign-in page
            page.get_by_role("button", name="Authorize").click()
            page.wait_for_load_state("load")
            assert page.url == f"{app_url}/plan"
            header = page.locator("article.visit header").inner_text()
            assert "Susan Leah Greenberg" in header and "9:20 AM" in header
            tsh = page.locator("tr.item", has_text="TSH on thyroid hormone replacement")
            assert "Written earlier" in tsh.inner_text()  # by the nightly run

            tsh.get_by_role("button", name="Accept as order").click()
            page.wait_for_load_state("load")
            assert "Accepted: the order is ready for signature in the EHR." in \
                page.locator(".notice").inner_text()
            assert "Already done" in page.locator(
                "tr.item", has_text="TSH on thyroid hormone replacement").inner_text()

            tdap = page.locator("section.at-visit tr.item", has_text="Td/Tdap booster")
            tdap.locator("summary").click()
            tdap.locator("select[name=reason]").select_option("done-elsewhere")
            tdap.locator("input[name=text]").fill("given at the pharmacy")
            tdap.get_by_role("button", name="Dismiss", exact=True).click()
            page.wait_for_load_state("load")
            assert "Dismissed" in page.locator(".notice").inner_text()
            up_to_date = page.locator("section.up-to-date").inner_text()
            # declined today (the real clock): "Declined on <today>: Done elsewhere: …"
            assert re.search(r"Td/Tdap booster: Declined on \w{3} \w{3} \d{1,2}, \d{4}: "
                             r"Done elsewhere: given at the pharmacy\. Not proposed again "
                             r"before ", up_to_date), up_to_date
            page.screenshot(path=str(tmp_path / "in-ehr-view.png"), full_page=True)
            # printed, the page is the planning sheet: no app bar, no action column
            page.emulate_media(media="print")
            assert not page.locator(".app-bar").is_visible()
            assert not page.locator("th.act").first.is_visible()
            assert not page.get_by_role("button", name="Accept as order").first.is_visible()
            assert page.locator("article.visit").is_visible()
            page.emulate_media(media="screen")
            # nothing but the EHR and the app was asked for
            assert all(u.startswith((app_url, ehr.root_url)) for u in requests), requests
            context.close()

        after = ours(ehr, GREENBERG)
        assert after[tsh_id]["status"] == "completed"
        orders = [r for r in after.values() if r["intent"] == "order"]
        assert len(orders) == 1
        assert orders[0]["basedOn"] == [{"reference": f"ServiceRequest/{after[tsh_id]['id']}"}]
        assert orders[0]["requester"] == {"reference": "Practitioner/prac-okafor"}
        assert orders[0]["status"] == "draft"
        revoked = [r for r in after.values() if r["status"] == "revoked"]
        assert [r["code"]["coding"][0]["code"] for r in revoked] == ["115"]  # Tdap (CVX 115)
        assert len(after) == len(written_before) + 1  # the order, nothing else
        provenances = search(ehr, "Provenance")
        assert sorted(p["activity"]["coding"][0]["code"] for p in provenances) == \
            ["ABORT", "CREATE"]

        second = nightly(config_path, tmp_path / "night-2")
        assert second["proposals"]["created"] == 0
        assert ours(ehr, GREENBERG).keys() == after.keys()
        visit = second["_greenberg"]
        outcomes = {p["display"]: p["outcome"] for p in visit["proposals"]}
        assert outcomes["Thyrotropin [Units/volume] in Serum or Plasma"] == "done"
        tdap_finding = next(f for f in visit["findings"] if f["rule_id"] == "td-tdap-immunization")
        assert tdap_finding["status"] == "excluded"
        assert tdap_finding["explanation"].startswith("Declined on ")
        assert not any("td-tdap-immunization" in p["rule_ids"] for p in visit["proposals"])


EHR_CHART = "".join([
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Riverside EHR</title>',
    "<style>body{{margin:0;font:14px system-ui,sans-serif;background:#e9edf2}}",
    "header{{background:#2d4a6b;color:#fff;padding:.5rem 1rem}}header b{{font-size:16px}}",
    "nav{{background:#fff;border-bottom:1px solid #ccd;padding:.4rem 1rem;color:#345}}",
    "iframe{{display:block;margin:.6rem auto;width:1080px;height:1240px;",
    "border:1px solid #99a;background:#fff}}</style></head><body>",
    "<header><b>Riverside EHR</b> · Susan Leah Greenberg · 54 y F · MRN RFM-100507</header>",
    "<nav>Chart · Orders · Results · <b>previsit</b></nav>",
    '<iframe title="previsit" src="{launch}"></iframe></body></html>'])


@contextmanager
def ehr_chart(body: str) -> Iterator[str]:
    """The EHR's chart page, served from its own origin on loopback (Chromium's local
    network checks refuse a loopback frame in a page that came from nowhere)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Chart(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chart)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_the_app_works_inside_an_ehr_iframe(browser: Any, tmp_path: Path) -> None:
    """Framed by the EHR's chart page (frame-ancestors from the configuration): the launch
    completes inside the frame, its state carried by the OAuth round trip."""
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with ehr_server(app_url) as ehr:
        launch = (f"{ehr.root_url}/ehr/launch?client_id={CLIENT_ID}&patient={GREENBERG}"
                  f"&appointment={GREENBERG_VISIT}&user=okafor")
        nightly_config = web_config(tmp_path, ehr, app_url, port=port)
        nightly(tmp_path / "previsit.toml", tmp_path / "night")
        with ehr_chart(EHR_CHART.format(launch=launch)) as chart:
            config = web_config(tmp_path, ehr, app_url, port=port, frame_ancestors=[chart])
            with serving(config):
                context = browser.new_context(java_script_enabled=False,
                                              viewport={"width": 1120, "height": 1330})
                page = context.new_page()
                page.goto(chart)
                frame = page.frame_locator("iframe")
                frame.get_by_role("button", name="Authorize").click()
                frame.locator("article.visit").wait_for()
                assert "Susan Leah Greenberg" in \
                    frame.locator("article.visit header").inner_text()
                app_frame = next(f for f in page.frames if f.url.startswith(app_url))
                assert app_frame.url == f"{app_url}/plan"
                shot = os.environ.get("PREVISIT_APP_SCREENSHOT")
                page.screenshot(path=shot or str(tmp_path / "framed.png"))
                context.close()

            # the same page, with the app not configured to be framed by it: refused
            with serving(nightly_config):
                context = browser.new_context(java_script_enabled=False)
                page = context.new_page()
                page.goto(chart)
                frame = page.frame_locator("iframe")
                frame.get_by_role("button", name="Authorize").click()
                page.wait_for_timeout(1000)
                assert not any(f.url == f"{app_url}/plan" for f in page.frames)
                context.close()
