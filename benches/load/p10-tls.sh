#!/usr/bin/env bash
# P10: the gateway's TLS listener beside ../shared/peerbench's nginx-tls, with the same
# certificate (P-256, made by peerbench for the run): HTTPS keep-alive req/s and CPU per
# request through peerbench's own table (`gw-tls` vs `nginx-tls`), then new TLS handshakes
# per second (wrk with `Connection: close`: one full handshake per request) and CPU per
# handshake of each, measured here the way peerbench measures CPU (user + system ticks of the
# process and its children).
#
#   benches/load/p10-tls.sh            # needs target/release/data-plane and target/debug/control-plane
#
# DURATION / WARMUP / ROUNDS / CONNECTIONS as in peerbench. Stops what it starts, by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERBENCH=${PEERBENCH:-../shared/peerbench/run.sh}
DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} ROUNDS=${ROUNDS:-3} CONNECTIONS=${CONNECTIONS:-32}
TLS_PORT=${TLS_PORT:-19443}
export DURATION WARMUP ROUNDS CONNECTIONS

source benches/load/lib.sh p10
start_gateway --tls-listen "127.0.0.1:$TLS_PORT"
value "$work/dp.out" tls_url > /dev/null

certificate() { # crt key: the default certificate for bench.local
  jq -n --rawfile cert "$1" --rawfile key "$2" '{snis: ["bench.local"], default: true, cert: $cert, key: $key}' |
    api PUT /api/v1/certificates/bench
}
echo '{"nodes": [{"host": "127.0.0.1", "port": 18081}]}' | api PUT /api/v1/upstreams/catalog
echo '{"paths": ["/catalog"], "upstream_id": "catalog"}' | api PUT /api/v1/routes/catalog
# Until peerbench makes its certificate, one of ours answers its check.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=bench.local \
  -keyout "$work/tmp.key" -out "$work/tmp.crt" 2> /dev/null
certificate "$work/tmp.crt" "$work/tmp.key"

# peerbench's run: as soon as it has made the run's certificate, the gateway serves it too.
run_dir=$(mktemp -d /tmp/peerbench-p10-XXXX)
(
  for _ in $(seq 200); do [ -s "$run_dir/tls.key" ] && [ -s "$run_dir/tls.crt" ] && break; sleep 0.05; done
  sleep 0.2
  certificate "$run_dir/tls.crt" "$run_dir/tls.key"
) &
swap=$!
RUN_DIR=$run_dir TARGETS=nginx-tls,gw-tls GATEWAY_PID=$dp_pid \
  GATEWAY_TARGETS="tls=https://127.0.0.1:$TLS_PORT/catalog?item=14286" "$PEERBENCH"
wait "$swap"

# New handshakes per second: every request on a new connection, so a full handshake each.
RUN_DIR=$run_dir "$PEERBENCH" up > /dev/null
certificate "$run_dir/tls.crt" "$run_dir/tls.key"
ticks() { local total=0; for p in "$1" $(pgrep -P "$1" 2> /dev/null); do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$total"; }
hz=$(getconf CLK_TCK)
printf '\nnew TLS handshakes (wrk -H "Connection: close", %s connections, median of %s rounds of %s s)\n' "$CONNECTIONS" "$ROUNDS" "$DURATION"
printf '%-10s %12s %22s\n' target handshakes/s cpu_us_per_handshake
for target in nginx-tls gw-tls; do
  case $target in
    nginx-tls) url="https://127.0.0.1:18184/catalog?item=14286"; pid=$(cat "$run_dir/nginx-edge.pid") ;;
    gw-tls) url="https://127.0.0.1:$TLS_PORT/catalog?item=14286"; pid=$dp_pid ;;
  esac
  rows=()
  for _ in $(seq "$ROUNDS"); do
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H 'Connection: close' "$url" > /dev/null 2>&1 || true
    t0=$(ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H 'Connection: close' "$url" 2>&1)
    t1=$(ticks "$pid")
    reqs=$(awk '/requests in/{print $1}' <<< "$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<< "$out")
    rows+=("$rps $(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN{printf "%.1f", d * 1e6 / hz / n}')")
  done
  median=$(printf '%s\n' "${rows[@]}" | sort -n | sed -n "$(((ROUNDS + 1) / 2))p")
  printf '%-10s %12s %22s\n' "$target" ${median}
done
RUN_DIR=$run_dir "$PEERBENCH" down
