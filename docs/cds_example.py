"""Call previsit's CDS Hooks services as an EHR does, against docs/ehr_simulator.py's data.

    .venv/bin/python docs/cds_example.py --print-config >> previsit.toml   # once
    .venv/bin/previsit serve --config previsit.toml ...                    # see README
    .venv/bin/python docs/cds_example.py pat-maria-lopez 2026-12-10
    .venv/bin/python docs/cds_example.py pat-maria-lopez 2026-12-10 --override-screening

It plays the EHR: publishes its JWK Set on http://127.0.0.1:8104/jwks.json while it runs
(the key is kept in cds-example-key.pem, so previsit's cached JWKS stays valid), reads the
patient's record from the simulator as prefetch, sends the specification's
`appointment-book` request for a new visit on the given day, signed ES384 with aud = the
service URL, prints the cards and books the visit on the simulator (as the EHR does when
the booking completes). `--override-screening` then sends feedback that the screening
card was overridden as "done elsewhere": the next nightly run shows it declined.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from previsit.web.cds import SERVICES

EHR_ISS = "http://127.0.0.1:8104"
JWKS_PORT = 8104
KEY_FILE = Path("cds-example-key.pem")
FHIR = "http://127.0.0.1:8103/fhir/R4"
TOKEN = "ehr-simulator-nightly"  # docs/ehr_simulator.py's static token
SERVICE = "previsit-appointment-book"


def key() -> ec.EllipticCurvePrivateKey:
    if not KEY_FILE.exists():
        KEY_FILE.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    loaded = serialization.load_pem_private_key(KEY_FILE.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def serve_jwks(private: ec.EllipticCurvePrivateKey) -> None:
    body = json.dumps({"keys": [{**ECAlgorithm.to_jwk(private.public_key(), as_dict=True),
                                 "kid": "cds-example", "alg": "ES384", "use": "sig"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's method name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", JWKS_PORT), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def signed(private: ec.EllipticCurvePrivateKey, url: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": EHR_ISS, "aud": url, "iat": now, "exp": now + 300,
                       "jti": str(uuid.uuid4())}, private, algorithm="ES384",
                      headers={"kid": "cds-example"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("patient", nargs="?", default="pat-maria-lopez")
    parser.add_argument("day", nargs="?", default="2026-12-10")
    parser.add_argument("--app-url", default="http://127.0.0.1:8400")
    parser.add_argument("--override-screening", action="store_true")
    parser.add_argument("--print-config", action="store_true")
    args = parser.parse_args()
    if args.print_config:
        print(f'\n[[web.cds_issuers]]\niss = "{EHR_ISS}"\n'
              f'jwks_url = "{EHR_ISS}/jwks.json"\nfhir_server = "{FHIR}"')
        return
    private = key()
    serve_jwks(private)
    prefetch = {}
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        for name, template in SERVICES[SERVICE].prefetch.items():
            path = template.replace("{{context.patientId}}", args.patient)
            prefetch[name] = client.get(f"{FHIR}/{path}" + ("&_count=1000" if "?" in path
                                                             else "")).json()
    start = f"{args.day}T10:00:00-06:00"
    booked = {"resourceType": "Appointment", "id": f"appt-cds-{args.patient}-{args.day}",
              "status": "proposed", "start": start,
              "end": start.replace("T10:00", "T10:20"),
              "participant": [{"actor": {"reference": f"Patient/{args.patient}"},
                               "status": "accepted"},
                              {"actor": {"reference": "Practitioner/prac-okafor"},
                               "status": "accepted"}]}
    request = {"hookInstance": str(uuid.uuid4()), "fhirServer": FHIR,
               "hook": "appointment-book",
               "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer",
                                     "expires_in": 300, "scope": "patient/*.rs",
                                     "subject": "previsit-cds"},
               "context": {"userId": "Practitioner/prac-okafor", "patientId": args.patient,
                           "appointments": {"resourceType": "Bundle", "type": "collection",
                                            "entry": [{"resource": booked}]}},
               "prefetch": prefetch}
    url = f"{args.app_url}/cds-services/{SERVICE}"
    answer = httpx.post(url, json=request, timeout=30,
                        headers={"Authorization": f"Bearer {signed(private, url)}"})
    answer.raise_for_status()
    cards = answer.json()["cards"]
    for card in cards:
        print(f"[{card['indicator']}] {card['summary']}")
        for suggestion in card.get("suggestions", ()):
            print(f"    suggestion: {suggestion['label']}")
    # The EHR finishes the booking: the visit is now on the schedule the nightly run reads.
    httpx.put(f"{FHIR}/Appointment/{booked['id']}", json={**booked, "status": "booked"},
              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).raise_for_status()
    screening = next((c for c in cards if "screening" in c["summary"]), None)
    if args.override_screening and screening is not None:
        feedback = {"feedback": [{
            "card": screening["uuid"], "outcome": "overridden",
            "overrideReason": {"reason": screening["overrideReasons"][1]},
            "outcomeTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}
        sent = httpx.post(f"{url}/feedback", json=feedback, timeout=30, headers={
            "Authorization": f"Bearer {signed(private, url + '/feedback')}"})
        print(f"feedback 'done elsewhere' on the screening card: HTTP {sent.status_code}")


if __name__ == "__main__":
    main()
