#!/usr/bin/env bash
# A failover drill on one machine, with PostgreSQL's own tools: a primary and a synchronous
# standby (pg_basebackup, synchronous_standby_names), two `zoftoken serve` of one instance
# whose connection string lists both (`target_session_attrs=read-write`: a connection goes to
# whichever is the primary), and a load through both servers that records every acknowledged
# change (`--acked`). While the load runs the primary is killed (`pg_ctl stop -m immediate`)
# and the standby promoted (`pg_ctl promote`). The servers refuse changes while no primary
# answers, then reconnect by themselves; afterwards every change either server acknowledged
# must be in the promoted database (synchronous replication: an acknowledged commit was on
# the standby before its reply).
# Ends with one JSON line: {"acknowledged_checked":…,"acknowledged_missing":…,
# "answered":…,"lost":…,"ready_again_s":…}. Exit status 1 if an acknowledged change is
# missing. Knobs (environment): TOKENS (20000), DURATION (s, 20), KILL_AFTER (s, 6).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
tokens="${TOKENS:-20000}"
duration="${DURATION:-20}"
kill_after="${KILL_AFTER:-6}"
target="${CARGO_TARGET_DIR:-target}"
. scripts/release-build.sh
release_build zoftoken zoftoken-loadgen
zoftoken=$(realpath "$target/release/zoftoken")
loadgen=$(realpath "$target/release/zoftoken-loadgen")

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# In /tmp: when run as root the clusters run as `postgres`, which may not enter root's home.
work=$(mktemp -d /tmp/zoftoken-drill.XXXXXX)
run_pg() { # program, args… (PostgreSQL refuses to run as root: Debian's postgres user then)
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$pg_bin/$1" "${@:2}"; else "$pg_bin/$1" "${@:2}"; fi
}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for d in primary standby; do run_pg pg_ctl -D "$work/$d" -m immediate -w stop >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
[ "$(id -u)" -ne 0 ] || chown postgres: "$work"
p1=47951
p2=47952
psql_at() { "$pg_bin/psql" -X -q -At -h 127.0.0.1 -p "$1" -U zoftoken -d "${3:-postgres}" -c "$2"; }

run_pg initdb -D "$work/primary" --auth=trust -U zoftoken -E UTF8 --locale=C >/dev/null
run_pg pg_ctl -D "$work/primary" -l "$work/primary.log" -w -o "-c listen_addresses=127.0.0.1 \
  -c port=$p1 -c unix_socket_directories=$work -c fsync=on -c synchronous_commit=on \
  -c wal_level=replica -c max_wal_senders=4" start >/dev/null
psql_at "$p1" "CREATE DATABASE zoftoken"
run_pg pg_basebackup -h 127.0.0.1 -p "$p1" -U zoftoken -D "$work/standby" -R -X stream
echo "primary_conninfo = 'host=127.0.0.1 port=$p1 user=zoftoken application_name=standby'" \
  >> "$work/standby/postgresql.auto.conf"
run_pg pg_ctl -D "$work/standby" -l "$work/standby.log" -w -o "-c port=$p2 \
  -c unix_socket_directories=$work" start >/dev/null
# Synchronous from now on: a commit waits until the standby has it (set once the standby
# runs; before, every commit would wait for a standby that is not there yet).
psql_at "$p1" "ALTER SYSTEM SET synchronous_standby_names = 'standby'"
psql_at "$p1" "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 1 100); do
  [ "$(psql_at "$p1" "SELECT sync_state FROM pg_stat_replication")" = sync ] && break
  sleep 0.1
done
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'): primary :$p1, synchronous standby :$p2 ($(psql_at "$p1" "SELECT sync_state FROM pg_stat_replication"))" >&2

# Two servers of one instance; their connection string names both databases.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/master.key"
echo >> "$work/master.key"
chmod 600 "$work/master.key"
url="host=127.0.0.1,127.0.0.1 port=$p1,$p2 user=zoftoken dbname=zoftoken target_session_attrs=read-write"
for i in 1 2; do
  mkdir -p "$work/s$i"
  cat > "$work/s$i/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:4796$i"], http: "127.0.0.1:4797$i" }
data_dir: data
master_key: { file: "$work/master.key" }
storage:
  backend: postgres
  postgres:
    url: "$url"
    timeout_ms: 2000
services:
  - name: bank
    window: 600
    endpoints: ["127.0.0.1:47961", "127.0.0.1:47962"]
CONFIG
done
(cd "$work/s1" && "$zoftoken" --config config.yaml loadgen prepare --tokens "$tokens" --seed 7 >&2)
for i in 1 2; do
  (cd "$work/s$i" && exec "$zoftoken" --config config.yaml serve) 2> "$work/s$i/serve.log" &
  pids+=($!)
done
for i in 1 2; do
  for _ in $(seq 1 300); do grep -q "serving UDP" "$work/s$i/serve.log" && break; sleep 0.1; done
done
ready() { # server index → the HTTP status of /readyz
  python3 -c 'import http.client,sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
try:
    c.request("GET", "/readyz"); print(c.getresponse().status)
except Exception:
    print(0)' "4797$1"
}

# The load: opens, closes and wrong PINs (no STATUS: every answer is a change the database
# confirmed) through both servers, every acknowledged state recorded.
"$loadgen" --endpoint 127.0.0.1:47961 --endpoint 127.0.0.1:47962 --service bank \
  --tokens "$tokens" --seed 7 --duration "$duration" --rate 2000 --mix 0/45/35/20 \
  --timeout-ms 500 --master-key-file "$work/master.key" --acked "$work/acked.txt" \
  --json 2>/dev/null > "$work/load.json" &
load_pid=$!
sleep "$kill_after"
echo "killing the primary, promoting the standby" >&2
run_pg pg_ctl -D "$work/primary" -m immediate -w stop >/dev/null
killed=$(date +%s.%N)
run_pg pg_ctl -D "$work/standby" -w promote >/dev/null
ready_again=""
for _ in $(seq 1 300); do
  if [ "$(ready 1)" = 200 ] && [ "$(ready 2)" = 200 ]; then
    ready_again=$(python3 -c "import time; print(round(time.time() - $killed, 2))")
    break
  fi
  sleep 0.1
done
echo "both servers ready again after ${ready_again:-never} s" >&2
wait "$load_pid"
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
(cd "$work/s1" && "$zoftoken" --config config.yaml token list --service bank --json) > "$work/tokens.json"
python3 - "$work/acked.txt" "$work/tokens.json" "$(tail -1 "$work/load.json")" "${ready_again:-null}" <<'PY'
import json, sys
acked, tokens, load, ready = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
db = {t["token_id"]: (t["state"], t["failures"]) for t in json.load(open(tokens))}
checked = missing = 0
for line in open(acked):
    if line.startswith("#"):
        continue
    token, _index, _counter, state, attempts_left, settled = line.split()
    if settled != "1":
        continue
    checked += 1
    failures = 3 - int(attempts_left)
    got = db.get(token)
    if got is None or got[0] != state or min(got[1], 3) != failures:
        missing += 1
        if missing <= 5:
            print(f"token {token}: acknowledged {state} with {failures} failures, the database has {got}", file=sys.stderr)
print(f"{checked} acknowledged changes checked, {missing} missing; load: {load['answered']} answered, {load['lost']} lost", file=sys.stderr)
print(json.dumps({"acknowledged_checked": checked, "acknowledged_missing": missing,
                  "answered": load["answered"], "lost": load["lost"],
                  "ready_again_s": None if ready == "null" else float(ready)}, separators=(",", ":")))
sys.exit(1 if missing or not checked else 0)
PY
