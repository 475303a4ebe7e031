#!/usr/bin/env bash
# P5: the data plane's memory (targets: <= 20 MiB idle, <= 80 MiB with 10,000 routes, no growth
# beyond 5% after 10,000 create-delete cycles). One data plane (one worker thread, core 0) and
# one control plane; VmRSS (resident now) and VmHWM (the peak so far) from /proc/PID/status:
#   idle     after start-up, connected, with an empty config;
#   routes   once the 10,000-route config of lib.sh `route_config` (the P3 table) is applied
#            (its version seen on /readyz);
#   cycles   on top of those routes, P5_WRITERS writers each PUT then DELETE a route of their
#            own through the admin API (every write one config version, streamed to the data
#            plane: 2 versions per cycle), measured after 1,000 cycles (or half of P5_CYCLES if
#            fewer), a quarter, half and all of P5_CYCLES, each time once the data plane has
#            applied the last write. The first updates grow the allocator's arena until its
#            free space holds what one update allocates while the old runtime is still alive
#            (~12 MiB at 10k routes), so growth is read from the 1,000-cycle point to the end,
#            not from `routes`.
# The allocator is glibc's malloc (the data plane sets none); MALLOC_ARENA_MAX and other
# glibc.malloc tunables pass through to the data plane for comparisons (e.g. MALLOC_ARENA_MAX=1).
# With gdb installed (P5_HEAP=0 turns it off), each point also shows the bytes glibc has handed
# out and not taken back (malloc_stats's "in use", called in the idle data plane through gdb):
# the live heap, which tells a leak (it grows) from memory the allocator keeps (it does not).
#
#   benches/load/p5-memory.sh          # needs target/release/data-plane and control-plane
#
# P5_ROUTES (10000), P5_CYCLES (10000), P5_WRITERS (4), P5_SECONDS (180: the cycles stop there,
# and the figures say how many were done). The last line is for all.sh. Stops what it starts,
# by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUTES=${P5_ROUTES:-10000} CYCLES=${P5_CYCLES:-10000} WRITERS=${P5_WRITERS:-4}
SECONDS_MAX=${P5_SECONDS:-180}
CP_BIN=${CP_BIN:-target/release/control-plane}

source benches/load/lib.sh p5
start_gateway
status=$(value "$work/dp.out" status_url)

kib() { awk -v k="$2" '$1 == k ":" { print $2 }' "/proc/$1/status"; }
heap=${P5_HEAP:-1}
command -v gdb > /dev/null || heap=0
# The data plane's live heap in KiB (glibc's total "in use bytes", printed on its stderr), or -.
heap_kib() {
  [ "$heap" = 1 ] || { echo -; return; }
  # --readnever: the libc symbol is enough, and reading the binary's debug info takes ~25 s.
  gdb -p "$dp_pid" --readnever -batch -ex 'call (void)malloc_stats()' > /dev/null 2>&1 || true
  grep -a 'in use bytes' "$work/dp.log" | tail -n 1 | awk '{ printf "%d", $NF / 1024 } END { if (!NR) print "-" }'
}
# mark NAME: one line of figures for the data plane (and the control plane, for context).
mark() {
  printf '%-14s %9s %9s %9s %8s %8s %6s\n' "$1" "$(kib "$dp_pid" VmRSS)" "$(kib "$dp_pid" VmHWM)" \
    "$(heap_kib)" "$(kib "$cp_pid" VmRSS)" "${2:-}" "$(kib "$dp_pid" Threads)" | tee -a "$work/p5.txt"
}
cp_pid=${pids[0]}
printf '%-14s %9s %9s %9s %9s %8s %6s\n' point dp_rss_kib dp_hwm_kib heap_kib cp_rss_kib version threads |
  tee "$work/p5.txt"

# Idle: connected to a control plane with nothing in it (ready once the empty snapshot lands).
for _ in $(seq 50); do curl -sf -o /dev/null "$status/readyz" && break; sleep 0.1; done
sleep 1
mark idle "$(curl -s "$status/readyz" | sed -n 's/.*"version":\([0-9]*\).*/\1/p')"

route_config "$ROUTES" 9 > "$work/routes.json"
version=$(put_config "$work/routes.json")
wait_applied "$version"
sleep 1
mark "routes=$ROUTES" "$version"

# The writers: keep-alive connections, each cycle one PUT and one DELETE of the writer's own
# route; prints the cycles done and the highest version written. Stops at $3 cycles in all or
# at the deadline (unix time) $4.
cycles() {
  python3 - "$admin" "$token" "$1" "$2" "$3" "$4" <<'PY'
import http.client, json, sys, threading, time, urllib.parse

admin, token, writers, start, end, deadline = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
url = urllib.parse.urlsplit(admin)
lock = threading.Lock()
state = {"next": start, "done": 0, "version": 0, "errors": 0}

def writer(w):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"paths": [f"/cycle/{w}/:id"], "methods": ["GET"], "upstream_id": "catalog"})
    while time.time() < deadline:
        with lock:
            if state["next"] >= end:
                return
            state["next"] += 1
        for method, payload in (("PUT", body), ("DELETE", None)):
            conn.request(method, f"/api/v1/routes/cycle-{w}", body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            version = int(response.getheader("x-config-version") or 0)
            with lock:
                if response.status >= 300:
                    state["errors"] += 1
                state["version"] = max(state["version"], version)
        with lock:
            state["done"] += 1

threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
for t in threads: t.start()
for t in threads: t.join()
if state["errors"]:
    print(f"p5: {state['errors']} writes failed", file=sys.stderr)
print(state["done"], state["version"])
PY
}

deadline=$(($(date +%s) + SECONDS_MAX))
done_cycles=0 started=$SECONDS
first=$((CYCLES / 2 < 1000 ? CYCLES / 2 : 1000))
warm= warm_heap=
for target in $(printf '%s\n' "$first" $((CYCLES / 4)) $((CYCLES / 2)) "$CYCLES" | awk -v f="$first" '$1 >= f' | sort -nu); do
  read -r n version < <(cycles "$WRITERS" "$done_cycles" "$target" "$deadline")
  done_cycles=$((done_cycles + n))
  [ "$version" -gt 0 ] && wait_applied "$version"
  sleep 1
  mark "cycles=$done_cycles" "$version"
  [ -n "$warm" ] || { warm=$(kib "$dp_pid" VmRSS); first=$done_cycles; warm_heap=$(tail -n 1 "$work/p5.txt" | awk '{ print $4 }'); }
  [ "$done_cycles" -ge "$target" ] || { echo "p5: stopped at $done_cycles cycles (P5_SECONDS=$SECONDS_MAX)" >&2; break; }
done
seconds=$((SECONDS - started))
last=$(kib "$dp_pid" VmRSS) last_heap=$(tail -n 1 "$work/p5.txt" | awk '{ print $4 }')
idle=$(awk '$1 == "idle" { print $2 }' "$work/p5.txt")
routes=$(awk -v p="routes=$ROUTES" '$1 == p { print $2 }' "$work/p5.txt")
awk -v idle="$idle" -v routes="$routes" -v warm="$warm" -v last="$last" -v n="$done_cycles" -v r="$ROUTES" \
  -v s="$seconds" -v f="$first" -v hwm="$(kib "$dp_pid" VmHWM)" -v wh="$warm_heap" -v lh="$last_heap" 'BEGIN {
  printf "P5: idle %.1f MiB (target <= 20), %d routes %.1f MiB (<= 80), after %d create-delete cycles (%d s) %.1f MiB: %+.1f%% since the first %d cycles (<= 5%%), %+.1f%% since the routes; peak %.1f MiB\n",
    idle / 1024, r, routes / 1024, n, s, last / 1024, (last / warm - 1) * 100, f, (last / routes - 1) * 100, hwm / 1024
  if (wh != "-" && lh != "-" && wh > 0)
    printf "P5: live heap %.1f MiB after %d cycles, %.1f MiB after %d: %+.2f%% (RSS above it is the allocator keeping freed memory)\n", wh / 1024, f, lh / 1024, n, (lh / wh - 1) * 100
  printf "p5_idle_kib=%d p5_routes=%d p5_routes_kib=%d p5_cycles=%d p5_warm_kib=%d p5_cycles_kib=%d p5_growth_pct=%.1f p5_hwm_kib=%d\n",
    idle, r, routes, n, warm, last, (last / warm - 1) * 100, hwm
}'
