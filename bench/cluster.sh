#!/usr/bin/env bash
# Several servers of one instance on one PostgreSQL database, on this machine:
#   1. the realistic mix (95/3/2 status/open/close) against one server, then against three
#      servers of the same database (the generator sends each request to the next server in
#      turn, so a token's consecutive requests reach different servers), alternated ROUNDS
#      times, medians compared (`three_vs_one_ratio`). On one machine the three servers share
#      its cores with the database and the generator: this measures the overhead of running
#      several (change-feed reads, re-reads of tokens another server changed, conflicts), not
#      how the instance scales with machines;
#   2. the conflicts of those three-server runs: commits refused because another server had
#      changed a token first, per state-changing request answered (`conflict_rate`);
#   3. cross-server visibility of an administrator's block: the block is made through one
#      server's API, and the time from its answer until another server's API answers
#      `blocked` is measured (VISIBILITY samples, unblocked between samples), p50 and p99.
# Ends with one JSON line: {"one_pps":…,"three_pps":…,"three_vs_one_ratio":…,
# "conflicts":…,"conflict_rate":…,"visibility_p50_ms":…,"visibility_p99_ms":…,
# "visibility_samples":…}.
# Knobs (environment): TOKENS (200000), DURATION (s, 8), ROUNDS (3), WINDOW (64), THREADS
# (server IO threads, 1), VISIBILITY (samples, 300), FOLLOW_MS (follow_interval_ms, 10).
# PostgreSQL is a throwaway cluster of Debian's package (initdb + pg_ctl, fsync on,
# synchronous commit, a loopback port) in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/median.sh
./scripts/setup.sh >&2
tokens="${TOKENS:-200000}"
duration="${DURATION:-8}"
rounds="${ROUNDS:-3}"
window="${WINDOW:-64}"
threads="${THREADS:-1}"
samples="${VISIBILITY:-300}"
follow_ms="${FOLLOW_MS:-10}"
target="${CARGO_TARGET_DIR:-target}"
. scripts/release-build.sh
release_build zoftoken-loadgen zoftoken
loadgen=$(realpath "$target/release/zoftoken-loadgen")
zoftoken=$(realpath "$target/release/zoftoken")
work=$(mktemp -d "${TMPDIR:-/tmp}/zoftoken-cluster.XXXXXX")

pg_port=47925
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg_dir=$(mktemp -d /tmp/zoftoken-cluster-pg.XXXXXX)
run_pg() { # program, args… (PostgreSQL refuses to run as root: Debian's postgres user then)
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$pg_bin/$1" "${@:2}"; else "$pg_bin/$1" "${@:2}"; fi
}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  run_pg pg_ctl -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir" "$work"
}
trap cleanup EXIT
[ "$(id -u)" -ne 0 ] || chown postgres: "$pg_dir"
run_pg initdb -D "$pg_dir/data" --auth=trust -U zoftoken -E UTF8 --locale=C >/dev/null
run_pg pg_ctl -D "$pg_dir/data" -l "$pg_dir/log" -w -o "-c listen_addresses=127.0.0.1 \
  -c port=$pg_port -c unix_socket_directories=$pg_dir -c fsync=on -c synchronous_commit=on \
  -c shared_buffers=512MB -c max_connections=100" start >/dev/null
"$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U zoftoken -d postgres -c "CREATE DATABASE zoftoken"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') (fsync on); tokens=$tokens window=$window io_threads=$threads follow_interval_ms=$follow_ms" >&2

# Three servers: their own directories and ports, one master key, one service whose
# endpoints are all three, an admin authkey for the API.
admin_key=cluster-bench-admin-key-0123456789abcdef
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/master.key"
echo >> "$work/master.key"
chmod 600 "$work/master.key"
udp_port() { echo $((47930 + $1)); }
http_port() { echo $((47940 + $1)); }
endpoints="\"127.0.0.1:$(udp_port 1)\", \"127.0.0.1:$(udp_port 2)\", \"127.0.0.1:$(udp_port 3)\""
for i in 1 2 3; do
  mkdir -p "$work/s$i"
  cat > "$work/s$i/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:$(udp_port "$i")"], http: "127.0.0.1:$(http_port "$i")" }
data_dir: data
io_threads: $threads
master_key: { file: "$work/master.key" }
storage:
  backend: postgres
  postgres:
    url: "host=127.0.0.1 port=$pg_port user=zoftoken dbname=zoftoken"
    follow_interval_ms: $follow_ms
services:
  - name: bench
    window: 600
    endpoints: [$endpoints]
authkeys:
  - name: admin
    secret: "$admin_key"
    admin: true
CONFIG
done
(cd "$work/s1" && "$zoftoken" --config config.yaml loadgen prepare --tokens "$tokens" >&2)
"$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U zoftoken -d zoftoken -c "VACUUM ANALYZE" -c "CHECKPOINT"

declare -A server_pid
start_server() { # index
  local log="$work/s$1/serve.log"
  (cd "$work/s$1" && ZOFTOKEN_IO=mmsg exec "$zoftoken" --config config.yaml serve) 2>> "$log" &
  server_pid[$1]=$!
  pids+=("${server_pid[$1]}")
  for _ in $(seq 1 600); do
    [ "$(grep -c "serving UDP" "$log" 2>/dev/null || true)" -ge "${2:-1}" ] && return 0
    sleep 0.1
  done
  echo "server $1 did not start" >&2
  exit 1
}
stop_server() { kill -TERM "${server_pid[$1]}"; wait "${server_pid[$1]}" || true; }
starts=(0 0 0 0)
start() { starts[$1]=$((starts[$1] + 1)); start_server "$1" "${starts[$1]}"; }
conflicts() { # index → the server's conflict counter (exported once a second)
  python3 - "$(http_port "$1")" "$admin_key" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("GET", "/metrics", headers={"Authorization": "Bearer " + sys.argv[2]})
text = c.getresponse().read().decode()
print(next((int(float(l.split()[1])) for l in text.splitlines()
            if l.startswith("zoftoken_commit_conflicts_total")), 0))
PY
}
run_load() { # endpoint flags… → the JSON line
  "$loadgen" "$@" --service bench --tokens "$tokens" --window "$window" \
    --duration "$duration" --mix 95/3/2 --master-key-file "$work/master.key" \
    --counters "$work/counters" --json 2>/dev/null | tail -1
}
one=("--endpoint" "127.0.0.1:$(udp_port 1)")
three=("--endpoint" "127.0.0.1:$(udp_port 1)" "--endpoint" "127.0.0.1:$(udp_port 2)" "--endpoint" "127.0.0.1:$(udp_port 3)")

start 1
warm=$(run_load "${one[@]}")
echo "warm-up (not counted): $warm" >&2
one_runs=()
three_runs=()
conflicts_total=0
writes_total=0
for round in $(seq 1 "$rounds"); do
  one_runs+=("$(run_load "${one[@]}")")
  echo "one server ($round):    ${one_runs[-1]}" >&2
  start 2
  start 3
  sleep 1.2
  before=0
  for i in 1 2 3; do before=$((before + $(conflicts "$i"))); done
  three_runs+=("$(run_load "${three[@]}")")
  echo "three servers ($round): ${three_runs[-1]}" >&2
  sleep 1.2
  after=0
  for i in 1 2 3; do after=$((after + $(conflicts "$i"))); done
  answered=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(round(r["answered_pps"]*r["elapsed_s"]))' "${three_runs[-1]}")
  conflicts_total=$((conflicts_total + after - before))
  # 5 % of the requests change state (95/3/2).
  writes_total=$((writes_total + answered / 20))
  stop_server 2
  stop_server 3
done

# Visibility: server 1 blocks (and opens again), server 2's API is asked until it agrees.
start 2
python3 - "$samples" "$(http_port 1)" "$(http_port 2)" "$admin_key" "$work/visibility" <<'PY'
import http.client, json, sys, time
samples, a, b, key, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ca, cb = http.client.HTTPConnection("127.0.0.1", a), http.client.HTTPConnection("127.0.0.1", b)
h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
def call(c, method, path, body=None):
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")
times = []
for i in range(samples):
    path = f"/v1/services/bench/tokens/user{i * 7919 % 1000}"
    for want in ("blocked", "open"):
        status, body = call(ca, "PUT", path + "/state", json.dumps({"state": want}))
        assert status == 200, (status, body)
        t0 = time.monotonic()
        while True:
            status, body = call(cb, "GET", path)
            if status == 200 and body["state"] == want:
                break
            if time.monotonic() - t0 > 5:
                sys.exit(f"{path}: not {want} at the other server after 5 s")
        if want == "blocked":
            times.append((time.monotonic() - t0) * 1000)
    call(ca, "PUT", path + "/state", json.dumps({"state": "closed"}))
times.sort()
q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
json.dump({"p50": q(0.5), "p99": q(0.99), "n": len(times)}, open(out, "w"))
print(f"visibility of a block at another server: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {times[-1]:.2f} ms ({len(times)} samples)", file=sys.stderr)
PY
stop_server 2
stop_server 1
python3 - "$(median_by answered_pps "${one_runs[@]}")" "$(median_by answered_pps "${three_runs[@]}")" \
  "$conflicts_total" "$writes_total" "$work/visibility" <<'PY'
import json, sys
one, three = json.loads(sys.argv[1]), json.loads(sys.argv[2])
conflicts, writes = int(sys.argv[3]), max(1, int(sys.argv[4]))
vis = json.load(open(sys.argv[5]))
ratio = three["answered_pps"] / one["answered_pps"]
print(f"95/3/2: one server {one['answered_pps']:.0f}/s (p99 {one['p99_us']} µs), three servers {three['answered_pps']:.0f}/s (p99 {three['p99_us']} µs), ratio {ratio:.3f}; conflicts {conflicts} in about {writes} state changes", file=sys.stderr)
print(json.dumps({
    "one_pps": round(one["answered_pps"]), "three_pps": round(three["answered_pps"]),
    "three_vs_one_ratio": round(ratio, 3), "one_p99_us": one["p99_us"],
    "three_p99_us": three["p99_us"], "conflicts": conflicts,
    "conflict_rate": round(conflicts / writes, 4),
    "visibility_p50_ms": round(vis["p50"], 2), "visibility_p99_ms": round(vis["p99"], 2),
    "visibility_samples": vis["n"],
}, separators=(",", ":")))
PY
