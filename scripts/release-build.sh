#!/usr/bin/env bash
# Builds the named binaries in the release profile, the build users run and every benchmark
# measures. Sourced by ./scripts/run.sh and bench/*.sh: `release_build zoftoken udp-echo …`.
# Always with `--workspace`: Cargo then resolves features for every member, exactly as the
# test build does, so the dependencies (RocksDB's C++ above all) are the ones already compiled
# for the tests (`cargo test --profile bench` shares target/release; see Cargo.toml). Building
# one package alone (`-p`) can unify features differently and compile them again.
release_build() {
  local args=()
  for bin in "$@"; do args+=(--bin "$bin"); done
  cargo build --release --locked --workspace "${args[@]}" >&2
}

# As `release_build`, and fails if Cargo had to compile librocksdb-sys (it must reuse the
# test build's).
release_build_reusing_rocksdb() {
  local args=() out
  for bin in "$@"; do args+=(--bin "$bin"); done
  out=$(cargo build --release --locked --workspace "${args[@]}" --message-format=json-render-diagnostics) || exit 1
  ! grep -F '"reason":"compiler-artifact"' <<<"$out" | grep -F 'librocksdb-sys@' | grep -qF '"fresh":false'
}
