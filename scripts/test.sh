#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property, vector and integration tests), then the
# independent Python implementation of SPEC.md against the vectors.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

# One profile (dev) for every test, so heavy dependencies are compiled once.
cargo test --workspace --locked

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
