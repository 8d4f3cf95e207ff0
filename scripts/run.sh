#!/usr/bin/env bash
# Starts the server on the embedded default: RocksDB under ./data, the demo configuration
# (config/demo.yaml), a master key generated into ./data/master.key on the first start, and,
# for the demo only, an admin authkey for the HTTP API whose secret goes to
# ./data/demo-admin.authkey (README.md, "Quick start", shows the first API call with it).
# The release build (optimised, link-time optimisation), sharing its dependencies with
# ./scripts/test.sh and the benchmarks: RocksDB's C++ library is compiled once for all three.
# Usage: ./scripts/run.sh [extra arguments for `zoftoken serve`]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/release-build.sh
release_build zoftoken
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/zoftoken" --config config/demo.yaml serve "$@"
