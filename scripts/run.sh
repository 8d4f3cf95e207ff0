#!/usr/bin/env bash
# Runs the main job. Until the UDP server lands this is the protocol demo: enrollment, pairing
# and every basic device operation through the real codec, in one process.
# Usage: ./scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --locked --release -p zoftoken-device --example demo
