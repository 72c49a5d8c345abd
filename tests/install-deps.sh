#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine, idempotent:
# - a venv (.venv) with previsit installed editable plus its test extras;
# - Chromium (Debian package) for the browser tests and the libraries WeasyPrint needs;
# - the Node test FHIR server's npm packages (tests/fhir_server, Medplum on Node 22 from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
dpkg -s libpango-1.0-0 >/dev/null 2>&1 || need_apt+=(libpango-1.0-0)
dpkg -s libpangoft2-1.0-0 >/dev/null 2>&1 || need_apt+=(libpangoft2-1.0-0)
dpkg -s poppler-utils >/dev/null 2>&1 || need_apt+=(poppler-utils)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

bash tests/fhir_server/install.sh >/dev/null
echo "test dependencies ready"
