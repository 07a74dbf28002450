#!/usr/bin/env bash
# Schemathesis against /openapi.json of the release binary: no 5xx, and every status, content type and body as
# the description says (checks not_a_server_error, status_code_conformance, content_type_conformance,
# response_schema_conformance).
#
# Starts `marketflow serve --dev` (operator token `dev-operator-token`) on free ports with a temporary data dir and
# a fast clock, seeds it (seed.py), then runs schemathesis four times:
#   1. every operation with the operator token (everything else answers 401/403 as described);
#   2. the operators' routes with path parameters pinned to the seeded entities (seeded.toml);
#   3. the buyer's JSON API with the seeded user's session token, path parameters pinned likewise;
#   4. the usage API with the service token.
#
#   cargo build --release && tests/schemathesis/run.sh
# Environment: MARKETFLOW_BIN (default target/release/marketflow), SCHEMATHESIS_VENV (default .venv-schemathesis),
# SCHEMATHESIS_MAX_EXAMPLES (default 100 per operation and phase), SCHEMATHESIS_SEED (a fixed seed reproduces a run),
# SCHEMATHESIS_SERVICE_LOG (keep the service's log there; RUST_LOG=info logs every request with its status).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

bin=${MARKETFLOW_BIN:-target/release/marketflow}
venv=${SCHEMATHESIS_VENV:-.venv-schemathesis}
examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
[ -x "$bin" ] || { echo "no marketflow binary at $bin: run cargo build --release or set MARKETFLOW_BIN" >&2; exit 1; }

if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r tests/schemathesis/requirements.txt

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
sim_port=$(free_port)
url="http://127.0.0.1:$port"
sim_url="http://127.0.0.1:$sim_port"

MARKETFLOW_LISTEN="127.0.0.1:$port" MARKETFLOW_PUBLIC_URL="$url" MARKETFLOW_SIMULATOR_LISTEN="127.0.0.1:$sim_port" \
  MARKETFLOW_DATA_DIR="$work/data" MARKETFLOW_TIME_SCALE=600 MARKETFLOW_SSO_WINDOW=24h RUST_LOG=${RUST_LOG:-warn} \
  "$bin" serve --dev >"$work/service.log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ -n "${SCHEMATHESIS_SERVICE_LOG:-}" ]; then cp "$work/service.log" "$SCHEMATHESIS_SERVICE_LOG"; fi
  rm -rf "$work"
}
trap stop EXIT

up() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null; }
for _ in $(seq 300); do
  if up "$url/healthz" && up "$sim_url/healthz"; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$work/service.log" >&2; echo "marketflow exited" >&2; exit 1; }
  sleep 0.1
done
up "$url/healthz" || { cat "$work/service.log" >&2; echo "marketflow did not start in 30 s" >&2; exit 1; }

eval "$(python3 tests/schemathesis/seed.py "$url" "$sim_url")"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
common=(--checks "$checks" --max-examples "$examples" --no-color --request-timeout 10
        --suppress-health-check too_slow,filter_too_much --warnings off)
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then common+=(--seed "$SCHEMATHESIS_SEED"); fi
st="$venv/bin/schemathesis"
seeded=(--config-file "$repo/tests/schemathesis/seeded.toml")
failed=0
run() {
  local name=$1
  shift
  echo "== schemathesis: $name"
  if ! "$st" "$@"; then
    failed=$((failed + 1))
    echo "== schemathesis: $name FAILED" >&2
  fi
}

run "every operation, operator token" \
  run "$url/openapi.json" "${common[@]}" -H "Authorization: Bearer dev-operator-token"
run "operators' routes on the seeded entities" \
  "${seeded[@]}" run "$url/openapi.json" "${common[@]}" -H "Authorization: Bearer dev-operator-token" \
  --include-path-regex '^/api/v1/ops/(entities/\{kind\}|orgs/\{org_id\})'
run "buyer's API, seeded user's session" \
  "${seeded[@]}" run "$url/openapi.json" "${common[@]}" -H "Authorization: Bearer $MF_SESSION_TOKEN" \
  --include-tag accounts --include-tag subscriptions --exclude-path /api/v1/sessions/current
run "usage API, service token" \
  run "$url/openapi.json" "${common[@]}" -H "Authorization: Bearer dev-service-token" --include-path /api/v1/usage

if grep -q "panicked" "$work/service.log"; then
  echo "the service panicked during the run:" >&2
  grep -B2 -A10 "panicked" "$work/service.log" >&2
  failed=$((failed + 1))
fi
if [ "$failed" -ne 0 ]; then
  echo "schemathesis: $failed run(s) failed; the service's log:" >&2
  tail -50 "$work/service.log" >&2
  exit 1
fi
echo "schemathesis: 4 runs passed"
