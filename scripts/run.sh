#!/usr/bin/env bash
# Starts the server on the embedded default: RocksDB under ./data, the demo configuration
# (config/demo.yaml), a master key generated into ./data/master.key on the first start, and,
# for the demo only, an admin authkey for the HTTP API whose secret goes to
# ./data/demo-admin.authkey (README.md, "Quick start", shows the first API call with it).
# Built exactly as the tests build (dev profile, whole workspace with all targets, the hot
# crates optimised: see Cargo.toml), so RocksDB's C++ library is compiled once and shared
# with ./scripts/test.sh and the benchmarks: building one package alone unifies features
# differently and would compile RocksDB a second time.
# Usage: ./scripts/run.sh [extra arguments for `zoftoken serve`]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --locked --all-targets
target="${CARGO_TARGET_DIR:-target}"
exec "$target/debug/zoftoken" --config config/demo.yaml serve "$@"
