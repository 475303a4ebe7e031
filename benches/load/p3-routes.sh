#!/usr/bin/env bash
# P3: the plain proxy route's req/s and CPU per request with 10 routes in the config, then with
# 10,000 (target: req/s drops < 5%; the other half of P3, a router match median < 1 us at 10k,
# is criterion's: `cargo bench -p gateway-benches --bench router`).
#
# One data plane (one worker thread, core 0), one control plane, peerbench's fake catalog
# service on a free port (core 1, beside wrk). The measured route is GET /catalog/:item on host
# shop.example.com; the 10,000-route config (lib.sh `route_config`: the router bench's mix of
# exact, named-segment and prefix paths, exact and wildcard hosts, one or two methods) puts
# 1,250 other tenants' /catalog/:item routes, told apart by host alone, and 1,250 literal
# siblings /catalog/skuI beside it, and a PUT/DELETE route on the same path and host is
# checked first in both configs. Rounds alternate the two configs on the same data plane
# (10, 10k, 10, 10k, ...: PUT /api/v1/config, then the version waited for on /readyz), so drift
# on this shared machine hits both alike; each round is a wrk warm-up, then a measured wrk run
# with the data plane's user + kernel time per request read from /proc/PID/stat around it.
# The table gives medians of the rounds and the drop in %; the last line is for all.sh.
#
#   benches/load/p3-routes.sh          # needs target/release/data-plane and control-plane
#   PROFILE=callgrind benches/load/p3-routes.sh
#                                      # instead, instructions per request under valgrind's
#                                      # callgrind (every thread; noise-free, ~50x slower), one
#                                      # round per config; the dumps stay in P3_DUMPS if set
#
# DURATION (s measured per round, 8), WARMUP (2), ROUNDS (3 per config), CONNECTIONS (32),
# P3_ROUTES (10000). Stops what it starts, by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-8} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3} CONNECTIONS=${CONNECTIONS:-32}
ROUTES=${P3_ROUTES:-10000}
CP_BIN=${CP_BIN:-target/release/control-plane}

PROFILE=${PROFILE:-}
if [ "$PROFILE" = callgrind ]; then
  # Counting starts with `callgrind_control -z` after each warm-up; strings in full in every
  # dump, for benches/load/callgrind-by-file.py.
  dumps=${P3_DUMPS:-$(mktemp -d /tmp/p3-callgrind-XXXX)}
  mkdir -p "$dumps"
  DP_WRAP="valgrind --tool=callgrind --callgrind-out-file=$dumps/callgrind.out --dump-instr=no
    --compress-strings=no --compress-pos=no"
  APPLY_SECONDS=${APPLY_SECONDS:-600} VALUE_SECONDS=${VALUE_SECONDS:-120}
fi
source benches/load/lib.sh p3
start_upstreams
start_gateway
proxy=$(value "$work/dp.out" proxy_url)

route_config 10 "$up1" > "$work/small.json"
route_config "$ROUTES" "$up1" > "$work/large.json"
host=shop.example.com
url="$proxy/catalog/14286?item=14286"

# Both tables must route as generated: the measured request to its route, a stranger's host
# nowhere (it proves the host is looked at), another tenant's host on the same path to theirs.
check() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" "$url")
  [ "$code" = "$3" ] || { echo "p3: $1: Host $2 answered $code, expected $3" >&2; exit 1; }
}
version=$(put_config "$work/large.json"); wait_applied "$version"
check large $host 200; check large nobody.example.com 404; check large t7.example.com 200
version=$(put_config "$work/small.json"); wait_applied "$version"
check small $host 200; check small nobody.example.com 404

if [ "$PROFILE" = callgrind ]; then
  # valgrind is the process taskset started: $dp_pid is the one callgrind_control names.
  for config in small large; do
    version=$(put_config "$work/$config.json")
    wait_applied "$version"
    routes=10; [ "$config" = large ] && routes=$ROUTES
    taskset -c 1 wrk -t1 -c8 -d3s -H "Host: $host" "$url" > /dev/null
    callgrind_control -z "$dp_pid" > /dev/null 2>&1
    out=$(taskset -c 1 wrk -t1 -c8 -d"${DURATION}s" -H "Host: $host" "$url")
    callgrind_control -d "$dp_pid" > /dev/null 2>&1
    dump=$(ls -t "$dumps"/callgrind.out* | head -n 1)
    requests=$(awk '/requests in/ { print $1 }' <<< "$out")
    instructions=$(awk '/^summary:/ { s += $2 } END { print s }' "$dump")
    mv "$dump" "$dumps/$config.callgrind"
    echo "$routes $requests $instructions" >> "$work/callgrind.txt"
    printf 'p3: %5s routes: %s requests, %s instructions, %s per request (dump %s)\n' "$routes" "$requests" \
      "$instructions" $((instructions / requests)) "$dumps/$config.callgrind"
  done
  awk 'NR == 1 { small = $3 / $2 } NR == 2 { large = $3 / $2 }
    END { printf "P3 callgrind: %.0f instructions per request with 10 routes, %.0f with %d (%+.1f%%)\n", small, large, $1, (large / small - 1) * 100 }' \
    "$work/callgrind.txt"
  exit 0
fi

ticks() { awk '{ print $14 + $15 }' "/proc/$dp_pid/stat"; }
printf 'round\troutes\treq_s\tp99\tticks\trequests\n' > "$work/p3.tsv"
for round in $(seq "$ROUNDS"); do
  for config in small large; do
    version=$(put_config "$work/$config.json")
    wait_applied "$version"
    routes=10; [ "$config" = large ] && routes=$ROUTES
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H "Host: $host" "$url" > /dev/null
    before=$(ticks)
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $host" "$url")
    after=$(ticks)
    if grep -q 'Non-2xx\|Socket errors' <<< "$out"; then echo "p3: errors with $routes routes: $out" >&2; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$routes" "$(awk '/Requests\/sec/ { print $2 }' <<< "$out")" \
      "$(awk '$1 == "99%" { print $2 }' <<< "$out")" $((after - before)) \
      "$(awk '/requests in/ { print $1 }' <<< "$out")" >> "$work/p3.tsv"
    echo "p3: round $round, $routes routes done" >&2
  done
done

python3 - "$work/p3.tsv" "$(getconf CLK_TCK)" "$ROUTES" <<'PY'
import csv, re, statistics as st, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz, large = float(sys.argv[2]), sys.argv[3]
def us(text):
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
by = {}
for r in rows:
    by.setdefault(r["routes"], []).append({
        "rps": float(r["req_s"]), "p99": us(r["p99"]),
        "cpu": float(r["ticks"]) * 1e6 / hz / float(r["requests"])})
med = lambda n, key: st.median(x[key] for x in by[n])
print(f"P3: GET /catalog/:item on host shop.example.com, 10 vs {large} routes, {len(by['10'])} alternating rounds each")
print(f"{'routes':>7}{'req/s':>9}{'CPU us/req':>12}{'p99 us':>9}  req/s by round")
for n in ("10", large):
    print(f"{n:>7}{med(n, 'rps'):>9.0f}{med(n, 'cpu'):>12.2f}{med(n, 'p99'):>9.0f}  "
          + " ".join(f"{x['rps']:.0f}" for x in by[n]))
drop = (1 - med(large, "rps") / med("10", "rps")) * 100
cpu = (med(large, "cpu") / med("10", "cpu") - 1) * 100
print(f"req/s drop: {drop:.1f}% (target < 5%); CPU per request: {cpu:+.1f}%; p99: {med(large, 'p99') / med('10', 'p99'):.2f}x")
print(f"p3_routes={large} rps_small={med('10', 'rps'):.0f} rps_large={med(large, 'rps'):.0f} drop_pct={drop:.1f} "
      f"cpu_us_small={med('10', 'cpu'):.2f} cpu_us_large={med(large, 'cpu'):.2f} cpu_pct={cpu:+.1f}")
PY
