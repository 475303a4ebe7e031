#!/usr/bin/env bash
# P11: `proxy-cache` hits beside ../shared/peerbench's nginx-cache (nginx's proxy_cache, every
# answer kept 60 s): req/s and CPU per request through peerbench's own table (`gw-cache` vs
# `nginx-cache`), both serving one URL from memory after its first request, on the same
# upstream, with the same wrk.
#
#   benches/load/p11-cache.sh          # needs target/release/data-plane and target/debug/control-plane
#
# DURATION / WARMUP / ROUNDS / CONNECTIONS as in peerbench. Stops what it starts, by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERBENCH=${PEERBENCH:-../shared/peerbench/run.sh}
DP=${DP_BIN:-target/release/data-plane}
CP=${CP_BIN:-target/debug/control-plane}
DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} ROUNDS=${ROUNDS:-3} CONNECTIONS=${CONNECTIONS:-32}
export DURATION WARMUP ROUNDS CONNECTIONS

work=$(mktemp -d)
token=p11-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

value() { # file key: the key=value line's value, waiting for it
  for _ in $(seq 100); do
    local v; v=$(sed -n "s/^$2=//p" "$1" | head -1)
    [ -n "$v" ] && { echo "$v"; return; }
    sleep 0.1
  done
  echo "no $2= in $1" >&2; exit 1
}

"$CP" --database-url "sqlite://$work/cp.db?mode=rwc" --admin-token "$token" \
  --admin-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 > "$work/cp.out" 2> "$work/cp.log" &
pids+=($!)
admin=$(value "$work/cp.out" admin_url)
xds=$(value "$work/cp.out" xds_url)
taskset -c 0 "$DP" --worker-threads 1 --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 \
  --control-plane "$xds" --node-id p11 > "$work/dp.out" 2> "$work/dp.log" &
dp_pid=$!
pids+=($dp_pid)
proxy=$(value "$work/dp.out" proxy_url)
status=$(value "$work/dp.out" status_url)

api() { curl -sf -X "$1" "$admin$2" -H "Authorization: Bearer $token" -H 'content-type: application/json' --data-binary @- > /dev/null; }
echo '{"nodes": [{"host": "127.0.0.1", "port": 18081}]}' | api PUT /api/v1/upstreams/catalog
# nginx-cache keeps every answer 60 s whatever its headers; so does this route.
echo '{"paths": ["/cached/catalog"], "methods": ["GET"], "upstream_id": "catalog",
  "plugins": {"proxy-cache": {"cache_ttl": 60}}}' | api PUT /api/v1/routes/cached
for _ in $(seq 100); do curl -sf "$status/readyz" > /dev/null && break; sleep 0.1; done

RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/peerbench-p11-XXXX)} TARGETS=nginx-cache,gw-cache GATEWAY_PID=$dp_pid \
  GATEWAY_TARGETS="cache=$proxy/cached/catalog?item=14286" "$PEERBENCH"
# Every measured request but the first of each key was a hit: the gateway says so itself.
curl -sf "$status/metrics" | grep '^gateway_proxy_cache_' || true
