#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, vector and integration tests.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# One profile (dev) for every test, so heavy dependencies are compiled once.
cargo test --workspace --locked
