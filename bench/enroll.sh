#!/usr/bin/env bash
# The enrollment benchmark, in one invocation on this machine: how many enrollments per second
# one `zoftoken serve` (RocksDB, a fresh database every run, one service `bench`, an admin
# authkey) persists, each counted only once the server has acknowledged it (it answers after
# the group commit holding the enrollment is durable). Alternated in ROUNDS rounds, so the
# figures of one round compare under the same load of the host:
#   1. single enrollments with a QR image, `POST /v1/services/bench/tokens/USER?qr=png` (body
#      `{}`, 201 with the deeplink, the manual code and the PNG), wrk, every request a new
#      user                                                               → single_qr_per_s
#   2. the same without the image                                         → single_per_s
#   3. mass enrollment, `POST /v1/services/bench/tokens` with BATCH new users per call (200,
#      every user `enrolled`, checked), BATCH_CONNECTIONS concurrent clients; the rate counts
#      users, not calls                                                   → batch_per_s
#   4. the baseline: status polls of 1 000 users enrolled before the rounds (pending
#      tokens), wrk as in bench/api.sh                                    → status_rps
# and each rate divided by the status polls of its round (single_qr_ratio, single_ratio,
# batch_ratio). Medians of the rounds; the figures of every round go to stderr, with the
# cores the server used in each phase. Any answer other than 2xx fails the run.
# Then the proof that acknowledged means persisted: the server is stopped (SIGTERM) and
# started again: it must load at least as many pending enrollments as were acknowledged, and
# 100 users drawn at random from those acknowledged in 1–3 must be known (200, state pending).
#   5. the command line, CLI_USERS (1 000 000) users from a CSV file with the server stopped:
#      `zoftoken token enroll --service bench --from users.csv --out mail.csv`, on a database
#      of its own (fresh, `data-cli` in the work directory), every row of mail.csv must be
#      `enrolled`                                              → cli_1m_s, cli_max_rss_mb
#      and the same again with `--if-absent` (every row `skipped`)   → cli_1m_if_absent_s
#      then as many other users through the API of a server running on that database
#      (`--api`, JSON lines batches; every row `enrolled`)            → cli_api_1m_s
# Targets on a 2-core machine: mass enrollment ≥ 10 000 enrollments/s, single enrollments with
# a PNG QR image ≥ 1 000/s, 1 million users through the command line in under 5 minutes.
# Ends with one JSON line: {"batch_per_s":…,"single_qr_per_s":…,"single_per_s":…,
# "status_rps":…,"batch_ratio":…,"single_qr_ratio":…,"single_ratio":…,"cli_1m_s":…,
# "cli_1m_if_absent_s":…,"cli_api_1m_s":…,"cli_max_rss_mb":…,"batch_size":…,"cli_users":…} (the cli_ fields
# null with SKIP_CLI=1).
# Knobs (environment): DURATION (s of each phase in each round, 10), ROUNDS (3), API_THREADS
# (1), WRK_THREADS (1), CONNECTIONS (32: wrk's, for 1, 2 and 4), BATCH (users per mass
# enrollment call, 10000, at most what the API takes in one call), BATCH_CONNECTIONS (2),
# CLI_USERS (1000000), SKIP_CLI (1: skip 5), ZOFTOKEN (a `zoftoken` binary to measure instead
# of this tree's build, e.g. an older build for a same-run comparison; nothing is built then).
# Users are named by phase, round and client (`q2.1.345`, `s2.1.345`, `b2.0.12345`), never
# twice in a run. wrk comes from Debian (installed here if missing); the mass enrollment
# client is Python's http.client (one thread and keep-alive connection per client), whose
# CPU time is printed to stderr so that it can be told apart from the server's.
# The work directory (target/enroll-bench, or BENCH_DIR) keeps the logs, wrk's outputs,
# users.csv and mail.csv (the enrollment secrets of throwaway databases) until the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
command -v wrk >/dev/null 2>&1 || {
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq wrk >&2
}
[ -x /usr/bin/time ] || [ "${SKIP_CLI:-0}" = 1 ] || {
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq time >&2
}
duration="${DURATION:-10}"
rounds="${ROUNDS:-3}"
api_threads="${API_THREADS:-1}"
wrk_threads="${WRK_THREADS:-1}"
connections="${CONNECTIONS:-32}"
batch="${BATCH:-10000}"
batch_connections="${BATCH_CONNECTIONS:-2}"
cli_users="${CLI_USERS:-1000000}"
skip_cli="${SKIP_CLI:-0}"
target="${CARGO_TARGET_DIR:-target}"
if [ -z "${ZOFTOKEN:-}" ]; then
  # shellcheck source=scripts/release-build.sh disable=SC1091
  . scripts/release-build.sh
  release_build zoftoken
fi
zoftoken=$(realpath "${ZOFTOKEN:-$target/release/zoftoken}")
work="${BENCH_DIR:-$target/enroll-bench}"
mkdir -p "$work"
work=$(realpath "$work")
rm -rf "$work/data" "$work/data-cli" "$work/users.csv" "$work"/mail*.csv "$work/ranges" "$work"/wrk-*.txt
port_udp=47922
port_http=47923
write_config() { # file data-dir authkeys-YAML-list
  cat > "$work/$1" <<CONFIG
listen: { udp: ["127.0.0.1:$port_udp"], http: "127.0.0.1:$port_http" }
data_dir: $2
io_threads: 2
api_threads: $api_threads
services:
  - name: bench
    window: 600
    endpoints: ["127.0.0.1:$port_udp"]
authkeys: $3
CONFIG
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); api_threads=$api_threads wrk: $wrk_threads threads, $connections connections; batch: $batch users, $batch_connections clients; $rounds rounds of $duration s; binary $zoftoken" >&2
write_config config.yaml data "[]"
# An admin key for the service `bench` (only its hash goes into the configuration).
key_json=$(cd "$work" && "$zoftoken" --config config.yaml --json authkey create bench-admin --admin --service-mask bench)
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
key=$(field "$key_json" secret)
hash=$(field "$key_json" secret_hash)
write_config config.yaml data "[{ name: bench-admin, secret_hash: \"$hash\", admin: true, service_mask: bench, user_mask: \".*\" }]"

# Single enrollments: wrk args PREFIX QUERY; the users are PREFIX<thread>.<n>, n from 1. At the
# end, one line per thread `range PREFIX<thread>. N` (n up to N taken, the last one of each
# connection possibly unanswered; wrk takes n = 1 of the first thread once to check the script
# and never sends it).
cat > "$work/single.lua" <<LUA
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
local headers = { ["Authorization"] = "Bearer $key", ["Content-Type"] = "application/json" }
local query
init = function(args)
  prefix = args[1] .. id .. "."
  query = args[2] or ""
  sent = 0
end
request = function()
  sent = sent + 1
  return wrk.format("POST", "/v1/services/bench/tokens/" .. prefix .. sent .. query, headers, "{}")
end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("range %s %d\n", t:get("prefix"), t:get("sent")))
  end
end
LUA
cat > "$work/status.lua" <<LUA
local reqs = {}
local n = 1000
init = function(args)
  for i = 0, n - 1 do
    reqs[i + 1] = wrk.format("GET", "/v1/services/bench/tokens/w" .. i,
      { ["Authorization"] = "Bearer $key" })
  end
end
local i = 0
request = function()
  i = i % n + 1
  return reqs[i]
end
LUA
# Mass enrollment: args PORT KEY PREFIX BATCH CLIENTS DURATION RANGES-FILE. Each client sends
# calls of BATCH new users (PREFIX<client>.<n>) until DURATION is over, checks every answer
# and appends the acknowledged users to RANGES-FILE; prints one JSON line.
cat > "$work/batch.py" <<'PY'
import http.client, json, sys, threading, time
port, key, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
batch, clients, duration, ranges = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
lock = threading.Lock()
acked, calls, errors, last_done = [], [0], [], [0.0]
def client(c):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    n = 0
    try:
        while time.monotonic() < deadline:
            names = [f"{prefix}{c}.{n + i}" for i in range(batch)]
            body = '{"usernames":[' + ",".join(f'"{u}"' for u in names) + "]}"
            conn.request("POST", "/v1/services/bench/tokens", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"answer {resp.status}: {data[:300]!r}")
            doc = json.loads(data)
            res = doc.get("results", [])
            if (doc.get("enrolled"), doc.get("skipped"), doc.get("failed"), len(res)) != (batch, 0, 0, batch):
                raise RuntimeError(f"enrolled {doc.get('enrolled')}, skipped {doc.get('skipped')}, failed {doc.get('failed')}, {len(res)} results of {batch}")
            if any(r.get("username") != u or r.get("status") != "enrolled" or not r.get("deeplink") for r, u in zip(res, names)):
                raise RuntimeError("a result does not match its user or is not enrolled")
            with lock:
                acked.append(f"{prefix}{c}. {n} {n + batch - 1}")
                calls[0] += 1
                last_done[0] = time.monotonic()
            n += batch
    except Exception as e:
        with lock:
            errors.append(f"client {c}: {e}")
cpu0 = time.process_time()
start = time.monotonic()
deadline = start + duration
threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
with open(ranges, "a") as f:
    for line in acked: f.write(line + "\n")
if errors:
    print("mass enrollment failed: " + "; ".join(errors), file=sys.stderr)
    sys.exit(1)
elapsed = last_done[0] - start
enrolled = calls[0] * batch
print(json.dumps({"enrolled": enrolled, "calls": calls[0], "seconds": round(elapsed, 3),
                  "per_s": round(enrolled / elapsed, 1) if elapsed > 0 else 0,
                  "client_cpu_s": round(time.process_time() - cpu0, 2)}))
PY

server_pid=""
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT
start_server() { # log file
  (cd "$work" && exec "$zoftoken" --config config.yaml serve) 2> "$1" &
  server_pid=$!
  wait_serving "$1"
}
wait_serving() { # log file
  for _ in $(seq 1 600); do
    grep -q "serving UDP" "$1" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "serving UDP" "$1"; then
    local rc=0
    kill -0 "$server_pid" 2>/dev/null || { wait "$server_pid" || rc=$?; server_pid=""; }
    echo "the server did not start (exit status $rc):" >&2
    tail -20 "$1" >&2
    exit 1
  fi
  grep -E "loaded|serving" "$1" >&2
}
stop_server() {
  local rc=0
  kill -TERM "$server_pid"
  wait "$server_pid" || rc=$?
  server_pid=""
  [ "$rc" -eq 0 ] || { echo "the server exited with status $rc after SIGTERM:" >&2; tail -20 "$log" >&2; exit 1; }
}
ticks=$(getconf CLK_TCK)
cpu_ticks() { sed 's/.*) //' "/proc/$server_pid/stat" | awk '{print $12 + $13}'; }
cores_since() { # ticks-at-start seconds → cores the server used
  awk -v a="$1" -v b="$(cpu_ticks)" -v s="$2" -v hz="$ticks" 'BEGIN {printf "%.2f", (b - a) / hz / s}'
}
now() { date +%s.%N; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }

log="$work/serve.log"
start_server "$log"
# Before the rounds: one enrollment with and one without the image, their fields checked, and
# the 1 000 users the status polls ask for (w0…w999), in one mass enrollment.
python3 - "$port_http" "$key" <<'PY' >&2
import http.client, json, sys
port, key = int(sys.argv[1]), sys.argv[2]
h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def call(method, path, body):
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    return r.status, json.loads(r.read())
fields = {"deeplink", "manual_code", "expires_ms", "token_id"}
st, doc = call("POST", "/v1/services/bench/tokens/probe-qr?qr=png", "{}")
assert st == 201 and fields | {"qr_png_base64"} <= doc.keys(), (st, doc)
st, doc = call("POST", "/v1/services/bench/tokens/probe", "{}")
assert st == 201 and fields <= doc.keys() and "qr_png_base64" not in doc, (st, doc)
st, doc = call("POST", "/v1/services/bench/tokens", json.dumps({"usernames": [f"w{i}" for i in range(1000)]}))
assert st == 200 and doc["enrolled"] == 1000, (st, {k: v for k, v in doc.items() if k != "results"})
st, doc = call("GET", "/v1/services/bench/tokens/w1", None)
assert st == 200 and doc.get("state") == "pending", (st, doc)
print(f"probes answered as expected; status of w1: {json.dumps(doc)}")
PY
acked=1002

per_thread=$((connections / wrk_threads))
run_wrk() { # output-file script [args…]
  wrk -t "$wrk_threads" -c "$connections" -d "${duration}s" --timeout 30s -s "$work/$2" \
    "http://127.0.0.1:$port_http" -- "${@:3}" > "$1"
}
rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
non2xx() { awk '/Non-2xx/ {print $NF}' "$1"; }
check_wrk() { # output-file what
  [ -z "$(non2xx "$1")" ] || { echo "error answers to $2: $(non2xx "$1") (see $1)" >&2; exit 1; }
  ! grep -q "Socket errors" "$1" || echo "warning, $2: $(grep "Socket errors" "$1")" >&2
}
single() { # round prefix query what → $rate
  local out="$work/wrk-$2-$1.txt" t0 c0
  t0=$(now)
  c0=$(cpu_ticks)
  run_wrk "$out" single.lua "$2$1." "$3"
  check_wrk "$out" "$4"
  rate=$(rps "$out")
  echo "  $4: $rate/s (server $(cores_since "$c0" "$(elapsed_since "$t0")") cores; latency $(awk '/Latency/ {print $2, "avg,", $4, "max"}' "$out"))" >&2
  awk -v c="$per_thread" '/^range / && $3 - c >= 2 {print $2, 2, $3 - c}' "$out" >> "$work/ranges"
  acked=$((acked + $(awk '/requests in/ {print $1}' "$out")))
}

qr=()
one=()
bat=()
api=()
for r in $(seq 1 "$rounds"); do
  echo "round $r:" >&2
  single "$r" q "?qr=png" "single enrollments with a PNG QR image"
  qr+=("$rate")
  single "$r" s "" "single enrollments"
  one+=("$rate")
  t0=$(now)
  c0=$(cpu_ticks)
  b=$(python3 "$work/batch.py" "$port_http" "$key" "b$r." "$batch" "$batch_connections" "$duration" "$work/ranges")
  bat+=("$(field "$b" per_s)")
  acked=$((acked + $(field "$b" enrolled)))
  echo "  mass enrollment: ${bat[-1]} users/s, $(field "$b" calls) calls of $batch in $(field "$b" seconds) s (server $(cores_since "$c0" "$(elapsed_since "$t0")") cores, client $(field "$b" client_cpu_s) s CPU)" >&2
  t0=$(now)
  c0=$(cpu_ticks)
  run_wrk "$work/wrk-status-$r.txt" status.lua
  check_wrk "$work/wrk-status-$r.txt" "status polls"
  api+=("$(rps "$work/wrk-status-$r.txt")")
  echo "  status polls: ${api[-1]}/s (server $(cores_since "$c0" "$(elapsed_since "$t0")") cores)" >&2
done

# Acknowledged means persisted: stop, start again, look up a sample.
stop_server
log="$work/serve-restart.log"
start_server "$log"
loaded=$(grep -oE "[0-9]+ pending enrollments" "$log" | head -1 | cut -d' ' -f1 || true)
if [ -n "$loaded" ] && [ "$loaded" -lt "$acked" ]; then
  echo "the restarted server holds $loaded pending enrollments, fewer than the $acked acknowledged" >&2
  exit 1
fi
python3 - "$port_http" "$key" "$work/ranges" 100 <<'PY' >&2
import http.client, json, random, sys
port, key, ranges, sample = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
by_phase = {}
for line in open(ranges):
    prefix, lo, hi = line.split()
    by_phase.setdefault(prefix[0], []).append((prefix, int(lo), int(hi)))
names = []
for phase, rs in sorted(by_phase.items()):
    weights = [hi - lo + 1 for _, lo, hi in rs]
    for _ in range(-(-sample // len(by_phase))):
        prefix, lo, hi = random.choices(rs, weights)[0]
        names.append(f"{prefix}{random.randint(lo, hi)}")
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
bad = []
for u in names:
    conn.request("GET", f"/v1/services/bench/tokens/{u}", headers={"Authorization": "Bearer " + key})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or json.loads(body).get("state") != "pending":
        bad.append(f"{u}: {r.status} {body[:200]!r}")
if bad:
    print(f"after the restart, {len(bad)} of {len(names)} acknowledged users are not pending: " + "; ".join(bad[:5]))
    sys.exit(1)
print(f"after the restart: {len(names)} acknowledged users drawn at random ({', '.join(f'{len(v)} ranges of {k}' for k, v in sorted(by_phase.items()))}) all pending")
PY
stop_server

cli_s=null
cli_if_absent_s=null
cli_api_s=null
cli_rss=null
if [ "$skip_cli" != 1 ]; then
  # On a database of its own (the server stopped: the database is locked while it runs).
  write_config cli.yaml data-cli "[]"
  awk -v n="$cli_users" 'BEGIN {print "username"; for (i = 0; i < n; i++) print "cli" i}' > "$work/users.csv"
  wall() { # /usr/bin/time -v output → seconds
    awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"
  }
  rss_mb() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }
  check_mail() { # file expected-status-prefix
    python3 - "$1" "$2" "$cli_users" <<'PY' >&2
import collections, csv, sys
path, want, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, newline="") as f:
    rows = csv.reader(f)
    header = next(rows)
    statuses = collections.Counter(r[1] for r in rows)
count = sum(statuses.values())
ok = sum(v for k, v in statuses.items() if k.startswith(want))
print(f"  {path.rsplit('/', 1)[-1]}: {count} rows, {dict(statuses.most_common(5))}")
if count != n or ok != n:
    print(f"expected {n} rows, every one {want}")
    sys.exit(1)
PY
  }
  echo "command line: $cli_users users" >&2
  (cd "$work" && /usr/bin/time -v -o time-cli.txt "$zoftoken" --config cli.yaml token enroll \
    --service bench --from users.csv --out mail.csv >&2)
  check_mail "$work/mail.csv" enrolled
  cli_s=$(wall "$work/time-cli.txt")
  cli_rss=$(rss_mb "$work/time-cli.txt")
  echo "  enrolled in $cli_s s, max RSS $cli_rss MB, $(awk -F': ' '/Percent of CPU/ {print $2}' "$work/time-cli.txt") CPU" >&2
  (cd "$work" && /usr/bin/time -v -o time-cli-if-absent.txt "$zoftoken" --config cli.yaml token enroll \
    --service bench --from users.csv --out mail-if-absent.csv --if-absent >&2)
  check_mail "$work/mail-if-absent.csv" skipped
  cli_if_absent_s=$(wall "$work/time-cli-if-absent.txt")
  echo "  again with --if-absent: $cli_if_absent_s s, max RSS $(rss_mb "$work/time-cli-if-absent.txt") MB" >&2
  # Through the API of a server running on that database (holding those users), as many
  # other users.
  write_config cli.yaml data-cli "[{ name: bench-admin, secret_hash: \"$hash\", admin: true, service_mask: bench, user_mask: \".*\" }]"
  sed 's/^cli/api/' "$work/users.csv" > "$work/users-api.csv"
  log="$work/serve-cli.log"
  (cd "$work" && exec "$zoftoken" --config cli.yaml serve) 2> "$log" &
  server_pid=$!
  wait_serving "$log"
  (cd "$work" && ZOFTOKEN_AUTHKEY="$key" /usr/bin/time -v -o time-cli-api.txt "$zoftoken" token enroll \
    --service bench --from users-api.csv --out mail-api.csv --api "http://127.0.0.1:$port_http" >&2)
  check_mail "$work/mail-api.csv" enrolled
  cli_api_s=$(wall "$work/time-cli-api.txt")
  echo "  through the API of a running server: $cli_api_s s, max RSS $(rss_mb "$work/time-cli-api.txt") MB (the command line's)" >&2
  stop_server
fi

python3 - "${qr[*]}" "${one[*]}" "${bat[*]}" "${api[*]}" "$batch" "$cli_s" "$cli_if_absent_s" "$cli_rss" "$cli_users" "$skip_cli" "$cli_api_s" <<'PY'
import json, statistics, sys
qr, one, bat, api = ([float(x) for x in a.split()] for a in sys.argv[1:5])
batch = int(sys.argv[5])
cli_s, cli_if_absent_s, cli_rss = (json.loads(a) for a in sys.argv[6:9])
cli_users = None if sys.argv[10] == "1" else int(sys.argv[9])
cli_api_s = json.loads(sys.argv[11])
med = statistics.median
ratio = lambda xs: round(med([x / a for x, a in zip(xs, api)]), 3)
print(f"medians of {len(api)} rounds: single with QR {med(qr):.0f}/s (target 1000), single {med(one):.0f}/s, mass {med(bat):.0f}/s (target 10000), status polls {med(api):.0f}/s"
      + ("" if cli_s is None else f"; command line {cli_users} users in {cli_s:.1f} s (target < 300 s), --if-absent {cli_if_absent_s:.1f} s, through the API {cli_api_s:.1f} s"), file=sys.stderr)
print(json.dumps({"batch_per_s": round(med(bat)), "single_qr_per_s": round(med(qr)), "single_per_s": round(med(one)),
                  "status_rps": round(med(api)), "batch_ratio": ratio(bat), "single_qr_ratio": ratio(qr),
                  "single_ratio": ratio(one), "cli_1m_s": cli_s, "cli_1m_if_absent_s": cli_if_absent_s, "cli_api_1m_s": cli_api_s,
                  "cli_max_rss_mb": cli_rss, "batch_size": batch, "cli_users": cli_users}, separators=(",", ":")))
PY
