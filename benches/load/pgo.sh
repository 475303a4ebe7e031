#!/usr/bin/env bash
# A data plane built with profile-guided optimisation (PGO): the shipped build
# (scripts/release.sh and deploy/Dockerfile run this script).
#
#   benches/load/pgo.sh                          builds target/pgo/release/data-plane, prints its path
#   DP_BIN=target/pgo/release/data-plane benches/load/peers.sh      measures it beside the peers
#
# Three steps: a data plane built with -Cprofile-generate is loaded by
# benches/src/bin/train-load.rs (its own fake upstreams and control plane, no nginx or wrk: the
# plain proxy, plugin, TLS, proxy-cache and aggregation routes, TRAIN_SECONDS each, default 8);
# llvm-profdata merges what it counted; the data plane is built again with -Cprofile-use, so
# hot code is laid out together and cold code out of the way. The proxy's user time is a
# minority of its CPU but the part spent waiting on instruction fetches is large (see the
# README, "P1"). Three release builds (the trainer and control plane in target/release, then
# target/pgo-generate and target/pgo), each under `nice -n 10` so other builds on the machine
# keep their share: ~15 minutes on 2 cores (unchanged code is not rebuilt). Needs llvm-profdata
# of the LLVM rustc was built with: rustup's llvm-tools component (added if missing), else
# Debian's llvm-NN (installed when root). CARGO_FLAGS (e.g. --locked) goes to every build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gateway-pgo.XXXXXX")
# A fixed path: it is part of the instrumented build's flags, so a fresh one per run rebuilt
# every crate each time.
PROFILES=$ROOT/target/pgo-generate/profiles
trap 'rm -rf "$WORK"' EXIT
die() { echo "pgo: $*" >&2; exit 1; }

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || die "cannot read rustc's LLVM version"
matches() { "$1" merge --version 2>/dev/null | grep -q "LLVM version $llvm_major\\."; }
# Where rustup's llvm-tools component puts it (present or not).
rustup_profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
profdata=""
for candidate in "$rustup_profdata" "llvm-profdata-$llvm_major" llvm-profdata; do
  if command -v "$candidate" >/dev/null && matches "$candidate"; then
    profdata=$candidate
    break
  fi
done
if [ -z "$profdata" ] && command -v rustup >/dev/null \
  && rustup component add llvm-tools >&2 && matches "$rustup_profdata"; then
  profdata=$rustup_profdata
fi
if [ -z "$profdata" ]; then
  [ "$(id -u)" = 0 ] || die "need llvm-profdata $llvm_major (rustup component add llvm-tools, or Debian's llvm-$llvm_major)"
  echo "pgo: installing llvm-$llvm_major (Debian) for llvm-profdata" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$llvm_major" >/dev/null
  profdata=llvm-profdata-$llvm_major
fi
echo "pgo: llvm-profdata: $profdata" >&2

# shellcheck disable=SC2206
cargo_flags=(${CARGO_FLAGS:-})
build() { (cd "$ROOT" && nice -n 10 cargo build --release -q "${cargo_flags[@]}" "$@"); }

echo "pgo: 1/3 instrumented build (target/pgo-generate), the trainer (target/release)" >&2
build -p control-plane -p gateway-benches --bin control-plane --bin train-load
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PROFILES" CARGO_TARGET_DIR="$ROOT/target/pgo-generate" \
  build -p data-plane --bin data-plane

echo "pgo: 2/3 training (benches/src/bin/train-load.rs)" >&2
# Only the data plane is instrumented; %p keeps one file per process. A run's counts are its
# own: an earlier run's files would be merged with them.
rm -rf "$PROFILES"
LLVM_PROFILE_FILE="$PROFILES/data-plane-%p.profraw" \
  "$ROOT/target/release/train-load" "$ROOT/target/pgo-generate/release/data-plane" >&2
compgen -G "$PROFILES/data-plane-*.profraw" >/dev/null || die "the data plane wrote no profile"
"$profdata" merge -o "$WORK/data-plane.profdata" "$PROFILES"/data-plane-*.profraw

echo "pgo: 3/3 optimised build (target/pgo)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$WORK/data-plane.profdata" CARGO_TARGET_DIR="$ROOT/target/pgo" \
  build -p data-plane --bin data-plane
cp "$WORK/data-plane.profdata" "$ROOT/target/pgo/data-plane.profdata"
echo "$ROOT/target/pgo/release/data-plane"
