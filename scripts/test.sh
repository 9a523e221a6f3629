#!/usr/bin/env bash
# Every test: lint, types, unit tests, browser tests (headless chromium), and the integration tests against a
# real FHIR server (sekmet, started by the tests) and PostgreSQL.
#   scripts/test.sh [pytest args...]
# PostgreSQL: PEERSYNC_TEST_DATABASE_URL (default: the local server on
# 127.0.0.1:5432, started here if it is down).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export PEERSYNC_TEST_DATABASE_URL=${PEERSYNC_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
pg_up() { .venv/bin/python - <<'PY'
import os, sys
import psycopg
from sqlalchemy.engine import make_url
u = make_url(os.environ["PEERSYNC_TEST_DATABASE_URL"])
try:
    psycopg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                    password=u.password, dbname=u.database or "postgres", connect_timeout=3).close()
except Exception as exc:
    print(f"PostgreSQL not reachable: {type(exc).__name__}", file=sys.stderr)
    sys.exit(1)
PY
}
if ! pg_up 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL ..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_up 2>/dev/null && break; sleep 1; done
  fi
  pg_up || { echo "PostgreSQL is unreachable at PEERSYNC_TEST_DATABASE_URL; the store tests need it" >&2; exit 1; }
fi

# Browser tests drive Debian's chromium headless (never `playwright install`).
if [ ! -x /usr/bin/chromium ] && [ -z "${PEERSYNC_SKIP_BROWSER:-}" ]; then
  echo "installing chromium for the browser tests ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || true
  [ -x /usr/bin/chromium ] || { echo "chromium could not be installed (set PEERSYNC_SKIP_BROWSER=1 to skip the browser tests)" >&2; exit 1; }
fi

# axe-core (npm; pinned in tests/browser/package-lock.json) for the accessibility browser tests.
if [ -z "${PEERSYNC_SKIP_BROWSER:-}" ] && [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
  command -v npm >/dev/null || { echo "npm is needed for axe-core (the accessibility tests): install Node.js, or set PEERSYNC_SKIP_BROWSER=1" >&2; exit 1; }
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pip-audit (requirements.lock)"
bash scripts/audit.sh
echo "== pytest"
.venv/bin/pytest "$@"
