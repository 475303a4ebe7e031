#!/usr/bin/env bash
# A data plane built with profile-guided optimisation (PGO), trained on the peers.sh routes.
#
#   benches/load/pgo.sh                          builds target/pgo/release/data-plane, prints its path
#   DP_BIN=target/pgo/release/data-plane benches/load/peers.sh      measures it beside the peers
#
# Three steps: a data plane built with -Cprofile-generate serves the plain proxy, aggregation
# and plugin routes under wrk (`PROFILE=train benches/load/peers.sh`, DURATION seconds each,
# default 10); llvm-profdata merges what it counted; the data plane is built again with
# -Cprofile-use, so hot code is laid out together and cold code out of the way. The proxy's
# user time is a minority of its CPU but the part spent waiting on instruction fetches is large
# (see the README, "P1"). Two full release builds: ~10 minutes on 2 cores (the instrumented
# one is reused by later runs of unchanged code). Needs llvm-profdata of the LLVM rustc was
# built with: rustup's llvm-tools component (added if missing), else Debian's llvm-NN
# (installed when root).
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

echo "pgo: 1/3 instrumented build (target/pgo-generate)" >&2
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PROFILES" \
  CARGO_TARGET_DIR="$ROOT/target/pgo-generate" \
  cargo build --release -q -p data-plane --bin data-plane)

echo "pgo: 2/3 training on the peers.sh routes" >&2
# Only the data plane is instrumented; %p keeps one file per process. A run's counts are its
# own: an earlier run's files would be merged with them.
rm -rf "$PROFILES"
LLVM_PROFILE_FILE="$PROFILES/data-plane-%p.profraw" PROFILE=train \
  DP_BIN="$ROOT/target/pgo-generate/release/data-plane" "$ROOT/benches/load/peers.sh"
compgen -G "$PROFILES/data-plane-*.profraw" >/dev/null || die "the data plane wrote no profile"
"$profdata" merge -o "$WORK/data-plane.profdata" "$PROFILES"/data-plane-*.profraw

echo "pgo: 3/3 optimised build (target/pgo)" >&2
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$WORK/data-plane.profdata" \
  CARGO_TARGET_DIR="$ROOT/target/pgo" \
  cargo build --release -q -p data-plane --bin data-plane)
cp "$WORK/data-plane.profdata" "$ROOT/target/pgo/data-plane.profdata"
echo "$ROOT/target/pgo/release/data-plane"
