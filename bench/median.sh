# Sourced by the benchmark scripts.
# median_by FIELD JSON-LINE… → the JSON line whose FIELD is the median (the upper one of an
# even count).
median_by() {
  local field="$1"
  shift
  printf '%s\n' "$@" | python3 -c '
import json, sys
runs = sorted((json.loads(l) for l in sys.stdin if l.strip()), key=lambda r: r[sys.argv[1]])
print(json.dumps(runs[len(runs) // 2]))' "$field"
}
