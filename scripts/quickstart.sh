#!/usr/bin/env bash
# Builds and starts the gateway: a control plane on the embedded SQLite store plus one data
# plane, on the default loopback ports. Prints the admin URL, proxy URL and admin token.
# Ctrl-C stops both. State lives in .quickstart/ (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --bins --quiet

mkdir -p .quickstart
if [ ! -s .quickstart/admin-token ]; then
  # The token is generated once and kept, so every run prints the same one.
  echo "gw_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" > .quickstart/admin-token
  chmod 600 .quickstart/admin-token
fi
TOKEN=$(cat .quickstart/admin-token)
ADMIN=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9180}
XDS=${GATEWAY_XDS_LISTEN:-127.0.0.1:9280}
PROXY=${GATEWAY_LISTEN:-127.0.0.1:9080}
STATUS=${GATEWAY_STATUS_LISTEN:-127.0.0.1:9091}

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

target/debug/control-plane --admin-listen "$ADMIN" --xds-listen "$XDS" \
  --database-url "sqlite://.quickstart/gateway.db?mode=rwc" --admin-token "$TOKEN" \
  > .quickstart/control-plane.out 2> .quickstart/control-plane.log &
pids+=($!)
target/debug/data-plane --listen "$PROXY" --status-listen "$STATUS" \
  --control-plane "http://$XDS" --node-id quickstart-dp \
  > .quickstart/data-plane.out 2> .quickstart/data-plane.log &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS "http://$STATUS/readyz" > /dev/null 2>&1; then
    cat <<MSG

  Gateway is running (logs in .quickstart/).
    admin API : http://$ADMIN
    proxy     : http://$PROXY
    DP status : http://$STATUS   (/healthz /readyz /metrics)
    token     : $TOKEN

  In another shell:
    export ADMIN=http://$ADMIN PROXY=http://$PROXY TOKEN=$TOKEN

  Ctrl-C stops both processes.
MSG
    wait -n "${pids[@]}" || true
    echo "a gateway process exited; see .quickstart/*.log" >&2
    exit 1
  fi
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2> /dev/null; then
      echo "the gateway failed to start:" >&2
      tail -n 20 .quickstart/control-plane.log .quickstart/data-plane.log >&2
      exit 1
    fi
  done
  sleep 0.1
done
echo "the data plane did not become ready within 10 s; see .quickstart/*.log" >&2
exit 1
