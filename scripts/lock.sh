#!/usr/bin/env bash
# Regenerate the hash locks:
#  - requirements.lock: every package `pip install -e ".[test]"` would
# install today (pyproject.toml's dependencies, the `test` extra and the build
# backend, since bootstrap installs the project without build isolation),
# pinned, each with the sha256 of every file PyPI has for that version;
#  - requirements-audit.lock: pip-audit and its dependencies, for the audit
#    venv (.venv-audit) that scripts/audit.sh runs against requirements.lock.
# Target: CPython 3.11 on Linux x86_64. Resolved against PyPI only (no pip.conf
# extra indexes), by a pinned uv in a throwaway venv. Unattended.
#   scripts/lock.sh [EXTRA_REQUIREMENT ...]   e.g. scripts/lock.sh 'hypothesis>=6'
# Extra requirements are locked too (for a dependency not yet in pyproject.toml).
# Then: scripts/bootstrap.sh installs requirements.lock; scripts/test.sh runs
# scripts/audit.sh. Commit both lock files.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
test -x "$tmp/venv/bin/uv"

# Inputs: pyproject.toml (dependencies + the test extra), its build-system
# requirements, and any extra requirements given on the command line.
"$tmp/venv/bin/python" - >"$tmp/extra.in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    for req in tomllib.load(f)["build-system"]["requires"]:
        print(req)
PY
for req in "$@"; do printf '%s\n' "$req" >>"$tmp/extra.in"; done

compile() {  # compile OUT INPUT... : resolve INPUTs for CPython 3.11 / Linux x86_64 against PyPI
  local out=$1; shift
  UV_NO_CONFIG=1 "$tmp/venv/bin/uv" pip compile --quiet --no-config \
    --default-index https://pypi.org/simple \
    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
    --generate-hashes --no-emit-package peersync \
    --custom-compile-command "scripts/lock.sh" \
    "$@" -o "$tmp/$out"
  # uv names the temporary inputs in its annotations; name them for what they are.
  sed -e "s#$tmp/extra.in#build-system.requires / scripts/lock.sh arguments#" \
      -e "s#$tmp/audit.in#scripts/lock.sh#" "$tmp/$out" >"$out"
  echo "wrote $out ($(grep -c '^[A-Za-z0-9]' "$out") packages)"
}

compile requirements.lock pyproject.toml --extra test "$tmp/extra.in"
echo "pip-audit" >"$tmp/audit.in"
compile requirements-audit.lock "$tmp/audit.in"
