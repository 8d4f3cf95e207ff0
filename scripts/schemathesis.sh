#!/usr/bin/env bash
# Property-based conformance of the HTTP API with its OpenAPI document (api/openapi.json):
# Schemathesis generates requests from the document (valid and invalid ones) against a live
# `zoftoken serve` (127.0.0.1 only, a temporary data directory, database mode, an
# unrestricted admin key) and checks every answer: no server error, documented status codes,
# content types, headers and schemas, invalid input refused. Not part of ./scripts/test.sh.
# Schemathesis is installed into a Python venv on first use. Two checks are left out because
# they contradict documented behaviour: after 20 requests without a key from one address the
# API answers 429, not 401 (`missing_required_header`, `ignored_auth`; api/tests/api.rs
# covers 401 and 429). Requests may take up to 65 s: a status long poll (`?wait=`) answers
# after at most 60 s when nothing changes. What it still reports are rules that JSON Schema
# cannot say, each refused with a documented 400: a webhook URL in plain http:// only to a
# loopback address or with `allow_insecure_http`, a `shared_token` different from the signing
# secrets, masks that are regular expressions.
# Knobs (environment): MAX_EXAMPLES (per operation, 100), PORT_HTTP (47981), PORT_UDP (47980),
# SCHEMATHESIS_VENV (venv directory), and extra arguments are passed to `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
. scripts/release-build.sh
release_build zoftoken
zoftoken=$(realpath "$target/release/zoftoken")
venv="${SCHEMATHESIS_VENV:-$target/schemathesis-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet schemathesis
fi
port_http="${PORT_HTTP:-47981}"
port_udp="${PORT_UDP:-47980}"
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:$port_udp"], http: "127.0.0.1:$port_http" }
data_dir: data
config_source: database
CONFIG
zt() { (cd "$work" && "$zoftoken" --config config.yaml "$@"); }
zt service create bank --endpoint "127.0.0.1:$port_udp" >/dev/null
key=$(zt --json authkey create schemathesis --admin |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
(cd "$work" && exec "$zoftoken" --config config.yaml serve 2> serve.log) &
pid=$!
for _ in $(seq 1 100); do
  grep -q "serving" "$work/serve.log" 2>/dev/null && break
  sleep 0.2
done
grep -q "serving" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
"$venv/bin/schemathesis" run "http://127.0.0.1:$port_http/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --exclude-checks missing_required_header,ignored_auth \
  --max-examples "${MAX_EXAMPLES:-100}" \
  --request-timeout 65 \
  "$@"
