#!/usr/bin/env bash
# The gateway beside its peers in one peerbench run:
#   P1  gw-proxy    a plain proxy route                      vs nginx-proxy (and haproxy)
#   P2  gw-agg      a 3-way batch route merged as an object   vs nginx+lua capture_multi
#   P4  gw-plugins  the proxy route with key-auth + limit-count + prometheus, vs gw-proxy
#
#   benches/load/peers.sh                 build release, start CP + DP, add the routes, run peerbench
#   ROUNDS=1 DURATION=5 benches/load/peers.sh     a short run
#   PROFILE=perf benches/load/peers.sh    instead, record `perf` on the data plane during a gateway-only load
#   PROFILE=strace benches/load/peers.sh  instead, count the data plane's syscalls during such a load
#   PROFILE_TARGET=plugins|agg            profile that route instead of the plain proxy one
#   PROFILE=callgrind benches/load/peers.sh   instead, count the data plane's instructions per
#                                         proxied request under valgrind (noise-free; needs valgrind)
#   PROFILE=dhat benches/load/peers.sh    instead, heap blocks per request by allocation site (valgrind's
#                                         DHAT, read by benches/load/dhat-by-site.py)
#   PROFILE=churn benches/load/peers.sh   instead, P8: the plain route's p99 with and without 20 route
#                                         changes/s on a config of 5,000 more routes (CHURN_RATE,
#                                         CHURN_ROUTES)
#   PROFILE=p13 benches/load/peers.sh     instead, P13: alternate the plain route on data planes with
#                                         tracing (100% sampled, OTLP/gRPC to benches' otlp-sink) and
#                                         the access log both off, each alone, and both on; req/s, CPU
#                                         per request, spans the sink received per request
#   TRACING=1 ACCESS_LOG=1                the main data plane with tracing on (100%, to otlp-sink) and
#                                         the access log on, in any mode (e.g. PROFILE=callgrind)
#   PROFILE=floor benches/load/peers.sh   instead, alternate nginx-proxy, a blind relay (no HTTP) and
#                                         the plain route, with user/kernel time per request and how
#                                         busy each core was: does the proxy or the load set the rate?
#                                         DP_BIN_B=path adds a second data-plane build to the same
#                                         rounds (gw-proxy-b): an A/B that shares nginx's drift
#
# The data plane runs with one worker thread, pinned to cpu 0 like the peers (nginx
# worker_processes 1, haproxy nbthread 1); peerbench puts wrk and the upstreams on cpu 1. Every
# peerbench variable (DURATION, WARMUP, ROUNDS, CONNECTIONS, QUIET_WAIT, TARGETS, ...) passes
# through; DP_BIN runs another data-plane binary (an A/B of two builds). The table lands in $RUN_DIR/table.txt (peerbench prints it too).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEERBENCH=${PEERBENCH:-$ROOT/../shared/peerbench/run.sh}
UP1=${UP1:-18081}
UP2=${UP2:-18082}
UP3=${UP3:-18083}
PROFILE=${PROFILE:-}
TRACING=${TRACING:-0}
ACCESS_LOG=${ACCESS_LOG:-0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gateway-peers.XXXXXX")
TOKEN=peers-bench-token
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

die() { echo "peers: $*" >&2; exit 1; }

# Waits until the data plane whose status listener is $2 (default: the first one) reports
# version $1 or later on /readyz (versions only grow, so the last write's version covers every
# earlier one).
wait_applied() {
  local applied=0
  for _ in $(seq 200); do
    applied=$(curl -sf "${2:-$STATUS}/readyz" | sed -n 's/.*"version":\([0-9]*\).*/\1/p' || true)
    [ "${applied:-0}" -ge "$1" ] && return 0
    sleep 0.05
  done
  die "the data plane did not apply version $1"
}

# Waits until process output file $1 has a `$2=` line and prints its value.
value_of() {
  for _ in $(seq 200); do
    if grep -q "^$2=" "$1" 2>/dev/null; then grep "^$2=" "$1" | head -n 1 | cut -d= -f2-; return 0; fi
    sleep 0.05
  done
  die "no $2= line in $1"
}

# BUILD=0 uses the binaries as they are (benches/load/all.sh builds once for all its steps).
BUILD=${BUILD:-1}
if [ "$BUILD" = 1 ]; then
  echo "peers: building release binaries" >&2
  (cd "$ROOT" && cargo build --release -q -p control-plane -p data-plane --bins)
fi
BIN=$ROOT/target/release

# The local OTLP collector the P13 measurements export to (benches/src/bin/otlp-sink.rs), on
# cpu 1 beside wrk and the upstreams. Sets OTLP_URL.
start_sink() {
  [ "$BUILD" = 0 ] || (cd "$ROOT" && cargo build --release -q -p gateway-benches --bin otlp-sink)
  taskset -c 1 "$BIN/otlp-sink" 127.0.0.1:0 >"$WORK/sink.out" 2>"$WORK/sink.log" &
  pids+=($!)
  OTLP_URL=$(value_of "$WORK/sink.out" otlp_url)
}
# Spans the sink has received so far.
sink_spans() { curl -sf "$OTLP_URL/counts" | sed -n 's/.*spans=\([0-9]*\).*/\1/p'; }

"$BIN/control-plane" --admin-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 \
  --database-url "sqlite://$WORK/gateway.db?mode=rwc" --admin-token "$TOKEN" \
  >"$WORK/cp.out" 2>"$WORK/cp.log" &
CP_PID=$!
pids+=("$CP_PID")
ADMIN=$(value_of "$WORK/cp.out" admin_url)
XDS=$(value_of "$WORK/cp.out" xds_url)

wrap=()
# Flags every data plane started below gets beside the usual ones (start_data_plane reads it).
dp_args=()
if [ "$TRACING" = 1 ]; then
  start_sink
  wrap+=(env "OTEL_EXPORTER_OTLP_ENDPOINT=$OTLP_URL" OTEL_TRACES_SAMPLER_ARG=1)
fi
[ "$ACCESS_LOG" = 1 ] && dp_args+=(--access-log "$WORK/access.log")
if [ "$PROFILE" = callgrind ]; then
  # Counting starts with `callgrind_control -z` after the warm-up, so start-up is not counted.
  # CALLGRIND_ARGS adds options, e.g. --separate-callers=3 to see who calls memcpy.
  # shellcheck disable=SC2206
  # Names written in full in every dump (compressed, a dump after `-z` names only what is new
  # since the last, and callgrind_annotate puts everything under main): read the dump with
  # benches/load/callgrind-by-file.py, as fat LTO inlines the request path into a few symbols.
  wrap+=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" --dump-instr=no
    --compress-strings=no --compress-pos=no ${CALLGRIND_ARGS:-})
fi
if [ "$PROFILE" = dhat ]; then
  wrap+=(valgrind --tool=dhat --dhat-out-file="$WORK/dhat.json")
fi
# Starts data-plane binary $2 as node $1 on cpu 0, output in $WORK/$1.out and .log; any further
# arguments wrap it (valgrind). Sets STARTED_PID, STARTED_PROXY and STARTED_STATUS.
start_data_plane() {
  local name=$1 bin=$2
  shift 2
  RUST_LOG=${RUST_LOG:-warn} taskset -c 0 "$@" "$bin" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 \
    --control-plane "$XDS" --node-id "peers-$name" --worker-threads 1 "${dp_args[@]}" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  STARTED_PID=$!
  pids+=("$STARTED_PID")
  STARTED_PROXY=$(value_of "$WORK/$name.out" proxy_url)
  STARTED_STATUS=$(value_of "$WORK/$name.out" status_url)
}
start_data_plane dp "${DP_BIN:-$BIN/data-plane}" "${wrap[@]}"
DP_PID=$STARTED_PID PROXY=$STARTED_PROXY STATUS=$STARTED_STATUS
dp_args=()
if [ -n "${DP_BIN_B:-}" ]; then
  [ "$PROFILE" = floor ] || die "DP_BIN_B is read by PROFILE=floor only"
  start_data_plane dp-b "$DP_BIN_B"
  DP_B_PID=$STARTED_PID PROXY_B=$STARTED_PROXY STATUS_B=$STARTED_STATUS
fi

auth=(-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json')
curl -sf -X PUT "$ADMIN/api/v1/upstreams/catalog" "${auth[@]}" \
  -d "{\"nodes\": [{\"host\": \"127.0.0.1\", \"port\": $UP1}], \"keepalive_pool\": {\"size\": 320}}" >/dev/null \
  || die "creating the upstream failed"
version=$(curl -sf -D - -o /dev/null -X PUT "$ADMIN/api/v1/routes/catalog" "${auth[@]}" \
  -d '{"paths": ["/catalog"], "methods": ["GET"], "upstream_id": "catalog"}' \
  | tr -d '\r' | awk -F': ' 'tolower($1)=="x-config-version"{print $2}')
[ -n "$version" ] || die "creating the route failed"

# P2: the three peerbench services under one path, merged as an object (nginx-lua-agg's shape).
for service in inventory:$UP2 review:$UP3; do
  curl -sf -X PUT "$ADMIN/api/v1/upstreams/${service%%:*}" "${auth[@]}" \
    -d "{\"nodes\": [{\"host\": \"127.0.0.1\", \"port\": ${service##*:}}], \"keepalive_pool\": {\"size\": 320}}" >/dev/null \
    || die "creating upstream ${service%%:*} failed"
done
curl -sf -X PUT "$ADMIN/api/v1/routes/agg" "${auth[@]}" -d '{"paths": ["/agg/product/:item"], "methods": ["GET"],
  "batch": {"merge": "object", "requests": [
    {"name": "catalog", "upstream_id": "catalog", "path": "/catalog?item={param.item}"},
    {"name": "inventory", "upstream_id": "inventory", "path": "/inventory?item={param.item}"},
    {"name": "review", "upstream_id": "review", "path": "/review?item={param.item}"}]}}' >/dev/null \
  || die "creating the aggregation route failed"
# P4: the same proxy route with key-auth + limit-count (a limit never reached) + prometheus.
curl -sf -X PUT "$ADMIN/api/v1/consumers/bench" "${auth[@]}" \
  -d '{"credentials": {"key-auth": {"key": "bench-key-0123456789"}}}' >/dev/null || die "creating the consumer failed"
version=$(curl -sf -D - -o /dev/null -X PUT "$ADMIN/api/v1/routes/plugins" "${auth[@]}" \
  -d '{"paths": ["/plugins/catalog"], "methods": ["GET"], "upstream_id": "catalog", "plugins": {
    "key-auth": {}, "prometheus": {},
    "limit-count": {"count": 1000000000, "time_window": 60, "key": "consumer", "rejected_code": 429}}}' \
  | tr -d '\r' | awk -F': ' 'tolower($1)=="x-config-version"{print $2}')
[ -n "$version" ] || die "creating the plugin route failed"
wait_applied "$version"
[ -z "${DP_BIN_B:-}" ] || wait_applied "$version" "$STATUS_B"
AGG_URL="$PROXY/agg/product/14286"
PLUGINS_URL="$PROXY/plugins/catalog?item=14286&apikey=bench-key-0123456789"
# peerbench starts the upstreams, then checks that every target answers 200.

URL="$PROXY/catalog?item=14286"
# The PROFILE modes load one route: PROFILE_TARGET=proxy (default), agg or plugins.
case "${PROFILE_TARGET:-proxy}" in
  agg) PROFILE_URL=$AGG_URL ;;
  plugins) PROFILE_URL=$PLUGINS_URL ;;
  *) PROFILE_URL=$URL ;;
esac
echo "peers: gateway at $URL (data plane pid $DP_PID, logs in $WORK)" >&2

if [ "$PROFILE" = strace ]; then
  # Syscalls per request: a gateway-only load with strace counting (slows the proxy down; only
  # the counts mean anything).
  "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${DURATION:-5}"s "$PROFILE_URL" >"$WORK/wrk-strace.txt" &
  wrk_pid=$!
  timeout -s INT "${DURATION:-5}" strace -c -f -p "$DP_PID" -o "$WORK/strace.txt" || true
  wait "$wrk_pid" || true
  cat "$WORK/wrk-strace.txt" "$WORK/strace.txt"
  exit 0
fi

if [ "$PROFILE" = callgrind ]; then
  # Instructions per request, every thread of the data plane counted: a warm-up, counters
  # zeroed, a measured load, one dump. Valgrind runs the proxy ~50x slower; the count is exact.
  "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  taskset -c 1 wrk -t1 -c8 -d3s "$PROFILE_URL" >/dev/null
  callgrind_control -z "$DP_PID" >/dev/null
  taskset -c 1 wrk -t1 -c8 -d"${DURATION:-10}"s "$PROFILE_URL" >"$WORK/wrk-callgrind.txt"
  callgrind_control -d "$DP_PID" >/dev/null
  requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-callgrind.txt")
  instructions=$(cat "$WORK"/callgrind.out.* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s}')
  [ -n "$requests" ] && [ "${instructions:-0}" -gt 0 ] || die "no callgrind dump or no wrk count"
  echo "peers: $requests requests, $instructions instructions, $((instructions / requests)) per request"
  echo "peers: dump in $WORK (benches/load/callgrind-by-file.py $WORK/callgrind.out.1 $requests)" >&2
  exit 0
fi

if [ "$PROFILE" = dhat ]; then
  # DHAT writes its profile when the process ends: one load, then the data plane stopped.
  # Start-up's allocations are in it too; dhat-by-site.py leaves out sites below 0.5 per request.
  "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  taskset -c 1 wrk -t1 -c8 -d"${DURATION:-10}"s "$PROFILE_URL" >"$WORK/wrk-dhat.txt"
  kill "$DP_PID"
  wait "$DP_PID" || true
  requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-dhat.txt")
  [ -n "$requests" ] && [ -s "$WORK/dhat.json" ] || die "no DHAT profile or no wrk count"
  python3 "$ROOT/benches/load/dhat-by-site.py" "$WORK/dhat.json" "$requests"
  exit 0
fi

if [ "$PROFILE" = floor ]; then
  # Who sets the rate: the proxy's core, or wrk's and the upstream's? Alternating rounds of
  # nginx-proxy, a blind relay (no HTTP: the least work a tokio proxy can do, see
  # benches/src/bin/blind-relay.rs) and the gateway's plain route, each with the proxy's user
  # and kernel time per request (/proc/PID/stat) and how busy each core was (/proc/stat). If
  # the relay, with its core partly idle, gets no more req/s than nginx, no proxy can: the
  # CPU criterion of P1 applies, and the relay's CPU is the floor it can be met against.
  [ "$BUILD" = 0 ] || (cd "$ROOT" && cargo build --release -q -p gateway-benches --bin blind-relay)
  PEERS_DIR=$WORK/peerbench
  RUN_DIR=$PEERS_DIR "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  taskset -c 0 "$BIN/blind-relay" 127.0.0.1:0 "127.0.0.1:$UP1" >"$WORK/relay.out" 2>"$WORK/relay.log" &
  RELAY_PID=$!
  pids+=("$RELAY_PID")
  RELAY_URL="$(value_of "$WORK/relay.out" relay_url)/catalog?item=14286"
  NGINX_PID=$(pgrep -P "$(cat "$PEERS_DIR/nginx-proxy.pid")" | head -n 1)
  [ -n "$NGINX_PID" ] || die "no nginx-proxy worker"
  ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
  busy() { grep -E '^cpu[01] ' /proc/stat | awk '{print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' | tr '\n' ' '; }
  printf 'round\tname\treq_s\tp99\tuser_ticks\tsys_ticks\trequests\tcpu_before\tcpu_after\n' >"$WORK/floor.tsv"
  targets=("nginx-proxy $NGINX_PID http://127.0.0.1:18181/catalog?item=14286"
    "blind-relay $RELAY_PID $RELAY_URL" "gw-proxy $DP_PID $URL")
  [ -z "${DP_BIN_B:-}" ] || targets+=("gw-proxy-b $DP_B_PID $PROXY_B/catalog?item=14286")
  for round in $(seq "${ROUNDS:-3}"); do
    for target in "${targets[@]}"; do
      read -r name pid url <<<"$target"
      taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${WARMUP:-2}"s "$url" >/dev/null
      before=$(ticks "$pid"); cores_before=$(busy)
      out=$(taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${DURATION:-6}"s --latency "$url")
      after=$(ticks "$pid"); cores_after=$(busy)
      read -r u0 s0 <<<"$before"; read -r u1 s1 <<<"$after"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" \
        "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
        $((u1 - u0)) $((s1 - s0)) "$(awk '/requests in/ {print $1}' <<<"$out")" \
        "$cores_before" "$cores_after" >>"$WORK/floor.tsv"
      echo "peers: round $round $name done" >&2
    done
  done
  python3 - "$WORK/floor.tsv" "$(getconf CLK_TCK)" <<'PY' | tee "$WORK/floor.txt"
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz = float(sys.argv[2])
def busy(row, core):
    before, after = row["cpu_before"].split(), row["cpu_after"].split()
    b, t = (float(after[2 * core + i]) - float(before[2 * core + i]) for i in (0, 1))
    return 100 * b / t if t else 0.0
by = {}
for r in rows:
    n = float(r["requests"])
    by.setdefault(r["name"], []).append({
        "rps": float(r["req_s"]), "p99": r["p99"],
        "user": float(r["user_ticks"]) * 1e6 / hz / n, "sys": float(r["sys_ticks"]) * 1e6 / hz / n,
        "cpu0": busy(r, 0), "cpu1": busy(r, 1)})
med = lambda name, key: st.median(x[key] for x in by[name])
print(f"{'target':<13}{'req/s':>9}{'user us':>9}{'sys us':>8}{'CPU us':>8}{'cpu0 %':>8}{'cpu1 %':>8}  {'vs nginx':>9}{'CPU vs nginx':>13}")
base_rps, base_cpu = med("nginx-proxy", "rps"), med("nginx-proxy", "user") + med("nginx-proxy", "sys")
for name in by:
    cpu = med(name, "user") + med(name, "sys")
    print(f"{name:<13}{med(name, 'rps'):>9.0f}{med(name, 'user'):>9.2f}{med(name, 'sys'):>8.2f}{cpu:>8.2f}"
          f"{med(name, 'cpu0'):>8.1f}{med(name, 'cpu1'):>8.1f}  {med(name, 'rps') / base_rps:>8.2f}x{cpu / base_cpu:>12.2f}x")
print("(medians of rounds; cpu0 runs the proxy, cpu1 wrk and the upstream; user/sys: the proxy's own time per request)")
PY
  exit 0
fi

if [ "$PROFILE" = p13 ]; then
  # P13: what tracing and the access log cost the plain route. Four data planes from one build,
  # each pinned to cpu 0 and loaded in turn (alternating rounds, like PROFILE=floor, so drift
  # hits all alike): both off (the main one), the access log alone, tracing alone (every request
  # sampled, exported over OTLP/gRPC to otlp-sink on cpu 1), both on. Per target: req/s, the
  # data plane's user and kernel time per request (every thread: exporter and log writer too),
  # and for the traced ones the spans the sink received per request (2 expected: server +
  # client). Target: both on >= 0.85x the req/s of both off.
  [ "$TRACING" = 0 ] && [ "$ACCESS_LOG" = 0 ] || die "PROFILE=p13 starts its own traced data planes"
  start_sink
  traced=(env "OTEL_EXPORTER_OTLP_ENDPOINT=$OTLP_URL" OTEL_TRACES_SAMPLER_ARG=1)
  dp_args=(--access-log "$WORK/access-log-only.log")
  start_data_plane dp-log "${DP_BIN:-$BIN/data-plane}"
  LOG_PID=$STARTED_PID LOG_PROXY=$STARTED_PROXY LOG_STATUS=$STARTED_STATUS
  dp_args=()
  start_data_plane dp-trace "${DP_BIN:-$BIN/data-plane}" "${traced[@]}"
  TRACE_PID=$STARTED_PID TRACE_PROXY=$STARTED_PROXY TRACE_STATUS=$STARTED_STATUS
  dp_args=(--access-log "$WORK/access-both.log")
  start_data_plane dp-on "${DP_BIN:-$BIN/data-plane}" "${traced[@]}"
  ON_PID=$STARTED_PID ON_PROXY=$STARTED_PROXY ON_STATUS=$STARTED_STATUS
  dp_args=()
  for status in "$LOG_STATUS" "$TRACE_STATUS" "$ON_STATUS"; do wait_applied "$version" "$status"; done
  "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  path="/catalog?item=14286"
  targets=("off $DP_PID $PROXY$path" "log $LOG_PID $LOG_PROXY$path" "trace $TRACE_PID $TRACE_PROXY$path"
    "both $ON_PID $ON_PROXY$path")
  ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
  printf 'round\tname\treq_s\tp99\tuser_ticks\tsys_ticks\trequests\tspans\n' >"$WORK/p13.tsv"
  for round in $(seq "${ROUNDS:-3}"); do
    for target in "${targets[@]}"; do
      read -r name pid url <<<"$target"
      taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${WARMUP:-2}"s "$url" >/dev/null
      sleep 0.3 # the warm-up's last spans exported (the batch processor's 512-span batches)
      before=$(ticks "$pid") spans_before=$(sink_spans)
      out=$(taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${DURATION:-6}"s --latency "$url")
      after=$(ticks "$pid")
      # Every span of the round on its way: the queue's last partial batch leaves within the
      # batch processor's delay (5 s) at most; count what arrived after a pause.
      sleep 0.5
      spans=$(( $(sink_spans) - spans_before ))
      read -r u0 s0 <<<"$before"; read -r u1 s1 <<<"$after"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" \
        "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
        $((u1 - u0)) $((s1 - s0)) "$(awk '/requests in/ {print $1}' <<<"$out")" "$spans" >>"$WORK/p13.tsv"
      if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then echo "peers: errors on $name: $out" >&2; fi
      echo "peers: round $round $name done" >&2
    done
  done
  python3 - "$WORK/p13.tsv" "$(getconf CLK_TCK)" <<'PY' | tee "$WORK/p13.txt"
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz = float(sys.argv[2])
by = {}
for r in rows:
    n = float(r["requests"])
    by.setdefault(r["name"], []).append({
        "rps": float(r["req_s"]), "p99": r["p99"], "spans": float(r["spans"]) / n,
        "user": float(r["user_ticks"]) * 1e6 / hz / n, "sys": float(r["sys_ticks"]) * 1e6 / hz / n})
med = lambda name, key: st.median(x[key] for x in by[name])
print(f"{'target':<8}{'req/s':>9}{'vs off':>8}{'user us':>9}{'sys us':>8}{'CPU us':>8}{'spans/req':>11}  p99 by round")
for name in by:
    print(f"{name:<8}{med(name, 'rps'):>9.0f}{med(name, 'rps') / med('off', 'rps'):>7.2f}x{med(name, 'user'):>9.2f}"
          f"{med(name, 'sys'):>8.2f}{med(name, 'user') + med(name, 'sys'):>8.2f}{med(name, 'spans'):>11.2f}  "
          + " ".join(x["p99"] for x in by[name]))
print("(medians of rounds; user/sys: the data plane's own time per request, all its threads; spans counted "
      "by the sink within 0.5 s of each round's end)")
PY
  exit 0
fi

if [ "$PROFILE" = churn ]; then
  # P8: the plain route's p99 while config changes land, against its p99 without them. The
  # config grows by CHURN_ROUTES routes (default 5000); then alternating rounds of a quiet load
  # and a load during which CHURN_RATE (default 20) writes per second each move one of those
  # routes to a new path. The control plane and the writer share cpu 1 with wrk; the data
  # plane (its compile thread included) has cpu 0 alone. A third mode, sham, sends the same
  # writes to a second control plane with the same config and no data plane: what the writes
  # cost the load generator's core, so that churn minus sham is what the data plane pays.
  taskset -a -p -c 1 "$CP_PID" >/dev/null
  taskset -c 1 "$BIN/control-plane" --admin-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 \
    --database-url "sqlite://$WORK/sham.db?mode=rwc" --admin-token "$TOKEN" \
    >"$WORK/sham.out" 2>"$WORK/sham.log" &
  pids+=($!)
  SHAM_ADMIN=$(value_of "$WORK/sham.out" admin_url)
  routes=${CHURN_ROUTES:-5000} rate=${CHURN_RATE:-20}
  curl -sf "$ADMIN/api/v1/config" "${auth[@]}" | python3 -c '
import json, sys
config = json.load(sys.stdin)
config.setdefault("routes", []).extend(
    {"id": f"churn-{i}", "paths": [f"/churn/{i}/items/:id"], "methods": ["GET"], "upstream_id": "catalog"}
    for i in range(int(sys.argv[1])))
json.dump(config, sys.stdout)' "$routes" >"$WORK/churn-config.json"
  version=$(curl -sf -D - -o /dev/null -X PUT "$ADMIN/api/v1/config" "${auth[@]}" --data-binary "@$WORK/churn-config.json" \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="x-config-version"{print $2}')
  [ -n "$version" ] || die "loading $routes routes failed"
  curl -sf -o /dev/null -X PUT "$SHAM_ADMIN/api/v1/config" "${auth[@]}" --data-binary "@$WORK/churn-config.json" \
    || die "loading $routes routes into the sham control plane failed"
  wait_applied "$version"
  "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  # The writer: CHURN_RATE writes per second on a fixed schedule, each to a path not used
  # before (a write that changes nothing makes no version); it stops when its time is up.
  churn() {
    taskset -c 1 python3 - "$1" "$TOKEN" "$routes" "$rate" "$2" "${DURATION:-10}" <<'PY'
import sys, time, urllib.request
admin, token, routes, rate, tag, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], float(sys.argv[6])
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    body = ('{"paths": ["/churn/%s-%d/moved/:id"], "methods": ["GET"], "upstream_id": "catalog"}' % (tag, n)).encode()
    request = urllib.request.Request(f"{admin}/api/v1/routes/churn-{n % routes}", data=body, method="PUT",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request).read()
    except OSError as error:
        print(f"churn write failed: {error}", file=sys.stderr)
    n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
PY
  }
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  printf 'round\tmode\treq_s\tp50\tp99\tversions\tdp_ticks\tcp_ticks\n' >"$WORK/churn.tsv"
  for round in $(seq "${ROUNDS:-3}"); do
    for mode in quiet sham churn; do
      taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${WARMUP:-2}"s "$URL" >/dev/null
      before=$(curl -sf "$STATUS/readyz" | sed -n 's/.*"version":\([0-9]*\).*/\1/p')
      dp_before=$(ticks "$DP_PID") cp_before=$(ticks "$CP_PID")
      churn_pid=
      case $mode in
        churn) churn "$ADMIN" "$round" & churn_pid=$! ;;
        sham) churn "$SHAM_ADMIN" "$round" & churn_pid=$! ;;
      esac
      out=$(taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${DURATION:-10}"s --latency "$URL")
      [ -z "$churn_pid" ] || wait "$churn_pid" || true
      after=$(curl -sf "$STATUS/readyz" | sed -n 's/.*"version":\([0-9]*\).*/\1/p')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(awk '$1 == "50%" {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
        $((after - before)) $(($(ticks "$DP_PID") - dp_before)) $(($(ticks "$CP_PID") - cp_before)) >>"$WORK/churn.tsv"
      echo "peers: round $round $mode done" >&2
    done
  done
  python3 - "$WORK/churn.tsv" "$routes" "$rate" "${DURATION:-10}" "$(getconf CLK_TCK)" <<'PY' | tee "$WORK/churn.txt"
import csv, re, statistics as st, sys
def us(text):
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda mode, key, f=float: st.median(f(r[key]) for r in rows if r["mode"] == mode)
print(f"P8: {sys.argv[2]} extra routes, {sys.argv[3]} writes/s during churn, {sys.argv[4]} s per round")
print(f"{'mode':<7}{'req/s':>9}{'p50 us':>9}{'p99 us':>9}{'versions':>10}{'DP cpu %':>10}{'CP cpu %':>10}")
for mode in ("quiet", "sham", "churn"):
    cpu = lambda key: med(mode, key) / float(sys.argv[5]) / float(sys.argv[4]) * 100
    print(f"{mode:<7}{med(mode, 'req_s'):>9.0f}{med(mode, 'p50', us):>9.0f}{med(mode, 'p99', us):>9.0f}"
          f"{med(mode, 'versions'):>10.0f}{cpu('dp_ticks'):>10.0f}{cpu('cp_ticks'):>10.0f}")
print(f"p99 churn / quiet: {med('churn', 'p99', us) / med('quiet', 'p99', us):.2f}x, churn / sham: "
      f"{med('churn', 'p99', us) / med('sham', 'p99', us):.2f}x (target <= 1.5x; medians of rounds)")
PY
  exit 0
fi

if [ "$PROFILE" = perf ]; then
  # A gateway-only load with perf attached: the upstreams and wrk from peerbench's `up`.
  "$PEERBENCH" up
  trap '"$PEERBENCH" down; cleanup' EXIT
  taskset -c 1 wrk -t1 -c"${CONNECTIONS:-32}" -d"${DURATION:-10}"s "$PROFILE_URL" >"$WORK/wrk-perf.txt" &
  wrk_pid=$!
  perf record -F 999 -g -p "$DP_PID" -o "$WORK/perf.data" -- sleep "${DURATION:-10}" 2>/dev/null || true
  wait "$wrk_pid" || true
  perf report -i "$WORK/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
    | grep -v '^$' | head -n 80 > "$WORK/perf-top.txt" || true
  cat "$WORK/wrk-perf.txt" "$WORK/perf-top.txt"
  echo "peers: profile in $WORK/perf.data, summary in $WORK/perf-top.txt" >&2
  exit 0
fi

GATEWAY_URL_PROXY=$URL GATEWAY_URL_AGG=$AGG_URL GATEWAY_TARGETS="plugins=$PLUGINS_URL" \
  GATEWAY_PID=$DP_PID "$PEERBENCH"
