# Sourced by bench/udp.sh with BACKEND=postgres (its variables and functions are in scope):
# zoftoken on PostgreSQL against zoftoken on RocksDB, same tokens, same generator, alternated,
# for each mix of MIXES (status/open/close; default STATUS only, the realistic 95/3/2, and
# 60/20/20).
mixes="${MIXES:-100/0/0 95/3/2 60/20/20}"
pg_port=47905
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# In /tmp: when run as root the cluster runs as `postgres`, which may not enter root's home.
pg_dir=$(mktemp -d /tmp/zoftoken-bench-pg.XXXXXX)
run_pg() { # program, args… (PostgreSQL refuses to run as root: Debian's postgres user then)
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$pg_bin/$1" "${@:2}"; else "$pg_bin/$1" "${@:2}"; fi
}
stop_pg() { run_pg pg_ctl -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true; }
[ "$(id -u)" -ne 0 ] || chown postgres: "$pg_dir"
run_pg initdb -D "$pg_dir/data" --auth=trust -U zoftoken -E UTF8 --locale=C >/dev/null
run_pg pg_ctl -D "$pg_dir/data" -l "$pg_dir/log" -w -o "-c listen_addresses=127.0.0.1 \
  -c port=$pg_port -c unix_socket_directories=$pg_dir -c fsync=on -c synchronous_commit=on \
  -c shared_buffers=512MB -c max_connections=100" start >/dev/null
trap 'cleanup; stop_pg; rm -rf "$pg_dir"' EXIT
"$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U zoftoken -d postgres -c "CREATE DATABASE zoftoken"
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port (fsync on, synchronous_commit on)" >&2

port_pg_zt=47906
mkdir -p "$work/on-postgres"
cat > "$work/on-postgres/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:$port_pg_zt"], http: "127.0.0.1:47907" }
data_dir: data
io_threads: $threads
storage:
  backend: postgres
  postgres:
    url: "host=127.0.0.1 port=$pg_port user=zoftoken dbname=zoftoken"
services:
  - name: bench
    window: 600
    endpoints: ["127.0.0.1:$port_pg_zt"]
CONFIG
# The same token set (same seed, same master key) in PostgreSQL.
mkdir -p "$work/on-postgres/data"
cp "$work/data/master.key" "$work/on-postgres/data/master.key"
started=$(date +%s.%N)
(cd "$work/on-postgres" && "$zoftoken" --config config.yaml loadgen prepare --tokens "$tokens" >&2)
echo "prepared $tokens tokens in PostgreSQL in $(python3 -c "import time; print(round(time.time() - $started, 1))") s" >&2
# Measured in a steady state: the bulk load's statistics, hint bits and dirty pages are dealt
# with now, not by autovacuum and the checkpointer during the first runs (whose disk writes
# would slow both servers' commits).
"$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U zoftoken -d zoftoken -c "VACUUM ANALYZE" -c "CHECKPOINT"
sync
rm -f "$work/counters-pg"

# One server after the other: the PostgreSQL server's start-up (its log's `loaded … in N s`)
# is measured alone, not while the other server loads on the same cores.
serve_and_wait() { # directory, log → the server's pid in $started_pid
  (cd "$1" && ZOFTOKEN_IO="$io" exec "$zoftoken" --config config.yaml serve) 2> "$2" &
  started_pid=$!
  pids+=("$started_pid")
  for _ in $(seq 1 1200); do grep -q "serving UDP" "$2" && break; sleep 0.1; done
  grep -E "loaded [0-9]+ tokens|serving" "$2" >&2
}
log_rocks="$work/serve.log"
serve_and_wait "$work" "$log_rocks"
rocks_pid=$started_pid
log_pg="$work/on-postgres/serve.log"
serve_and_wait "$work/on-postgres" "$log_pg"
pg_pid=$started_pid
# One discarded run against each server first: the first seconds after a start were seen to
# be slower (page cache, background work of the freshly started servers and database), and
# they are not what is compared.
for endpoint in "127.0.0.1:$port_zt" "127.0.0.1:$port_pg_zt"; do
  warm=$(duration=5 run_load "$endpoint" --mix 95/3/2 --counters "$work/counters$([ "$endpoint" = "127.0.0.1:$port_zt" ] || echo -pg)")
  echo "warm-up $endpoint (not counted): $warm" >&2
done
results=()
for mix in $mixes; do
  rocks_runs=()
  pg_runs=()
  for round in $(seq 1 "$rounds"); do
    rocks_runs+=("$(run_load "127.0.0.1:$port_zt" --mix "$mix" --counters "$work/counters")")
    echo "$mix rocksdb ($round):  ${rocks_runs[-1]}" >&2
    pg_runs+=("$(run_load "127.0.0.1:$port_pg_zt" --mix "$mix" --counters "$work/counters-pg")")
    echo "$mix postgres ($round): ${pg_runs[-1]}" >&2
  done
  results+=("$mix" "$(median_by answered_pps "${rocks_runs[@]}")" "$(median_by answered_pps "${pg_runs[@]}")")
done
kill -TERM "$rocks_pid" "$pg_pid"
wait "$rocks_pid" || true
wait "$pg_pid" || true
grep -E "conflict|cannot write" "$log_pg" | head -3 >&2 || true
python3 - "$window" "${results[@]}" <<'PY'
import json, sys
window, args = int(sys.argv[1]), sys.argv[2:]
out = {"backend": "postgres", "window": window}
names = {"100/0/0": "status", "95/3/2": "mix", "60/20/20": "mix_60_20_20"}
for i in range(0, len(args), 3):
    mix = args[i]
    r, p = json.loads(args[i + 1]), json.loads(args[i + 2])
    ratio = p["answered_pps"] / r["answered_pps"]
    print(f"mix {mix}: rocksdb {r['answered_pps']:.0f}/s (p99 {r['p99_us']} µs), postgres {p['answered_pps']:.0f}/s (p99 {p['p99_us']} µs), ratio {ratio:.3f}", file=sys.stderr)
    name = names.get(mix, "mix_" + mix.replace("/", "_"))
    out[f"{name}_ratio"] = round(ratio, 3)
    out[f"{name}_rocksdb_pps"] = round(r["answered_pps"])
    out[f"{name}_postgres_pps"] = round(p["answered_pps"])
    out[f"{name}_rocksdb_p99_us"] = r["p99_us"]
    out[f"{name}_postgres_p99_us"] = p["p99_us"]
print(json.dumps(out, separators=(",", ":")))
PY
