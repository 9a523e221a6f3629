#!/usr/bin/env bash
# The demo: a local EHR (sekmet, in memory), the sample records imported and
# synced, and the admin app served on 127.0.0.1. Ctrl-C stops it all.
#   scripts/demo.sh [--port EHR_PORT] [--web-port WEB_PORT] [--no-serve]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PEERSYNC_HOME=${PEERSYNC_HOME:-$PWD/demo}
exec .venv/bin/peersync demo "$@"
