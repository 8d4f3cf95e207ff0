#!/usr/bin/env bash
# Formatting and lints, as required before every commit:
#   cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings
# Clippy only checks (nothing is linked), so RocksDB's C++ library is not needed: pointing
# ROCKSDB_LIB_DIR anywhere makes librocksdb-sys skip its 25-minute C++ build in check mode
# (the test build in ./scripts/test.sh compiles and links the real one).
# Usage: ./scripts/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/nonexistent-rocksdb-not-linked-by-clippy}" ROCKSDB_STATIC=1 \
  cargo clippy --locked --workspace --all-targets -- -D warnings
