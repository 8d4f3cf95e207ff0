#!/usr/bin/env bash
# Starts the server on the embedded default: RocksDB under ./data, the demo configuration
# (config/demo.yaml), a master key generated into ./data/master.key on the first start.
# Built in the dev profile, like the tests, so RocksDB is compiled once (the hot crates are
# optimised in that profile; see Cargo.toml).
# Usage: ./scripts/run.sh [extra arguments for `zoftoken serve`]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --locked -p zoftoken-server --bin zoftoken -- --config config/demo.yaml serve "$@"
