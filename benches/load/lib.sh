# The start-up the P-figure scripts share (p3-routes.sh, p5-memory.sh, p10-tls.sh, p11-cache.sh,
# p12-hedge.sh), sourced
# from the repository root after `set -euo pipefail`:
#
#   source benches/load/lib.sh NAME
#
# gives a scratch directory ($work) and an admin token ($token) for the run, $pids stopped by
# PID (then $work removed) on exit, DP and CP (DP_BIN, default target/release/data-plane;
# CP_BIN, default target/debug/control-plane) and:
#   value FILE KEY          the KEY=value line's value in FILE, waiting for it to appear
#                           (VALUE_SECONDS, default 10, at most);
#   start_gateway [ARG...]  a control plane on SQLite ($admin, $xds) and a data plane pinned to
#                           core 0 with one worker thread, node id NAME, ARGs added ($dp_pid;
#                           its key=value lines in $work/dp.out); the words of $DP_WRAP, if
#                           set, run it (e.g. valgrind and its options);
#   api METHOD PATH         an admin call with the body on stdin; fails on an error status;
#   put_config FILE         PUT /api/v1/config with FILE; prints the new config version;
#   wait_applied VERSION    waits (APPLY_SECONDS, default 60, at most) until the data plane's
#                           /readyz reports VERSION or later (versions only grow);
#   start_upstreams         ../shared/peerbench's three fake services (catalog, inventory, review:
#                           one nginx worker on core 1) on free ports $up1 $up2 $up3, so that a
#                           script needs no peerbench run and fears no other's fixed ports;
#   route_config N PORT     a whole config of N routes on one upstream `catalog` (127.0.0.1:PORT)
#                           as JSON: the measured route (GET /catalog/:item on host
#                           shop.example.com), a PUT/DELETE route on the same path and host, and
#                           N - 2 routes in the router bench's mix (benches/src/lib.rs `route`:
#                           exact, named segments, prefixes; exact and wildcard hosts; one or two
#                           methods; priorities), where one in eight is another tenant's
#                           /catalog/:item told apart by host alone and one in eight a literal
#                           sibling /catalog/skuI, so the measured request searches past both.

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
  for _ in $(seq $((${VALUE_SECONDS:-10} * 10))); do
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
  # shellcheck disable=SC2086 # DP_WRAP is a command line, split on purpose.
  taskset -c 0 ${DP_WRAP:-} "$DP" --worker-threads 1 --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 \
    --control-plane "$xds" --node-id "$name" "$@" > "$work/dp.out" 2> "$work/dp.log" &
  dp_pid=$!
  pids+=($dp_pid)
}

api() {
  curl -sf -X "$1" "$admin$2" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' --data-binary @- > /dev/null
}

put_config() {
  local version
  version=$(curl -sf -D - -o /dev/null -X PUT "$admin/api/v1/config" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' --data-binary "@$1" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-config-version" { print $2 }')
  [ -n "$version" ] || { echo "PUT /api/v1/config with $1 failed" >&2; exit 1; }
  echo "$version"
}

wait_applied() {
  local applied status_url
  status_url=$(value "$work/dp.out" status_url)
  for _ in $(seq $((${APPLY_SECONDS:-60} * 10))); do
    applied=$(curl -sf "$status_url/readyz" | sed -n 's/.*"version":\([0-9]*\).*/\1/p' || true)
    [ "${applied:-0}" -ge "$1" ] && return
    sleep 0.1
  done
  echo "the data plane did not apply version $1 within ${APPLY_SECONDS:-60} s" >&2; exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_upstreams() {
  local template=${PEERBENCH_DIR:-../shared/peerbench}/conf/upstreams.conf.tmpl
  up1=$(free_port) up2=$(free_port) up3=$(free_port)
  mkdir -p "$work/upstreams/tmp"
  sed -e "s#@RUN@#$work/upstreams#g" -e "s/@UP1@/$up1/g" -e "s/@UP2@/$up2/g" -e "s/@UP3@/$up3/g" \
    "$template" > "$work/upstreams/upstreams.conf"
  # In the foreground (daemon off), so that $pids holds nginx's master and stopping it stops all.
  taskset -c 1 nginx -p "$work/upstreams" -c "$work/upstreams/upstreams.conf" \
    -e "$work/upstreams/error.log" -g 'daemon off;' 2>> "$work/upstreams/error.log" &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$up1/" && return
    sleep 0.1
  done
  echo "the fake upstreams did not start: $(tail -n 3 "$work/upstreams/error.log")" >&2; exit 1
}

route_config() {
  python3 - "$1" "$2" <<'PY'
import json, sys

n, port = int(sys.argv[1]), int(sys.argv[2])
routes = [
    {"id": "measured", "paths": ["/catalog/:item"], "hosts": ["shop.example.com"], "methods": ["GET"],
     "upstream_id": "catalog"},
    # Checked before the measured route (higher priority) and refused on its method.
    {"id": "measured-write", "paths": ["/catalog/:item"], "hosts": ["shop.example.com"],
     "methods": ["PUT", "DELETE"], "priority": 1, "upstream_id": "catalog"},
]
for i in range(max(0, n - len(routes))):
    kind = i % 8
    paths = {0: f"/svc{i}/items", 1: f"/svc{i}/users/:id", 2: f"/svc{i}/static/*",
             3: f"/svc{i}/orders/:order/lines/:line", 4: f"/catalog/sku{i}", 5: f"/svc{i}/users/:id",
             6: f"/svc{i}/v1/:kind/*", 7: "/catalog/:item"}[kind]
    if kind == 7:
        hosts = [f"t{i}.example.com"]
    elif i % 3 == 0:
        hosts = [f"api{i % 50}.example.com"]
    elif i % 3 == 1:
        hosts = [f"*.tenant{i % 20}.example.com"]
    else:
        hosts = []
    routes.append({"id": f"r{i}", "paths": [paths], "hosts": hosts,
                   "methods": ["GET"] if i % 2 == 0 else ["GET", "POST"], "priority": i % 3,
                   "upstream_id": "catalog"})
upstream = {"id": "catalog", "nodes": [{"host": "127.0.0.1", "port": port}], "keepalive_pool": {"size": 320}}
json.dump({"upstreams": [upstream], "routes": routes[:n]}, sys.stdout)
PY
}
