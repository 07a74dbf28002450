#!/usr/bin/env bash
# A local cluster with one command: a throwaway PostgreSQL (initdb in a temporary directory, run as the `postgres`
# user when we are root), the local marketplace (simulator), and three marketflow nodes on loopback sharing the
# database, each a `serve --dev` (development secrets). Prints the URLs, then waits; Ctrl-C or SIGTERM stops
# everything and removes the directory.
#
#   scripts/cluster.sh                  # nodes on 8081, 8082, 8083; the simulator on 9090
#
# Env: MARKETFLOW_BIN (default target/release/marketflow, built if missing), CLUSTER_NODES (3),
# CLUSTER_BASE_PORT (8081), CLUSTER_SIM_PORT (9090), CLUSTER_PG_PORT (a free one), MARKETFLOW_LEASE (10s).
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${CLUSTER_NODES:-3}
base=${CLUSTER_BASE_PORT:-8081}
sim_port=${CLUSTER_SIM_PORT:-9090}
bin=${MARKETFLOW_BIN:-target/release/marketflow}
if [ ! -x "$bin" ]; then
  echo "building $bin (cargo build --release)" >&2
  cargo build --release >&2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

pgbin=${MARKETFLOW_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
  echo "PostgreSQL's server programs are missing: run scripts/test-deps.sh (Debian: apt-get install postgresql)" >&2
  exit 1
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=${CLUSTER_PG_PORT:-$(free_port)}

dir=$(mktemp -d /tmp/marketflow-cluster-XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$dir"
  as_pg=(runuser -u postgres --)
fi
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  echo "cluster stopped" >&2
  exit 0
}
trap cleanup INT TERM EXIT

"${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w \
  -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1 -c synchronous_commit=on" start >/dev/null
"${as_pg[@]}" "$pgbin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE marketflow" postgres
db="postgres://postgres@127.0.0.1:$pg_port/marketflow"

export MARKETFLOW_ALIYUN_ISV_KEY=dev-isv-key MARKETFLOW_ALIYUN_ACCESS_KEY_ID=dev-access-key-id \
  MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET=dev-access-key-secret
MARKETFLOW_SIMULATOR_LISTEN=127.0.0.1:$sim_port MARKETFLOW_SIMULATOR_SERVICE_URL=http://127.0.0.1:$base \
  "$bin" simulate >"$dir/simulator.log" 2>&1 &
pids+=($!)
for i in $(seq 1 "$nodes"); do
  port=$((base + i - 1))
  MARKETFLOW_DATABASE_URL=$db MARKETFLOW_NODE_ID=node$i MARKETFLOW_LISTEN=127.0.0.1:$port \
    MARKETFLOW_PUBLIC_URL=http://127.0.0.1:$port MARKETFLOW_ALIYUN_ENDPOINT=http://127.0.0.1:$sim_port \
    MARKETFLOW_DATA_DIR="$dir/data-$i" "$bin" serve --dev >"$dir/node$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$nodes"); do
  port=$((base + i - 1))
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
      break
    fi
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "node$i stopped while starting:" >&2; tail -20 "$dir/node$i.log" >&2; exit 1
    fi
    sleep 0.1
  done
done

echo "marketflow cluster: $nodes nodes on one PostgreSQL ($db), logs in $dir"
for i in $(seq 1 "$nodes"); do
  echo "  node$i      http://127.0.0.1:$((base + i - 1))/  (console: /console, token dev-operator-token)"
done
echo "  simulator  http://127.0.0.1:$sim_port/  (POST /sim/instances opens a subscription; SPI goes to node1)"
echo "  cluster    curl -s -H 'Authorization: Bearer dev-operator-token' http://127.0.0.1:$base/api/v1/ops/cluster"
echo "ready (Ctrl-C stops everything)"
while true; do sleep 1 & wait $! || true; done
