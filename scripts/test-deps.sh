#!/usr/bin/env bash
# Installs what the tests need when it is missing, from Debian's packages: PostgreSQL's server programs (the
# tests start throwaway servers of their own: initdb in a temporary directory, run as the `postgres` user when we
# are root), and promtool (the `prometheus` package) for the alert rules' tests. Nothing is installed when it is there already. `.ci/run` and `scripts/test.sh` call it.
set -euo pipefail

have_postgres() {
  [ -n "${MARKETFLOW_PG_BIN:-}" ] && [ -x "${MARKETFLOW_PG_BIN}/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "the tests need Debian's packages: $* (install them, or set MARKETFLOW_PG_BIN)" >&2
    exit 1
  fi
}

if ! have_postgres; then
  echo "installing PostgreSQL (Debian's postgresql package) for the tests" >&2
  install postgresql
fi
have_postgres || { echo "PostgreSQL's initdb is still missing after installing it" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian's prometheus package) for the alert rules' tests" >&2
  install prometheus
  # Only promtool is wanted: a server the package may have started would hold :9090, the local marketplace's
  # default port.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true; fi
  pkill -x prometheus 2>/dev/null || true
  pkill -x prometheus-node-exporter 2>/dev/null || true
fi
command -v promtool >/dev/null 2>&1 || { echo "promtool is still missing after installing prometheus" >&2; exit 1; }
