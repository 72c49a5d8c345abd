"""A local EHR to try `previsit serve` against: the test FHIR server as SMART authorization
server, loaded with the sample clinic day, with last night's proposals already written.

    .venv/bin/python docs/ehr_simulator.py            # then, in another terminal:
    .venv/bin/previsit serve --fhir-url http://127.0.0.1:8103/fhir/R4 --enable-actions \
        --timezone America/Chicago --today 2026-11-30

It starts tests/fhir_server (Medplum's fhir-router in memory, Node 22 from npm) on port 8103
with previsit registered as a public SMART client (redirect URI
http://127.0.0.1:8400/callback, launch URI http://127.0.0.1:8400/launch), loads
sample_bundles/, runs the nightly job with --write-back for Tue 2026-12-01, and prints
the EHR launch links of a few sample visits: open one in a browser, press Authorize on the
EHR's sign-in page, and the plan opens. Stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "tests"))

from fhirserver import fhir_test_server  # noqa: E402

NIGHTLY_TOKEN = "ehr-simulator-nightly"
VISITS = [("pat-susan-greenberg", "appt-1201-0920-greenberg", "Susan Greenberg, 9:20"),
          ("pat-maria-lopez", "appt-1201-0920-lopez", "María López, 9:20"),
          ("pat-maria-lopez", "appt-1201-0800-lopez-lab", "María López, 8:00 lab draw")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8103)
    parser.add_argument("--app-url", default="http://127.0.0.1:8400",
                        help="where `previsit serve` runs (its public_url)")
    args = parser.parse_args()
    clients = {"clients": [{"client_id": "previsit", "kind": "public", "name": "previsit",
                            "redirect_uris": [f"{args.app_url}/callback"],
                            "launch_uri": f"{args.app_url}/launch"}],
               "users": [{"id": "okafor", "fhirUser": "Practitioner/prac-okafor",
                          "name": "Dr. Amara Okafor"},
                         {"id": "whitfield", "fhirUser": "Practitioner/prac-whitfield",
                          "name": "Dr. Daniel Whitfield"}]}
    with fhir_test_server(clients=clients, token=NIGHTLY_TOKEN,
                          port=args.port) as server:
        server.admin.load_folder(REPO / "sample_bundles")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [sys.executable, "-c", "from previsit.cli.app import main; main()", "run",
                 "--fhir-url", server.base_url, "--date", "2026-12-01", "--timezone",
                 "America/Chicago", "--write-back", "--out", out, "--quiet"],
                env={**os.environ, "PREVISIT_AUTH_METHOD": "bearer",
                     "PREVISIT_TOKEN": NIGHTLY_TOKEN}, check=True)
        print(f"EHR simulator: FHIR base {server.base_url} (sample day loaded, proposals "
              "written)")
        print("Open previsit from a chart (EHR launch):")
        for patient, appointment, label in VISITS:
            print(f"  {label}: {server.root_url}/ehr/launch?client_id=previsit"
                  f"&patient={patient}&appointment={appointment}&user=okafor")
        print("Ctrl-C stops it.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
