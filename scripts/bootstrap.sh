#!/usr/bin/env bash
# Set up everything PeerSync needs, idempotently: its venv (.venv) and the
# demo/test EHR's own venv (.venv-ehr; sekmet's pins clash with ours).
# Re-installs only when pyproject.toml or the EHR pin list changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "PeerSync needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

want=$(stamp pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.peersync-stamp 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (PeerSync and its test tools) ..."
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import connector, mappings, webapp' 
  echo "$want" > .venv/.peersync-stamp
fi

want_ehr=$(stamp ehr/sekmet-requirements.txt)
if [ ! -x .venv-ehr/bin/sekmet ] || [ "$(cat .venv-ehr/.peersync-stamp 2>/dev/null)" != "$want_ehr" ]; then
  echo "setting up .venv-ehr (the local FHIR server, sekmet) ..."
  [ -x .venv-ehr/bin/python ] || "$PYTHON" -m venv .venv-ehr
  .venv-ehr/bin/pip install -q --disable-pip-version-check -r ehr/sekmet-requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  test -x .venv-ehr/bin/sekmet
  echo "$want_ehr" > .venv-ehr/.peersync-stamp
fi
