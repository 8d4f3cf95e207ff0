#!/usr/bin/env bash
# The storage measurement, in one run on this machine:
#   - engine packets/s with persistence on (each receive batch of 32 packets group-committed
#     to RocksDB, WAL without fsync, before its replies could leave) as a ratio of the same
#     engine without persistence, interleaved in the same run, 1 M tokens, realistic mix; the
#     same with fsync per write (fewer packets). The server's way: with a core left over, a
#     writer thread commits pipelined with processing; with every core processing packets,
#     each processing thread commits inline (`wal-inline` is always inline, for comparison);
#   - start-up: a database of 1 M (and, with STARTUP=1000000,10000000, 10 M) tokens reopened
#     and loaded into a new engine with 2 threads.
# Built in the release profile, whose RocksDB is the one the tests use (compiled once). Ends
# with one JSON line:
#   {"persist_ratio":…,"fsync_ratio":…,"startup_1m_s":…}
# Usage: bench/storage.sh [packets per round, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
packets="${1:-1000000}"
startup="${STARTUP:-1000000}"
. scripts/release-build.sh
release_build storage-bench
bin="${CARGO_TARGET_DIR:-target}/release/storage-bench"
dir="${BENCH_DIR:-${CARGO_TARGET_DIR:-target}/storage-bench-data}"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
# One processing thread (the writer thread gets the other core), then two (inline commits).
two=$("$bin" --threads 2 --packets "$packets" --rounds 3 --startup "" --dir "$dir")
echo "$two" | head -1 >&2
one=$("$bin" --threads 1 --packets "$packets" --rounds 3 --startup "$startup" --dir "$dir")
echo "$one" | sed '$d' >&2
echo "$one" | tail -1
