#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property, vector and integration tests), then the
# independent Python implementation of SPEC.md against the vectors.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

# The `bench` profile: our crates with debug assertions and overflow checks, every dependency
# exactly as in the release build and in the same directory, so dependencies (RocksDB's C++
# above all) are compiled once for the tests, ./scripts/run.sh and the benchmarks.
cargo test --workspace --locked --profile bench

# The release server (./scripts/run.sh, the benchmarks), built now so that a mismatch fails
# here: it must find RocksDB already compiled by the test build above. If a dependency change
# makes Cargo resolve the two builds differently, this says so instead of silently compiling
# RocksDB's C++ a second time (see Cargo.toml, "Three profiles").
. scripts/release-build.sh
if ! release_build_reusing_rocksdb zoftoken; then
  echo "error: the release build compiled RocksDB again; the test and release builds resolve its" >&2
  echo "dependencies differently (compare \`cargo tree -e features\` of both)." >&2
  exit 1
fi

# SPEC.md interoperability: a second implementation, written from the SPEC alone.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/zoftoken/interop-venv"
req=proto-spec/interop/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
"$venv/bin/python" proto-spec/interop/verify_vectors.py
