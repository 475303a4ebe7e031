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
DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} ROUNDS=${ROUNDS:-3} CONNECTIONS=${CONNECTIONS:-32}
export DURATION WARMUP ROUNDS CONNECTIONS

source benches/load/lib.sh p11
start_gateway
proxy=$(value "$work/dp.out" proxy_url)
status=$(value "$work/dp.out" status_url)

echo '{"nodes": [{"host": "127.0.0.1", "port": 18081}]}' | api PUT /api/v1/upstreams/catalog
# nginx-cache keeps every answer 60 s whatever its headers; so does this route.
echo '{"paths": ["/cached/catalog"], "methods": ["GET"], "upstream_id": "catalog",
  "plugins": {"proxy-cache": {"cache_ttl": 60}}}' | api PUT /api/v1/routes/cached
for _ in $(seq 100); do curl -sf "$status/readyz" > /dev/null && break; sleep 0.1; done

RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/peerbench-p11-XXXX)} TARGETS=nginx-cache,gw-cache GATEWAY_PID=$dp_pid \
  GATEWAY_TARGETS="cache=$proxy/cached/catalog?item=14286" "$PEERBENCH"
# Every measured request but the first of each key was a hit: the gateway says so itself.
curl -sf "$status/metrics" | grep '^gateway_proxy_cache_' || true
