#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian machine (idempotent, quiet when all is there).
# The Rust toolchain itself comes with the machine image (rustup); this checks for it.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust 1.85 or newer (https://rustup.rs) and run again." >&2
  exit 1
fi

# Debian packages the build needs: C and C++ compilers (ring; RocksDB, which the storage crate
# builds from source), libclang-dev (RocksDB's bindings are generated with bindgen), pkg-config;
# Python 3 with venv for the independent SPEC implementation in proto-spec/interop/;
# PostgreSQL's server programs (`initdb`, `pg_ctl`, `psql`) for the tests of the PostgreSQL
# backend, which start throwaway clusters of their own (the package's system service is not
# used); openssl makes the test certificates of the TLS tests.
needed=(gcc g++ libc6-dev pkg-config libclang-dev postgresql openssl)
missing=()
for pkg in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! python3 -m venv --help >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
