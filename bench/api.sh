#!/usr/bin/env bash
# The HTTP API benchmark, in one invocation on this machine, against one `zoftoken serve`
# (1 million tokens by default, WAL group commit):
#   1. the ceiling: Debian's nginx answering the same status body (fetched from the server
#      first) with no authentication and no lookup, alternated in ROUNDS rounds with
#   2. the API's status polls with a valid non-admin key, keep-alive, same wrk command
#                                                   → nginx_rps, status_rps, ratio (medians)
#   3. the UDP load generator alone, flat out       → udp_pps_alone
#   4. both at once: the UDP generator and wrk      → udp_pps_with_api, status_rps_with_udp
# Status polls cycle over 1 000 of the prepared users (`GET /v1/services/bench/tokens/userN`),
# each a token held in memory.
# Ends with one JSON line: {"nginx_rps":…,"status_rps":…,"ratio":…,"status_rps_with_udp":…,
# "udp_pps_alone":…,"udp_pps_with_api":…}
# Knobs (environment): TOKENS (1000000), DURATION (s, 10), ROUNDS (3), IO (mmsg), THREADS
# (UDP IO threads, 2), API_THREADS (1), WRK_THREADS (1), CONNECTIONS (32), LOADGEN_THREADS
# (1), WINDOW (64), ZOFTOKEN (a `zoftoken` binary to measure instead of this tree's build,
# e.g. an older build for a same-run comparison).
# wrk and nginx come from Debian (installed here if missing; nginx runs as this user on a
# loopback port with a configuration of its own, never as a system service).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >&2
fi
tokens="${TOKENS:-1000000}"
duration="${DURATION:-10}"
rounds="${ROUNDS:-3}"
io="${IO:-mmsg}"
threads="${THREADS:-2}"
api_threads="${API_THREADS:-1}"
wrk_threads="${WRK_THREADS:-1}"
connections="${CONNECTIONS:-32}"
lg_threads="${LOADGEN_THREADS:-1}"
window="${WINDOW:-64}"
target="${CARGO_TARGET_DIR:-target}"
. scripts/release-build.sh
release_build zoftoken-loadgen zoftoken
loadgen=$(realpath "$target/release/zoftoken-loadgen")
zoftoken=$(realpath "${ZOFTOKEN:-$target/release/zoftoken}")
work="${BENCH_DIR:-$target/api-bench}"
mkdir -p "$work"
port_udp=47912
port_http=47913
port_nginx=47914
write_config() { # authkeys YAML list
  cat > "$work/config.yaml" <<CONFIG
listen: { udp: ["127.0.0.1:$port_udp"], http: "127.0.0.1:$port_http" }
data_dir: data
io_threads: $threads
api_threads: $api_threads
services:
  - name: bench
    window: 600
    endpoints: ["127.0.0.1:$port_udp"]
authkeys: $1
CONFIG
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); io=$io threads=$threads api_threads=$api_threads wrk: $wrk_threads threads, $connections connections; tokens=$tokens" >&2
write_config "[]"
if [ "$(cat "$work/prepared" 2>/dev/null)" != "$tokens" ]; then
  rm -rf "$work/data" "$work/prepared" "$work/counters"
  (cd "$work" && "$zoftoken" --config config.yaml loadgen prepare --tokens "$tokens" >&2)
  echo "$tokens" > "$work/prepared"
fi
# A non-admin key for the service `bench` (only its hash goes into the configuration).
key_json=$(cd "$work" && "$zoftoken" --config config.yaml --json authkey create bench-status --service-mask bench)
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
key=$(field "$key_json" secret)
hash=$(field "$key_json" secret_hash)
write_config "[{ name: bench-status, secret_hash: \"$hash\", admin: false, service_mask: bench, user_mask: \".*\" }]"
cat > "$work/status.lua" <<LUA
local reqs = {}
local n = 1000
init = function(args)
  for i = 0, n - 1 do
    reqs[i + 1] = wrk.format("GET", "/v1/services/bench/tokens/user" .. i,
      { ["Authorization"] = "Bearer $key" })
  end
end
local i = 0
request = function()
  i = i % n + 1
  return reqs[i]
end
LUA

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
log="$work/serve.log"
(cd "$work" && ZOFTOKEN_IO="$io" exec "$zoftoken" --config config.yaml serve) 2> "$log" &
pids+=($!)
for _ in $(seq 1 600); do grep -q "serving UDP" "$log" && break; sleep 0.1; done
grep -E "loaded|serving" "$log" >&2
body=$(python3 - "$key" "$port_http" <<'PY'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[2]}/v1/services/bench/tokens/user1",
                             headers={"Authorization": "Bearer " + sys.argv[1]})
print(urllib.request.urlopen(req).read().decode())
PY
)
echo "status of user1: $body" >&2

# nginx: one worker, no access log, the same body with the same content type.
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  server {
    listen 127.0.0.1:$port_nginx;
    location / { default_type application/json; return 200 '$body'; }
  }
}
NGINX
/usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>>"$work/nginx/error.log" &
pids+=($!)
for _ in $(seq 1 100); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port_nginx), 0.1)" 2>/dev/null && break
  sleep 0.1
done

run_load() {
  "$loadgen" --endpoint "127.0.0.1:$port_udp" --service bench --tokens "$tokens" \
    --threads "$lg_threads" --window "$window" --duration "$duration" \
    --counters "$work/counters" --master-key-file "$work/data/master.key" --json 2>/dev/null | tail -1
}
run_wrk() { # output-file [port]
  wrk -t "$wrk_threads" -c "$connections" -d "${duration}s" -s "$work/status.lua" \
    "http://127.0.0.1:${2:-$port_http}" > "$1"
}
rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
non2xx() { awk '/Non-2xx/ {print $NF}' "$1"; }

# The ceiling and the API, alternated (the host is shared: compare within a round).
ngx=()
api=()
for r in $(seq 1 "$rounds"); do
  run_wrk "$work/wrk-nginx-$r.txt" "$port_nginx"
  run_wrk "$work/wrk-api-$r.txt"
  ngx+=("$(rps "$work/wrk-nginx-$r.txt")")
  api+=("$(rps "$work/wrk-api-$r.txt")")
  [ -z "$(non2xx "$work/wrk-api-$r.txt")" ] || { echo "error answers from the API" >&2; exit 1; }
  echo "round $r: nginx ${ngx[-1]}/s, status polls ${api[-1]}/s" >&2
done
kill "${pids[1]}" 2>/dev/null || true

alone=$(run_load)
echo "udp alone:    $alone" >&2
run_wrk "$work/wrk-both.txt" &
wrk_pid=$!
both=$(run_load)
wait "$wrk_pid"
echo "udp with api: $both" >&2
echo "wrk with udp: $(rps "$work/wrk-both.txt") requests/s, non-2xx: $(non2xx "$work/wrk-both.txt")" >&2
grep -A3 "Latency" "$work/wrk-both.txt" | head -2 >&2
[ -z "$(non2xx "$work/wrk-both.txt")" ] || { echo "error answers under load" >&2; exit 1; }
kill -TERM "${pids[0]}"
wait "${pids[0]}" || true

python3 - "$alone" "$both" "$(rps "$work/wrk-both.txt")" "${ngx[*]}" "${api[*]}" <<'PY'
import json, statistics, sys
alone, both = json.loads(sys.argv[1]), json.loads(sys.argv[2])
status_udp = float(sys.argv[3])
ngx = [float(x) for x in sys.argv[4].split()]
api = [float(x) for x in sys.argv[5].split()]
ratios = [a / n for a, n in zip(api, ngx)]
a, b = alone["answered_pps"], both["answered_pps"]
print(f"status polls {statistics.median(api):.0f}/s, nginx {statistics.median(ngx):.0f}/s (medians of {len(api)} alternated rounds; ratios per round {', '.join(f'{r:.3f}' for r in ratios)}); with UDP load {status_udp:.0f}/s; UDP {a:.0f}/s alone, {b:.0f}/s with the API under load ({100 * (1 - b / a):.1f} % less)", file=sys.stderr)
print(json.dumps({"nginx_rps": round(statistics.median(ngx)), "status_rps": round(statistics.median(api)),
                  "ratio": round(statistics.median(ratios), 3), "status_rps_with_udp": round(status_udp),
                  "udp_pps_alone": round(a), "udp_pps_with_api": round(b)}, separators=(",", ":")))
PY
