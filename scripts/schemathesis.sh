#!/usr/bin/env bash
# Holds the admin API to its OpenAPI document: starts a control plane on a fresh SQLite file and
# ephemeral ports, and runs schemathesis against /api/v1/openapi.json with every check (status
# codes, headers, response schemas, schema-valid bodies accepted, schema-invalid ones refused,
# …), a bounded number of examples per operation and a fixed seed, so that a run is repeatable
# and takes about three minutes on two cores (most of it the coverage phase, which the example
# count does not bound; `timeout` caps a run that hangs). Any finding fails the script.
#
# Needs target/debug/control-plane (scripts/test.sh builds it; CONTROL_PLANE_BIN overrides).
# SCHEMATHESIS_MAX_EXAMPLES and SCHEMATHESIS_SEED widen or vary a run by hand. `--install`
# installs the pinned schemathesis and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: a new schemathesis brings new checks, which deserve a change of their own.
version=4.32.5
bin=${CONTROL_PLANE_BIN:-target/debug/control-plane}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-15}
seed=${SCHEMATHESIS_SEED:-20261206}

if [ "$(schemathesis --version 2> /dev/null)" != "schemathesis, version $version" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi
# `--install`: only the above (.ci/run installs the tools before the suite starts).
[ "${1:-}" = "--install" ] && exit 0
[ -x "$bin" ] || { echo "$bin is missing: cargo build --bin control-plane" >&2; exit 1; }

work=$(mktemp -d)
cp_pid=
cleanup() {
  # Only what this script started, by its pid.
  if [ -n "$cp_pid" ]; then
    kill "$cp_pid" 2> /dev/null || true
    wait "$cp_pid" 2> /dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

token=st-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
"$bin" --database-url "sqlite://$work/schemathesis.db?mode=rwc" --admin-token "$token" \
  --admin-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 > "$work/cp.out" 2> "$work/cp.log" &
cp_pid=$!
admin_url=
for _ in $(seq 1 100); do
  admin_url=$(sed -n 's/^admin_url=//p' "$work/cp.out")
  [ -n "$admin_url" ] && break
  kill -0 "$cp_pid" 2> /dev/null || { cat "$work/cp.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$admin_url" ] || { echo "the control plane did not start" >&2; cat "$work/cp.log" >&2; exit 1; }

# A run that loses its token tests nothing past that point, yet passes: fail on that warning.
cat > "$work/schemathesis.toml" << 'TOML'
[warnings]
fail-on = ["missing_auth"]

# A certificate's PEM must parse, its key match its leaf certificate and each SNI be one of
# that certificate's names: no JSON Schema can say so (the OpenAPI document says it in words),
# so a schema-valid certificate a generator makes up is refused with 400, and so is a whole
# config or a validation that holds one. Only the operations that take a certificate expect
# that 400 of valid-looking data; everywhere else the check stays as strict as it is.
[[operations]]
include-path-regex = "^/api/v1/(certificates|validate/certificates?|config)$|^/api/v1/certificates/"
include-method = ["POST", "PUT", "PATCH"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
TOML

# `timeout` bounds a run that hangs; the examples bound a normal one. Revoking a token is left
# out: the run would revoke its own (tests/tests/tokens.rs covers that endpoint). One worker:
# with two, CPython 3.11's compiler is not thread-safe for what hypothesis parses on the fly
# ("AST constructor recursion depth mismatch", a KeyError in linecache), and the run fails
# with a runtime error that is no finding.
status=0
(cd "$work" && timeout 480 schemathesis --config-file "$work/schemathesis.toml" \
  run "$admin_url/api/v1/openapi.json" \
  --checks all \
  --exclude-path '/api/v1/tokens/{name}' \
  --header "Authorization: Bearer $token" \
  --max-examples "$max_examples" \
  --seed "$seed" \
  --workers 1 \
  --no-color) || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found the admin API and its OpenAPI document disagreeing (exit $status)" >&2
  echo "control-plane log (last lines):" >&2
  tail -n 20 "$work/cp.log" >&2
fi
exit "$status"
