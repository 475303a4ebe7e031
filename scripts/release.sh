#!/usr/bin/env bash
# The shipped binaries: control-plane and gatewayctl from a release build, data-plane
# profile-guided (benches/load/pgo.sh, trained by benches/src/bin/train-load.rs on loopback: no
# nginx, no wrk, no network). deploy/Dockerfile runs this script; so can you:
#
#   scripts/release.sh              # the three binaries in target/dist (~15 minutes on 2 cores)
#   OUT=/out scripts/release.sh     # elsewhere
#
# CARGO_FLAGS (e.g. --locked) goes to every cargo build; builds run under `nice -n 10`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/target/dist}

# shellcheck disable=SC2206
cargo_flags=(${CARGO_FLAGS:-})
echo "release: control-plane and gatewayctl (target/release)" >&2
(cd "$ROOT" && nice -n 10 cargo build --release -q "${cargo_flags[@]}" -p control-plane --bins)
echo "release: the profile-guided data plane (benches/load/pgo.sh)" >&2
data_plane=$("$ROOT/benches/load/pgo.sh" | tail -n 1)
[ -x "$data_plane" ] || { echo "release: benches/load/pgo.sh built no data plane" >&2; exit 1; }

mkdir -p "$OUT"
cp "$ROOT/target/release/control-plane" "$ROOT/target/release/gatewayctl" "$data_plane" "$OUT/"
echo "release: $OUT/control-plane $OUT/gatewayctl $OUT/data-plane (profile-guided)" >&2
