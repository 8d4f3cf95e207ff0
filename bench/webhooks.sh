#!/usr/bin/env bash
# The webhook benchmark, in one invocation on this machine, against one
# `zoftoken serve` whose service `bench` delivers every event to `webhook-sink` (a local
# keep-alive receiver that verifies every signature and measures the latency from the event's
# time to its arrival):
#   1. throughput, delivery alone: with delivery paused (`webhook_threads: 0`) the load
#      generator sends OPEN/CLOSE (each an event) at RATE for DURATION; the server is
#      restarted with its pipeline and delivers the backlog from the durable outbox; the
#      sink's distinct events per second from first to last arrival       → events_per_sec
#   1b. throughput, live: the same load while the pipeline delivers (the generator, the
#      server's UDP path and the pipeline share the cores)                → events_per_sec_live
#   2. latency: OPENs at 1 000/s (1 000 events/s) for DURATION           → p99_ms
#   3. UDP cost of the webhooks: a STATUS-only generator flat out beside a second generator
#      making 1 000 events/s (OPENs), once while a webhook delivers those events and once
#      with the same traffic on a service without webhook, so that only the webhooks
#      differ (outbox writes and delivery)                                → udp_ratio
#   3b. the same STATUS flood alone, without the event traffic: the stricter comparison,
#      which also charges the 1 000 OPENs/s themselves (state changes, their durable
#      writes, the second generator) to the webhooks       → udp_ratio_vs_status_alone
#      (3 and 3b alternate ROUNDS times; medians)
# The generators at 1 000/s send in groups of 10 every 10 ms (`--burst 10`): one at a time
# the generator would wake 1 000 times a second on the machine it measures (the phones it
# stands for are not on the server's machine).
# Ends with one JSON line:
#   {"events_per_sec":…,"p99_ms":…,"udp_ratio":…,"events_per_sec_live":…,"udp_ratio_vs_status_alone":…}
# Knobs (environment): TOKENS (100000), DURATION (s, 10), RATE (30000), IO (mmsg),
# THREADS (UDP IO threads, 2), WEBHOOK_THREADS (1), ROUNDS (alternations of step 3, 5),
# WINDOW (requests in flight of the STATUS flood, 256).
# The STATUS flood keeps 256 requests in flight: it stands for many phones, which do not
# wait for each other's answers. With 64 its rate follows the round trip, and each time
# another thread delays the IO thread for a moment the flood stops instead of queueing, so
# the rate falls by more than the CPU the other thread took (BENCHMARKS.md has both).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/median.sh
./scripts/setup.sh >&2
tokens="${TOKENS:-100000}"
duration="${DURATION:-10}"
rate="${RATE:-30000}"
io="${IO:-mmsg}"
threads="${THREADS:-2}"
hook_threads="${WEBHOOK_THREADS:-1}"
rounds="${ROUNDS:-5}"
window="${WINDOW:-256}"
target="${CARGO_TARGET_DIR:-target}"
. scripts/release-build.sh
release_build zoftoken-loadgen webhook-sink zoftoken
loadgen=$(realpath "$target/release/zoftoken-loadgen")
sink=$(realpath "$target/release/webhook-sink")
zoftoken=$(realpath "${ZOFTOKEN:-$target/release/zoftoken}")
work="${BENCH_DIR:-$target/webhooks-bench}"
mkdir -p "$work"
port_udp=47922
port_http=47923
port_sink=47924
secret="bench-webhook-secret-0123456789"
# /metrics needs an unrestricted admin key (its counters are not public): a fresh one per run.
metrics_key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
write_config() { # webhook threads (0: delivery paused; off: the service has no webhook)
  local hook="    webhook: { url: \"http://127.0.0.1:$port_sink/hook\", secret: \"$secret\" }"
  local pipeline="$1"
  if [ "$1" = off ]; then hook=""; pipeline=1; fi
  cat > "$work/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:$port_udp"], http: "127.0.0.1:$port_http" }
data_dir: data
io_threads: $threads
webhook_threads: $pipeline
authkeys:
  - { name: bench-metrics, secret: "$metrics_key", admin: true }
services:
  - name: bench
    window: 600
    endpoints: ["127.0.0.1:$port_udp"]
$hook
CONFIG
}
write_config "$hook_threads"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); io=$io threads=$threads webhook_threads=$hook_threads tokens=$tokens window=$window" >&2
if [ "$(cat "$work/prepared" 2>/dev/null)" != "$tokens" ]; then
  rm -rf "$work/data" "$work/prepared" "$work"/counters-*
  (cd "$work" && "$zoftoken" --config config.yaml loadgen prepare --tokens "$tokens" >&2)
  echo "$tokens" > "$work/prepared"
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

sink_pid=""
start_sink() {
  "$sink" --listen "127.0.0.1:$port_sink" --secret "$secret" > "$1" 2>/dev/null &
  sink_pid=$!
  pids+=("$sink_pid")
  sleep 0.3
}
stop_sink() { # when the pipeline holds nothing more for 2 s (or after 60 s): the summary
  # One poller process for the whole wait (a process per poll would take CPU from the
  # pipeline being measured).
  python3 - "$port_http" "$metrics_key" <<'PY' || true
import sys, time, urllib.request
idle, deadline = 0, time.monotonic() + 60
while idle < 10 and time.monotonic() < deadline:
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/metrics",
                                     headers={"Authorization": f"Bearer {sys.argv[2]}"})
        text = urllib.request.urlopen(req).read().decode()
        vals = [float(l.split()[-1]) for l in text.splitlines()
                if l.startswith("zoftoken_webhook_queue_depth")]
        depth = int(sum(vals)) if vals else 0
    except OSError:
        depth = 1
    idle = idle + 1 if depth == 0 else 0
    time.sleep(0.2)
PY
  kill -TERM "$sink_pid"; wait "$sink_pid" || true
}
# Two disjoint token ranges, each with its own counters: the event generators use the last
# 1 000 tokens, the STATUS generator the others, so that running side by side they never
# disturb each other's counters.
events_load() { # extra args → JSON line
  "$loadgen" --endpoint "127.0.0.1:$port_udp" --service bench --tokens "$tokens" \
    --first-token $((tokens - 1000)) --counters "$work/counters-events" \
    --master-key-file "$work/data/master.key" --duration "$duration" --json "$@" 2>/dev/null | tail -1
}
status_load() {
  "$loadgen" --endpoint "127.0.0.1:$port_udp" --service bench --tokens $((tokens - 1000)) \
    --counters "$work/counters-status" --duration "$duration" --mix 100/0/0 --window "$window" \
    --json 2>/dev/null | tail -1
}

log="$work/serve.log"
server_pid=""
start_server() {
  (cd "$work" && ZOFTOKEN_IO="$io" exec "$zoftoken" --config config.yaml serve) 2> "$log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 600); do grep -q "serving UDP" "$log" && break; sleep 0.1; done
  grep -E "loaded|serving" "$log" >&2
}
stop_server() { kill -TERM "$server_pid"; wait "$server_pid" || true; }

# 1. Throughput of delivery alone: a backlog made while delivery is paused, then delivered.
write_config 0
start_server
gen=$(events_load --rate "$rate" --mix 0/50/50 --window 256)
echo "generator (delivery paused): $gen" >&2
stop_server
write_config "$hook_threads"
start_sink "$work/sink-backlog.json"
start_server
stop_sink
tp=$(cat "$work/sink-backlog.json")
echo "sink (backlog): $tp" >&2

# 1b. Throughput while the load that makes the events runs.
start_sink "$work/sink-throughput.json"
gen=$(events_load --rate "$rate" --mix 0/50/50 --window 256)
echo "generator: $gen" >&2
stop_sink
live=$(cat "$work/sink-throughput.json")
echo "sink (live): $live" >&2

# 2. Latency at 1 000 events/s.
start_sink "$work/sink-latency.json"
gen=$(events_load --rate 1000 --burst 10 --mix 0/100/0)
echo "generator: $gen" >&2
stop_sink
lat=$(cat "$work/sink-latency.json")
echo "sink (1 000/s): $lat" >&2

# 3. The UDP rate alone, with 1 000 events/s delivered, and with the same traffic on a
#    service without webhook (a restart), alternated ROUNDS times so that the machine's
#    background, RocksDB compactions included, falls on every side alike; the medians are
#    compared.
status_beside_events() { # the STATUS flood beside 1 000 OPENs/s (events) → its JSON line
  events_load --rate 1000 --burst 10 --mix 0/100/0 > "$work/events-load.json" &
  local ev_pid=$!
  status_load
  wait "$ev_pid"
}
alones=()
withs=()
offs=()
for round in $(seq 1 "$rounds"); do
  alones+=("$(status_load)")
  echo "udp alone ($round):             ${alones[-1]}" >&2
  start_sink "$work/sink-beside.json"
  withs+=("$(status_beside_events)")
  echo "udp with webhooks ($round):     ${withs[-1]}" >&2
  stop_sink
  echo "sink (beside): $(cat "$work/sink-beside.json")" >&2
  stop_server
  write_config off
  start_server
  offs+=("$(status_beside_events)")
  echo "udp with events, no webhook ($round): ${offs[-1]}" >&2
  stop_server
  write_config "$hook_threads"
  start_server
done
alone=$(median_by answered_pps "${alones[@]}")
with=$(median_by answered_pps "${withs[@]}")
off=$(median_by answered_pps "${offs[@]}")
stop_server

python3 - "$tp" "$lat" "$alone" "$with" "$live" "$off" <<'PY'
import json, sys
tp, lat, alone, with_, live, off = (json.loads(a) for a in sys.argv[1:7])
for name, s in (("backlog", tp), ("live", live), ("latency", lat)):
    if s["bad_signature"] or s["bad_body"]:
        sys.exit(f"{name}: {s['bad_signature']} bad signatures, {s['bad_body']} bad bodies")
ratio = with_["answered_pps"] / off["answered_pps"]
ratio_alone = with_["answered_pps"] / alone["answered_pps"]
print(f"{tp['events_per_sec']:.0f} events/s delivered from a backlog, {live['events_per_sec']:.0f}/s live; p99 {lat['latency_ms']['p99']} ms at 1 000 events/s; STATUS flood beside 1 000 OPENs/s: {with_['answered_pps']:.0f}/s with webhooks, {off['answered_pps']:.0f}/s without (ratio {ratio:.3f}); STATUS alone {alone['answered_pps']:.0f}/s (ratio {ratio_alone:.3f})", file=sys.stderr)
print(json.dumps({"events_per_sec": round(tp["events_per_sec"]), "p99_ms": lat["latency_ms"]["p99"], "udp_ratio": round(ratio, 3), "events_per_sec_live": round(live["events_per_sec"]), "udp_ratio_vs_status_alone": round(ratio_alone, 3)}, separators=(",", ":")))
PY
