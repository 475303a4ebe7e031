# The start-up the P-figure scripts share (p10-tls.sh, p11-cache.sh, p12-hedge.sh), sourced
# from the repository root after `set -euo pipefail`:
#
#   source benches/load/lib.sh NAME
#
# gives a scratch directory ($work) and an admin token ($token) for the run, $pids stopped by
# PID (then $work removed) on exit, DP and CP (DP_BIN, default target/release/data-plane;
# CP_BIN, default target/debug/control-plane) and:
#   value FILE KEY          the KEY=value line's value in FILE, waiting for it to appear;
#   start_gateway [ARG...]  a control plane on SQLite ($admin, $xds) and a data plane pinned to
#                           core 0 with one worker thread, node id NAME, ARGs added ($dp_pid;
#                           its key=value lines in $work/dp.out);
#   api METHOD PATH         an admin call with the body on stdin; fails on an error status.

DP=${DP_BIN:-target/release/data-plane}
CP=${CP_BIN:-target/debug/control-plane}
name=$1
work=$(mktemp -d)
token=$name-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

value() {
  for _ in $(seq 100); do
    local v; v=$(sed -n "s/^$2=//p" "$1" | head -1)
    [ -n "$v" ] && { echo "$v"; return; }
    sleep 0.1
  done
  echo "no $2= in $1" >&2; exit 1
}

start_gateway() {
  "$CP" --database-url "sqlite://$work/cp.db?mode=rwc" --admin-token "$token" \
    --admin-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 > "$work/cp.out" 2> "$work/cp.log" &
  pids+=($!)
  admin=$(value "$work/cp.out" admin_url)
  xds=$(value "$work/cp.out" xds_url)
  taskset -c 0 "$DP" --worker-threads 1 --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 \
    --control-plane "$xds" --node-id "$name" "$@" > "$work/dp.out" 2> "$work/dp.log" &
  dp_pid=$!
  pids+=($dp_pid)
}

api() {
  curl -sf -X "$1" "$admin$2" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' --data-binary @- > /dev/null
}
