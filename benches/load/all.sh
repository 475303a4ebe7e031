#!/usr/bin/env bash
# Every P-figure of ../shared/spec/targets.md that fits on this machine, in one run, in one
# table: figure, target, measured, ratio to the peer measured in the same run, and a note for
# each target missed. It reports; it never fails on a number (exit 0 unless a step broke).
#
#   benches/load/all.sh             ~22 minutes (3 rounds of 8 s per target)
#   QUICK=1 benches/load/all.sh     ~5 minutes: 1 round of 3 s, smaller configs and fleets
#
# One release build (under `nice -n 10`), then each step in turn, each with its own log in the
# run's directory and a time limit:
#   P1 P2 P4   benches/load/peers.sh (peerbench: nginx-proxy, nginx+lua; the plain, aggregation
#              and plugin routes)
#   P8         PROFILE=churn benches/load/peers.sh
#   P10        benches/load/p10-tls.sh (nginx-tls, same certificate; new handshakes/s)
#   P11, P12   benches/load/p11-cache.sh, benches/load/p12-hedge.sh, when they exist
#   P3         benches/load/p3-routes.sh (req/s and CPU per request, 10 vs 10,000 routes)
#   P5         benches/load/p5-memory.sh (RSS idle, with 10,000 routes, after create-delete
#              cycles: 10,000, or 2,000 in QUICK runs)
#   P13        PROFILE=p13 benches/load/peers.sh
#   P6 P7 P9   target/release/fleet (a fresh Postgres database when psql reaches
#              127.0.0.1:5432, else SQLite: the table says which)
#   P3         the router bench (criterion; not in QUICK runs)
# The data plane is the profile-guided build of benches/load/pgo.sh when one exists
# (PGO=1 builds it first, ~15 minutes more; PGO=0 uses the plain release build). Every
# process a step starts is stopped by that step (by PID); stopping this script stops the
# running step. Wall-clock figures on a machine shared with
# other builds are noisy: read the ratios, and the per-step logs for the rounds.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOAD=$ROOT/benches/load
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gateway-all.XXXXXX")
QUICK=${QUICK:-0}
PGO=${PGO:-auto}
if [ "$QUICK" = 1 ]; then
  export DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} ROUNDS=${ROUNDS:-1}
  export CHURN_ROUTES=${CHURN_ROUTES:-1000} FLEETS=${FLEETS:-1,10} WRITES=${WRITES:-20}
  export ROUTES=${ROUTES:-2000} WRITE_SECONDS=${WRITE_SECONDS:-3}
  export P5_CYCLES=${P5_CYCLES:-2000} P5_SECONDS=${P5_SECONDS:-40}
else
  export DURATION=${DURATION:-8} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3}
fi
export BUILD=0 CP_BIN=$ROOT/target/release/control-plane
step_pid=
database=

cleanup() {
  if [ -n "$step_pid" ]; then kill "$step_pid" 2>/dev/null; wait "$step_pid" 2>/dev/null; fi
  [ -z "$database" ] || psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $database" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME LIMIT_SECONDS COMMAND...: runs it with its output in $WORK/NAME.log; a failure is
# recorded for the table, and the next step runs.
step() {
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  echo "all: $name ($*)" >&2
  timeout -k 15 "$limit" "$@" >"$WORK/$name.log" 2>&1 &
  step_pid=$!
  if wait "$step_pid"; then
    echo "all: $name done in $((SECONDS - started)) s" >&2
  else
    echo "all: $name FAILED (exit $?) after $((SECONDS - started)) s: $WORK/$name.log" >&2
    echo "$name" >>"$WORK/failed"
  fi
  step_pid=
}

echo "all: building release binaries (nice -n 10)" >&2
(cd "$ROOT" && nice -n 10 cargo build --release -q -p control-plane -p data-plane -p gateway-benches --bins) \
  || { echo "all: the release build failed" >&2; exit 1; }
[ "$PGO" != 1 ] || "$LOAD/pgo.sh" >&2 || { echo "all: the profile-guided build failed" >&2; exit 1; }
if [ "$PGO" != 0 ] && [ -x "$ROOT/target/pgo/release/data-plane" ]; then
  export DP_BIN=$ROOT/target/pgo/release/data-plane
  build="profile-guided ($DP_BIN, built $(date -r "$DP_BIN" '+%F %H:%M'))"
else
  export DP_BIN=$ROOT/target/release/data-plane
  build="release ($DP_BIN)"
fi
echo "all: data plane: $build; logs in $WORK" >&2

RUN_DIR=$WORK/peers TARGETS=direct,nginx-proxy,nginx-lua-agg,gw-proxy,gw-agg,gw-plugins \
  step peers 600 "$LOAD/peers.sh"
PROFILE=churn step churn 600 "$LOAD/peers.sh"
step p10 600 "$LOAD/p10-tls.sh"
for script in p11-cache p12-hedge; do
  [ ! -x "$LOAD/$script.sh" ] || step "$script" 600 "$LOAD/$script.sh"
done
step p3-routes 600 "$LOAD/p3-routes.sh"
step p5-memory 600 "$LOAD/p5-memory.sh"
PROFILE=p13 step p13 600 "$LOAD/peers.sh"
fleet_db=sqlite
if command -v psql >/dev/null && psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE gateway_all_$$" >/dev/null 2>&1; then
  database=gateway_all_$$ fleet_db=postgres
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/$database step fleet 600 "$ROOT/target/release/fleet"
else
  step fleet 600 env -u DATABASE_URL "$ROOT/target/release/fleet"
fi
if [ "$QUICK" != 1 ]; then
  step router 600 nice -n 10 cargo bench -q --manifest-path "$ROOT/Cargo.toml" -p gateway-benches \
    --bench router -- --noplot --warm-up-time 1 --measurement-time 3 'router/match/'
fi

python3 - "$WORK" "$build" "$QUICK" "$fleet_db" <<'PY' | tee "$WORK/table.txt"
import pathlib, re, statistics, sys

work, build, quick, fleet_db = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
failed = set((work / "failed").read_text().split()) if (work / "failed").exists() else set()

def log(name):
    path = work / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else None

def peer_rows(text):
    """The rows of peerbench's table: name -> [req/s, p50, p99, errors, non2xx, RSS, CPU]."""
    rows = {}
    for line in (text or "").splitlines():
        cells = line.split()
        if len(cells) >= 8 and re.fullmatch(r"(gw|nginx|haproxy|direct)[\w-]*", cells[0]):
            try:
                rows[cells[0]] = [float(c) for c in cells[1:8]]
            except ValueError:
                pass
    return rows

table = []  # (figure, target, measured, vs peer, met: True/False/None, note)
def row(figure, target, measured, ratio="", met=None, note=""):
    table.append((figure, target, measured, ratio, met, note))

def absent(figure, target, step, why=None):
    why = why or (f"step failed: {step}.log" if step in failed else f"no figure in {step}.log")
    row(figure, target, "-", "", None, why)

# P1, P2, P4: peerbench's table of the peers step.
peers = peer_rows(log("peers"))
def versus(name, peer):
    a, b = peers.get(name), peers.get(peer)
    return (a[0] / b[0], a[6] / b[6], a[2] / b[2], a, b) if a and b and b[0] and b[6] and b[2] else None
p1 = versus("gw-proxy", "nginx-proxy")
if p1:
    rps, cpu, p99, a, b = p1
    notes = [n for n, bad in (("req/s below 1.10x and CPU above 0.90x nginx's", rps < 1.10 and cpu > 0.90),
                              ("p99 above nginx's", p99 > 1.0)) if bad]
    row("P1 plain proxy", ">=1.10x req/s or <=0.90x CPU/req; p99 <= nginx",
        f"{a[0]:.0f} req/s, {a[6]:.1f} us/req, p99 {a[2]:.2f} ms",
        f"{rps:.2f}x req/s, {cpu:.2f}x CPU, {p99:.2f}x p99 (nginx-proxy)", not notes, "; ".join(notes))
else:
    absent("P1 plain proxy", ">=1.10x req/s or <=0.90x CPU/req", "peers")
p2 = versus("gw-agg", "nginx-lua-agg")
if p2:
    rps, cpu, _, a, _ = p2
    met = rps >= 1.5 or cpu <= 0.67
    row("P2 3-way aggregation", ">=1.5x req/s or <=0.67x CPU/req", f"{a[0]:.0f} req/s, {a[6]:.1f} us/req",
        f"{rps:.2f}x req/s, {cpu:.2f}x CPU (nginx+lua)", met, "" if met else "neither 1.5x req/s nor 0.67x CPU")
else:
    absent("P2 3-way aggregation", ">=1.5x req/s or <=0.67x CPU/req", "peers")
if "gw-plugins" in peers and "gw-proxy" in peers:
    share = peers["gw-plugins"][0] / peers["gw-proxy"][0]
    row("P4 key-auth+limit-count+prometheus", ">=0.80x plugin-less req/s", f"{peers['gw-plugins'][0]:.0f} req/s",
        f"{share:.2f}x gw-proxy", share >= 0.80, "" if share >= 0.80 else "plugins cost more than 20% of req/s")
else:
    absent("P4 plugins", ">=0.80x plugin-less req/s", "peers")

# P3: criterion's router bench.
router = log("router")
match = re.search(r"router/match/10000\s+time:\s+\[\S+ \S+ (\S+) (\S+)", router or "")
if match:
    value = float(match.group(1)) * {"ns": 1e-3, "µs": 1, "us": 1, "ms": 1e3}.get(match.group(2), float("nan"))
    row("P3 router, 10k routes", "match median < 1 us", f"{value:.3f} us (criterion)", "", value < 1,
        "" if value < 1 else "router match above 1 us")
else:
    absent("P3 router, 10k routes", "match median < 1 us", "router", "not run (QUICK)" if quick else None)
m = re.search(r"p3_routes=(\d+) rps_small=(\d+) rps_large=(\d+) drop_pct=(-?[\d.]+) cpu_us_small=([\d.]+) "
              r"cpu_us_large=([\d.]+) cpu_pct=([-+][\d.]+)", log("p3-routes") or "")
if m:
    drop = float(m.group(4))
    row(f"P3 req/s 10 vs {int(m.group(1)) // 1000}k routes", "req/s drop < 5%",
        f"{m.group(3)} req/s, {m.group(6)} us/req", f"{drop:.1f}% drop, CPU {m.group(7)}% (10 routes)",
        drop < 5, "" if drop < 5 else "req/s drops 5% or more")
else:
    absent("P3 req/s 10 vs 10k routes", "req/s drop < 5%", "p3-routes")
m = re.search(r"p5_idle_kib=(\d+) p5_routes=(\d+) p5_routes_kib=(\d+) p5_cycles=(\d+) p5_warm_kib=(\d+) "
              r"p5_cycles_kib=(\d+) p5_growth_pct=(-?[\d.]+)", log("p5-memory") or "")
if m:
    idle, routes, cycles, growth = int(m.group(1)) / 1024, int(m.group(3)) / 1024, int(m.group(4)), float(m.group(7))
    after = int(m.group(6)) / 1024
    # The cycles run on the 10k routes too: both readings count against 80 MiB.
    notes = [n for n, bad in (("idle above 20 MiB", idle > 20), ("above 80 MiB with the routes", max(routes, after) > 80),
                              ("grows beyond 5% over the cycles", growth > 5),
                              (f"{cycles} cycles, not 10,000", cycles < 10_000 and not quick)) if bad]
    met = idle <= 20 and max(routes, after) <= 80 and growth <= 5
    row("P5 DP memory (RSS)", "<=20 MiB idle / <=80 MiB 10k routes / <=5% growth",
        f"{idle:.1f} / {routes:.1f} MiB; {after:.1f} MiB after {cycles} cycles",
        f"{growth:+.1f}% since the first tenth of them", met, "; ".join(notes))
else:
    absent("P5 DP memory", "<=20 MiB idle / <=80 MiB 10k routes / <=5% growth", "p5-memory")

# P6, P7, P9: fleet's name=value lines.
fleet = log("fleet") or ""
p6 = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"p6_dps=(\d+) .*p99_ms=([\d.]+)", fleet)}
if p6:
    measured = ", ".join(f"{n} DPs p99 {v:.1f} ms" for n, v in sorted(p6.items()))
    met = p6.get(1, 1e9) <= 100 and max(p6.items())[1] <= 250
    note = "" if met else "write-to-served p99 above target"
    if 50 not in p6:
        note = (note + "; " if note else "") + f"largest fleet {max(p6)} DPs, not 50"
    row("P6 write -> every DP", "p99 <=100 ms (1 DP), <=250 ms (50)", measured, "", met, note)
else:
    absent("P6 write -> every DP", "p99 <=100 ms (1 DP), <=250 ms (50)", "fleet")
m = re.search(r"p7_routes=(\d+) first_snapshot_bytes=(\d+) one_route_delta_bytes=(\d+)", fleet)
if m:
    delta = int(m.group(3))
    row("P7 one route changed", "< 10 KB on the stream", f"{delta} B in {m.group(1)} routes (whole: {m.group(2)} B)",
        "", delta < 10_000, "" if delta < 10_000 else "delta above 10 KB")
else:
    absent("P7 one route changed", "< 10 KB on the stream", "fleet")
w = re.search(r"p9_writes_per_s=(\d+)", fleet)
r = re.search(r"p9_routes=(\d+) put_config_ms=(\d+) put_config_again_ms=(\d+) rollback_ms=(\d+)", fleet)
if w and r:
    writes, put, rollback = int(w.group(1)), int(r.group(2)), int(r.group(4))
    met = writes >= 300 and rollback <= 1000 and rollback <= put
    row(f"P9 admin writes ({fleet_db})", ">=300 writes/s; rollback <=1 s, <= PUT /config",
        f"{writes} writes/s; rollback {rollback} ms, PUT {put} ms ({r.group(1)} routes)", "", met,
        "" if met else "below target")
else:
    absent("P9 admin writes", ">=300 writes/s; rollback <=1 s", "fleet")

# P8: the churn step's summary line.
m = re.search(r"p99 churn / quiet: ([\d.]+)x, churn / sham: ([\d.]+)x", log("churn") or "")
if m:
    quiet, sham = float(m.group(1)), float(m.group(2))
    row("P8 p99 under 20 changes/s", "<=1.5x p99 without churn", f"churn/sham {sham:.2f}x, churn/quiet {quiet:.2f}x",
        "", sham <= 1.5, "" if sham <= 1.5 else "p99 under churn above 1.5x")
else:
    absent("P8 p99 under churn", "<=1.5x p99 without churn", "churn")

# P10: peerbench's table (keep-alive) and the handshake table of p10-tls.sh.
p10 = log("p10") or ""
tls = peer_rows(p10)
shakes = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(nginx-tls|gw-tls)\s+([\d.]+)\s+[\d.]+\s*$", p10, re.M)}
if "gw-tls" in tls and "nginx-tls" in tls:
    cpu = tls["gw-tls"][6] / tls["nginx-tls"][6]
    hs = shakes.get("gw-tls", 0) / shakes["nginx-tls"] if shakes.get("nginx-tls") else None
    met = cpu <= 0.90 and (hs is None or hs >= 1.0)
    notes = [n for n, bad in (("CPU per request above 0.90x", cpu > 0.90),
                              ("fewer handshakes/s than nginx", hs is not None and hs < 1.0),
                              ("no handshake figure", hs is None)) if bad]
    row("P10 HTTPS keep-alive; handshakes", "<=0.90x CPU/req; handshakes/s >= nginx",
        f"{tls['gw-tls'][6]:.1f} us/req; {shakes.get('gw-tls', 0):.0f} handshakes/s",
        f"{cpu:.2f}x CPU" + (f", {hs:.2f}x handshakes/s" if hs else "") + " (nginx-tls)", met, "; ".join(notes))
else:
    absent("P10 HTTPS", "<=0.90x CPU/req; handshakes/s >= nginx", "p10")

# P11 and P12: the helpers' scripts, when they exist; a peerbench table is read, else the
# script's last line is shown.
def last_line(text):
    lines = [l for l in (text or "").splitlines() if l.strip()]
    return lines[-1].strip()[:70] if lines else "-"
cache = log("p11-cache")
cache_rows = peer_rows(cache)
gw_cache = next((n for n in cache_rows if n.startswith("gw-") and n.endswith("cache")), None)
if gw_cache and "nginx-cache" in cache_rows:
    cpu = cache_rows[gw_cache][6] / cache_rows["nginx-cache"][6]
    row("P11 proxy-cache hits", "<=0.90x nginx proxy_cache CPU/req", f"{cache_rows[gw_cache][6]:.1f} us/req",
        f"{cpu:.2f}x CPU (nginx-cache)", cpu <= 0.90, "" if cpu <= 0.90 else "CPU per hit above 0.90x nginx's")
elif cache is not None:
    row("P11 proxy-cache hits", "<=0.90x nginx proxy_cache CPU/req", last_line(cache), "", None, "see p11-cache.log")
else:
    absent("P11 proxy-cache hits", "<=0.90x nginx CPU/req", "p11-cache", "benches/load/p11-cache.sh not there yet")
hedge = log("p12-hedge")
p99s = {m.group(1): float(m.group(2)) for m in
        re.finditer(r"^(hedged|plain)\s+\d+\s+[\d.]+\s+[\d.]+\s+([\d.]+)", hedge or "", re.M)}
if "hedged" in p99s and "plain" in p99s:
    met = p99s["hedged"] <= 30
    row("P12 hedged requests", "p99 <= 30 ms", f"p99 {p99s['hedged']:.1f} ms (unhedged {p99s['plain']:.1f} ms)",
        f"{p99s['hedged'] / p99s['plain']:.2f}x unhedged p99", met, "" if met else "hedged p99 above 30 ms")
elif hedge is not None:
    row("P12 hedged requests", "p99 <= 30 ms", last_line(hedge), "", None, "see p12-hedge.log")
else:
    absent("P12 hedged requests", "p99 <= 30 ms", "p12-hedge", "benches/load/p12-hedge.sh not there yet")

# P13: the p13 step's table, row "both" (tracing and access log on) against "off".
m = re.search(r"^both\s+(\d+)\s+([\d.]+)x", log("p13") or "", re.M)
if m:
    share = float(m.group(2))
    row("P13 tracing + access log on", ">=0.85x req/s of off", f"{m.group(1)} req/s", f"{share:.2f}x off",
        share >= 0.85, "" if share >= 0.85 else "tracing and the log cost more than 15%")
else:
    absent("P13 tracing + access log", ">=0.85x req/s of off", "p13")

table.sort(key=lambda r: int(re.match(r"P(\d+)", r[0]).group(1)))
mark = {True: "met", False: "MISSED", None: "-"}
widths = [max(len(str(r[i] if i != 4 else mark[r[4]])) for r in table + [("figure", "target", "measured", "vs peer", None, "note")]) for i in range(6)]
print(f"data plane: {build}{'; QUICK run (1 round of 3 s: indicative only)' if quick else ''}")
header = ("figure", "target", "measured", "vs peer", "status", "note")
print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
for figure, target, measured, ratio, met, note in table:
    cells = (figure, target, measured, ratio, mark[met], note)
    print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
if failed:
    print(f"steps that failed: {', '.join(sorted(failed))} (logs in {work})")
print(f"(medians of rounds; ratios against the peer measured in the same run; logs in {work})")
PY
[ ! -s "$WORK/failed" ] || exit 1
