#!/usr/bin/env bash
# P12: hedged requests on a two-speed upstream. Two nodes, round robin: one answers in 200 ms,
# the other in 5 ms (a small asyncio server started here, one port per speed). The same data
# plane serves two routes over the same upstream: `/plain` without hedging (the peer: what the
# client sees without it, measured in the same run) and `/hedged` with
# `hedge: {"delay_ms": 20}`. wrk --latency drives each in turn; the table gives p50/p90/p99
# and the ratio hedged / plain, then the hedge counters from /metrics.
#
# Hedges take tokens from the retry budget (10/s + 20% of requests over 10 s), and half the
# requests start on the slow node, so the paced runs (CONNECTIONS=1, a PACE_MS pause after each
# answer: ~15 req/s, ~8 hedges/s) stay within it; the last run, `hedged-max` (MAX_CONNECTIONS,
# no pause), shows the budget capping hedges under load.
#
#   benches/load/p12-hedge.sh          # needs target/release/data-plane and target/debug/control-plane
#
# DURATION (s per run, default 20), CONNECTIONS (1), PACE_MS (50), MAX_CONNECTIONS (8). Stops
# what it starts, by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-20} CONNECTIONS=${CONNECTIONS:-1} PACE_MS=${PACE_MS:-50}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-8}
SLOW_MS=${SLOW_MS:-200} FAST_MS=${FAST_MS:-5} DELAY_MS=${DELAY_MS:-20}

source benches/load/lib.sh p12

# The two-speed upstream: keep-alive HTTP/1.1, the answer after the port's delay.
cat > "$work/two_speed.py" <<'EOF'
import asyncio, sys

async def serve(reader, writer, delay):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    servers = []
    for spec in sys.argv[1:]:
        port, ms = (int(x) for x in spec.split(":"))
        delay = ms / 1000
        servers.append(await asyncio.start_server(
            lambda r, w, d=delay: serve(r, w, d), "127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))

asyncio.run(main())
EOF
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
slow=$(free_port) fast=$(free_port)
taskset -c 1 python3 "$work/two_speed.py" "$slow:$SLOW_MS" "$fast:$FAST_MS" > "$work/up.out" &
pids+=($!)
for _ in $(seq 50); do grep -q ready "$work/up.out" && break; sleep 0.1; done

start_gateway
proxy=$(value "$work/dp.out" proxy_url)
status=$(value "$work/dp.out" status_url)

echo "{\"nodes\": [{\"host\": \"127.0.0.1\", \"port\": $slow}, {\"host\": \"127.0.0.1\", \"port\": $fast}]}" |
  api PUT /api/v1/upstreams/two-speed
echo '{"paths": ["/plain"], "upstream_id": "two-speed"}' | api PUT /api/v1/routes/plain
echo "{\"paths\": [\"/hedged\"], \"upstream_id\": \"two-speed\", \"hedge\": {\"delay_ms\": $DELAY_MS}}" |
  api PUT /api/v1/routes/hedged
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$proxy/hedged")" = 200 ] && break
  sleep 0.1
done

ms() { # wrk's latency ("12.34ms", "1.20s", "850.00us") in ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.1f", n }'
}
# wrk calls delay() before each request: the pause of the paced runs.
echo "function delay() return $PACE_MS end" > "$work/pace.lua"
declare -A p50 p90 p99 rps
for run in plain hedged hedged-max; do
  route=${run%-max}
  if [ "$run" = hedged-max ]; then
    taskset -c 1 wrk -t1 -c"$MAX_CONNECTIONS" -d"${DURATION}s" --latency "$proxy/$route" > "$work/$run.wrk"
  else
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$work/pace.lua" --latency "$proxy/$route" > "$work/$run.wrk"
  fi
  route=$run
  p50[$route]=$(ms "$(awk '$1 == "50%" { print $2 }' "$work/$route.wrk")")
  p90[$route]=$(ms "$(awk '$1 == "90%" { print $2 }' "$work/$route.wrk")")
  p99[$route]=$(ms "$(awk '$1 == "99%" { print $2 }' "$work/$route.wrk")")
  rps[$route]=$(awk '/^Requests\/sec/ { print $2 }' "$work/$route.wrk")
  if grep -q 'Non-2xx\|Socket errors' "$work/$route.wrk"; then grep 'Non-2xx\|Socket errors' "$work/$route.wrk"; fi
  [ "$run" = hedged ] && curl -s "$status/metrics" | grep '^gateway_upstream_hedges_total' | sed 's/^/after the paced hedged run: /'
done

printf '\nP12 two-speed upstream (%s ms / %s ms, round robin), hedge delay %s ms, %s s per run\n' \
  "$SLOW_MS" "$FAST_MS" "$DELAY_MS" "$DURATION"
printf '%-11s %6s %9s %9s %9s %9s\n' run conns p50_ms p90_ms p99_ms req/s
for run in plain hedged hedged-max; do
  conns=$CONNECTIONS; [ "$run" = hedged-max ] && conns=$MAX_CONNECTIONS
  printf '%-11s %6s %9s %9s %9s %9s\n' "$run" "$conns" "${p50[$run]}" "${p90[$run]}" "${p99[$run]}" "${rps[$run]}"
done
awk -v a="${p50[hedged]}" -v b="${p50[plain]}" -v c="${p99[hedged]}" -v d="${p99[plain]}" \
  'BEGIN { printf "hedged/plain: p50 %.2fx, p99 %.2fx\n", a / b, c / d }'
curl -s "$status/metrics" | grep '^gateway_upstream_hedges_total' | sed 's/^/after all runs: /' || true
