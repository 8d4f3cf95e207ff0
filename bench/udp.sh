#!/usr/bin/env bash
# The UDP measurement, in one invocation on this machine: the load generator
# (flat out, then at half the server's maximum for the latency) against
#   1. `udp-echo`, the baseline: the same sockets, batching and driver, no crypto, no state;
#   2. `zoftoken serve` with 1 million tokens (written by `zoftoken loadgen prepare`), WAL
#      group commit before every reply;
#   3. the floor: `udp-echo --aead --entries 1000000 --log …`, the echo server doing the work
#      every server of this protocol must do (one AEAD open and seal, a read and write of a
#      224-byte entry in a table of a million, one log write per batch before the echo). Not
#      part of the target: it tells how much of the gap to the echo server the mandatory work
#      explains (`floor_ratio`) and how much is zoftoken's own.
# The generator does the same work per packet in both runs (seals real requests, with the
# PIN proofs of OPENs under keys from the server's master key, tries to open every reply; an
# echoed request fails to open and is counted as an echo).
# Ends with one JSON line: {"echo_pps":…,"zoftoken_pps":…,"ratio":…,"p99_us":…,"floor_pps":…,
# "floor_ratio":…,"echo_p99_us":…,"floor_p99_us":…} (the last two: the echo server's and the
# floor's p99 at zoftoken's half rate, the machine's own latency there; not targets).
# Knobs (environment): TOKENS (1000000), DURATION (s, 10), IO (mmsg|uring|auto, mmsg),
# THREADS (server and echo IO threads, 2), LOADGEN_THREADS (1), WINDOW (64), ROUNDS (3:
# alternations of echo and zoftoken, medians compared), ZOFTOKEN (a `zoftoken` binary to
# measure instead of this tree's build, for a same-run comparison with an older build).
# The token set's counters continue from run to run (`--counters`), as a phone's do.
#
# BACKEND=postgres: zoftoken on PostgreSQL against zoftoken on RocksDB instead (the echo
# server and the floor are not run): both servers hold the same TOKENS, the generator
# alternates between them ROUNDS times for each mix of MIXES (status/open/close, default
# "100/0/0 95/3/2 60/20/20": STATUS only, the realistic mix, a write-heavy one), and the last
# line is {"backend":"postgres","window":…,"status_ratio":…,"mix_ratio":…,
# "mix_60_20_20_ratio":…, and per mix "<name>_rocksdb_pps", "<name>_postgres_pps" and both
# p99s} (medians of the rounds; mix_ratio is the 95/3/2 one). The
# PostgreSQL server is a throwaway cluster of Debian's package (initdb + pg_ctl, fsync on,
# synchronous commit, a loopback port) in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/median.sh
./scripts/setup.sh >&2
tokens="${TOKENS:-1000000}"
duration="${DURATION:-10}"
io="${IO:-mmsg}"
threads="${THREADS:-2}"
lg_threads="${LOADGEN_THREADS:-1}"
window="${WINDOW:-64}"
rounds="${ROUNDS:-3}"
target="${CARGO_TARGET_DIR:-target}"
. scripts/release-build.sh
release_build udp-echo zoftoken-loadgen zoftoken
echo_bin=$(realpath "$target/release/udp-echo")
loadgen=$(realpath "$target/release/zoftoken-loadgen")
zoftoken=$(realpath "${ZOFTOKEN:-$target/release/zoftoken}")
work="${BENCH_DIR:-$target/udp-bench}"
mkdir -p "$work"
port_echo=47901
port_zt=47902
port_floor=47904
cat > "$work/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:$port_zt"], http: "127.0.0.1:47903" }
data_dir: data
io_threads: $threads
services:
  - name: bench
    window: 600
    endpoints: ["127.0.0.1:$port_zt"]
CONFIG
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); io=$io threads=$threads loadgen_threads=$lg_threads window=$window tokens=$tokens" >&2
if [ "$(cat "$work/prepared" 2>/dev/null)" != "$tokens" ]; then
  rm -rf "$work/data" "$work/prepared" "$work/counters"
  (cd "$work" && "$zoftoken" --config config.yaml loadgen prepare --tokens "$tokens" >&2)
  echo "$tokens" > "$work/prepared"
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

run_load() { # endpoint, extra args… → the JSON line
  "$loadgen" --endpoint "$1" --service bench --tokens "$tokens" --threads "$lg_threads" \
    --window "$window" --duration "$duration" --master-key-file "$work/data/master.key" \
    --json "${@:2}" 2>/dev/null | tail -1
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

if [ "${BACKEND:-rocksdb}" = postgres ]; then
  . bench/udp-postgres.sh
  exit 0
fi

# The servers run side by side (an idle one only waits in its receive call) and the
# generator alternates between them ROUNDS times, so that the machine's background falls on
# every side alike; the medians are compared.
"$echo_bin" --listen "127.0.0.1:$port_echo" --threads "$threads" --io "$io" >&2 &
pids+=($!)
"$echo_bin" --listen "127.0.0.1:$port_floor" --threads "$threads" --io "$io" \
  --aead --entries "$tokens" --log "$work/floor-log" >&2 &
pids+=($!)
log="$work/serve.log"
(cd "$work" && ZOFTOKEN_IO="$io" exec "$zoftoken" --config config.yaml serve) 2> "$log" &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 1 600); do grep -q "serving UDP" "$log" && break; sleep 0.1; done
grep -E "loaded|serving" "$log" >&2
echos=()
zts=()
floors=()
for round in $(seq 1 "$rounds"); do
  echos+=("$(run_load "127.0.0.1:$port_echo")")
  echo "echo ($round):     ${echos[-1]}" >&2
  zts+=("$(run_load "127.0.0.1:$port_zt" --counters "$work/counters")")
  echo "zoftoken ($round): ${zts[-1]}" >&2
  floors+=("$(run_load "127.0.0.1:$port_floor")")
  echo "floor ($round):    ${floors[-1]}" >&2
done
echo_json=$(median_by answered_pps "${echos[@]}")
zt_json=$(median_by answered_pps "${zts[@]}")
floor_json=$(median_by answered_pps "${floors[@]}")
# The latency at half the median maximum, ROUNDS times; the run with the median p99. The
# echo server and the floor at the same rate, alternated with it, give the machine's own
# latency at that rate (context, not part of the target).
zt_pps=$(field "$zt_json" answered_pps)
half=$(( ${zt_pps%.*} / 2 ))
halves=()
echo_halves=()
floor_halves=()
for round in $(seq 1 "$rounds"); do
  halves+=("$(run_load "127.0.0.1:$port_zt" --rate "$half" --counters "$work/counters")")
  echo "zoftoken at $half/s ($round): ${halves[-1]}" >&2
  echo_halves+=("$(run_load "127.0.0.1:$port_echo" --rate "$half")")
  echo "echo at $half/s ($round):     ${echo_halves[-1]}" >&2
  floor_halves+=("$(run_load "127.0.0.1:$port_floor" --rate "$half")")
  echo "floor at $half/s ($round):    ${floor_halves[-1]}" >&2
done
half_json=$(median_by p99_us "${halves[@]}")
echo_half_json=$(median_by p99_us "${echo_halves[@]}")
floor_half_json=$(median_by p99_us "${floor_halves[@]}")
kill -TERM "$server_pid"
wait "$server_pid" || true
tail -3 "$log" >&2

python3 - "$echo_json" "$zt_json" "$half_json" "$floor_json" "$echo_half_json" "$floor_half_json" <<'PY'
import json, sys
echo, zt, half, floor, echo_half, floor_half = (json.loads(a) for a in sys.argv[1:7])
e, z, f = echo["answered_pps"], zt["answered_pps"], floor["answered_pps"]
print(f"echo {e:.0f}/s, zoftoken {z:.0f}/s, ratio {z / e:.3f}; p99 at half rate {half['p99_us']} µs (lost {half['lost']}; echo {echo_half['p99_us']} µs, floor {floor_half['p99_us']} µs at that rate); floor {f:.0f}/s, {f / e:.3f} of echo", file=sys.stderr)
print(json.dumps({"echo_pps": round(e), "zoftoken_pps": round(z), "ratio": round(z / e, 3), "p99_us": half["p99_us"], "floor_pps": round(f), "floor_ratio": round(f / e, 3), "echo_p99_us": echo_half["p99_us"], "floor_p99_us": floor_half["p99_us"]}, separators=(",", ":")))
PY
