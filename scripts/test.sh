#!/usr/bin/env bash
# The whole test suite, as CI runs it: format and lint gates (shell scripts parsing, the fuzz
# harness compiling), the binaries the end-to-end tests spawn, every test (store and end-to-end
# tests use the Postgres at DATABASE_URL), the admin API held to its OpenAPI document
# (scripts/schemathesis.sh), and validation of the deploy/ manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

echo "== cargo fmt --check"
cargo fmt --all --check
# The load and profiling scripts run only by hand: at least they must parse.
echo "== shell scripts parse"
for script in scripts/*.sh benches/load/*.sh .ci/run; do bash -n "$script"; done
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The libFuzzer harness is its own workspace (running it needs cargo-fuzz): check that it still
# builds against the data plane's fuzz entries, which exist only under `--cfg fuzzing`.
echo "== tests/fuzz compiles"
cargo fmt --check --manifest-path tests/fuzz/Cargo.toml
# Its lock file must follow the workspace's: after a dependency change, refresh it with
# `cargo check --manifest-path tests/fuzz/Cargo.toml` (without --locked) and commit it.
RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR=target/fuzz-check \
  cargo check --quiet --locked --manifest-path tests/fuzz/Cargo.toml \
  || { echo "tests/fuzz/Cargo.lock is stale or the harness does not build (see above)" >&2; exit 1; }
echo "== cargo doc (links resolve)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== build the binaries the end-to-end tests spawn"
cargo build --workspace --bins --quiet
echo "== tests"
cargo nextest run --workspace --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
# The OpenAPI document and the served schemas against what the server does, generated.
echo "== the admin API against its OpenAPI document (schemathesis)"
bash scripts/schemathesis.sh
echo "== deploy/ manifests"
python3 scripts/validate_manifests.py deploy
