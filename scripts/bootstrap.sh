#!/usr/bin/env bash
# Set up everything PeerSync needs, idempotently: its venv (.venv) and the
# demo/test EHR's own venv (.venv-ehr; sekmet's pins clash with ours).
# .venv installs exactly requirements.lock (pinned, hash-checked; regenerate it
# with scripts/lock.sh), then PeerSync itself without dependencies.
# Re-installs only when pyproject.toml, requirements.lock or the EHR pin list changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "PeerSync needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

want=$(stamp pyproject.toml requirements.lock)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.peersync-stamp 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (PeerSync and its test tools, from requirements.lock) ..."
  rm -f .venv/.peersync-stamp  # a failed install below must not look done next time
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock \
    2>&1 | { grep -v "^WARNING: Location" || true; }
  # The build backend (setuptools) comes from the lock too: no unpinned build env.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    2>&1 | { grep -v "^WARNING: Location" || true; }
  # Every requirement of pyproject.toml (and its test extra) must be met by the lock.
  .venv/bin/python - <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.requirements import Requirement

stale = []
for req in map(Requirement, distribution("peersync").requires or []):
    if req.marker is not None and not req.marker.evaluate({"extra": "test"}):
        continue
    try:
        have = version(req.name)
    except PackageNotFoundError:
        stale.append(f"{req} (not in the lock)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        stale.append(f"{req} (locked {have})")
if stale:
    sys.exit("requirements.lock does not satisfy pyproject.toml: " + "; ".join(stale)
             + ". Run scripts/lock.sh and commit requirements.lock.")
PY
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

# axe-core for the accessibility browser tests: pinned in tests/browser/package-lock.json,
# installed with `npm ci` into tests/browser/node_modules (re-installed when the lock changes).
# Without npm the browser tests that need it fail and say how to install it.
want_axe=$(stamp tests/browser/package-lock.json)
if command -v npm >/dev/null \
    && [ "$(cat tests/browser/node_modules/.peersync-stamp 2>/dev/null)" != "$want_axe" ]; then
  echo "installing axe-core (npm ci in tests/browser) ..."
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want_axe" > tests/browser/node_modules/.peersync-stamp
fi
