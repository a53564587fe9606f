#!/usr/bin/env bash
# Measures the release pipeline on the fixture site (examples/site-fixture.sh): a full release of new
# backend and frontend commits, its build phase against the sum and maximum of the two builds (they run
# in parallel), an unchanged re-trigger, and how many requests fail while a release switches and restarts
# (the frontend and the backend polled every 50 ms throughout).
#
#   benches/pipeline.sh [RELEASES]        default 3 releases; figures are per release and the median
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
releases=${1:-3}
say() { printf '== %s\n' "$*" >&2; }
[ -x "$repo/target/release/t8k-engine" ] || (cd "$repo" && cargo build --release --quiet)
engine="$repo/target/release/t8k-engine"
source "$repo/examples/site-fixture.sh" >/dev/null
trap cleanup EXIT
printf 'kill_grace = 2\nhttp_timeout = 10\n' > "$root/config.toml"

poll() { # poll SECONDS_FILE: GET both services every 50 ms until the file disappears; print "ok failed"
    python3 - "$1" "$go_port" "$astro_port" <<'PY'
import os, sys, time, urllib.request
stop, ports = sys.argv[1], sys.argv[2:]
ok, failed = [0, 0], [0, 0]
while os.path.exists(stop):
    for i, (port, path) in enumerate(zip(ports, ["/api/v1/health", "/"])):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            ok[i] += 1
        except Exception:
            failed[i] += 1
    time.sleep(0.05)
print(sum(ok), failed[0], failed[1])
PY
}

now_ms() { date +%s%3N; }
printf '%-8s %9s %9s %9s %9s %9s %7s %11s %11s\n' release wall_s build_s backend_s frontend_s sum_s ok failed_back failed_front
for i in $(seq 1 "$releases"); do
    publish tractstack-go cmd/tractstack-go/version.txt "v$((i + 1))" "backend v$((i + 1))"
    publish my-tractstack version.txt "v$((i + 1))" "frontend v$((i + 1))"
    "$engine" trigger main >/dev/null
    touch "$root/polling"; poll "$root/polling" > "$root/poll.out" & poller=$!
    start=$(now_ms); "$engine" -q run; end=$(now_ms)
    rm "$root/polling"; wait "$poller"
    read -r ok failed_back failed_front < "$root/poll.out"
    python3 - "$root/state/.t8k-engine/releases/main.json" "$start" "$end" "$i" "$ok" "$failed_back" "$failed_front" <<'PY'
import json, sys
rec = json.load(open(sys.argv[1]))
start, end, i, ok, fb, ff = (int(x) for x in sys.argv[2:])
steps = {s["name"]: s for s in rec["steps"]}
def span(*names):
    ss = [steps[n] for n in names if n in steps]
    return min(s["start_ms"] for s in ss), max(s["start_ms"] + s["wall_ms"] for s in ss)
b0, b1 = span("build backend")
f0, f1 = span("install frontend", "build frontend")
backend, frontend = (b1 - b0) / 1000, (f1 - f0) / 1000
build = (max(b1, f1) - min(b0, f0)) / 1000
print(f"{i:<8} {(end - start) / 1000:9.2f} {build:9.2f} {backend:9.2f} {frontend:9.2f} {backend + frontend:9.2f} {ok:7} {fb:11} {ff:11}")
PY
done
"$engine" trigger main >/dev/null
start=$(now_ms); "$engine" -q run; end=$(now_ms)
echo "unchanged re-trigger: $(( end - start )) ms wall, including both health checks (target < 2000 ms)"
echo "build_s is the build phase (first build start to last build end); target: within 15% of max(backend_s, frontend_s)"
