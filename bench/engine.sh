#!/usr/bin/env bash
# The engine measurement, in one run on this machine:
#   - packets/s on one and on two threads, 1 million resident tokens, realistic mix
#     (STATUS 60 %, OPEN 20 %, CLOSE 20 %; another with MIX=open or MIX=S/O/C), each packet
#     fully processed (parse, open, state change, seal of the reply), in receive batches of
#     32 with table prefetch;
#   - packets/s on one thread when every packet is an OPEN (each with its PIN index and
#     proof: the server derives the token's PIN root and the request's PIN key), pps_open_1t;
#   - the cost of one ChaCha20-Poly1305 open + seal of the same sizes, in the same run;
#   - resident bytes per token at 1 M and 10 M tokens (RSS before and after loading);
#   - the floor on the same one-thread streams: the AEAD open and seal plus a read and write
#     of one 224-byte entry in a table of 1 M per packet, no engine (context, not a target).
# Ends with one JSON line:
#   {"pps_1t":…,"pps_2t":…,"pps_open_1t":…,"aead_ns":…,"ns_per_packet":…,"bytes_per_token":…,"floor_pps":…,
#    "floor_ns":…}
# where bytes_per_token is the 10 M figure (the target's size).
# Usage: bench/engine.sh [packets per round, default 2000000]
# ENGINE_BENCH: an `engine-bench` binary to measure instead of this tree's build (an older
# build, for a same-run comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
packets="${1:-2000000}"
. scripts/release-build.sh
release_build engine-bench
bin="${ENGINE_BENCH:-${CARGO_TARGET_DIR:-target}/release/engine-bench}"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
run_1m=$("$bin" --tokens 1000000 --packets "$packets" --rounds 3 --mix "${MIX:-realistic}")
echo "$run_1m" | head -1 >&2
mem_10m=$("$bin" --tokens 10000000 --memory-only)
echo "$mem_10m" | head -1 >&2

json_1m=$(echo "$run_1m" | tail -1)
bpt_10m=$(echo "$mem_10m" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_per_token"])')
echo "$json_1m" | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["bytes_per_token"] = float(sys.argv[1])
print(json.dumps(r, separators=(",", ":")))' "$bpt_10m"
