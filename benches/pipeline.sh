#!/usr/bin/env bash
# Measures the release pipeline on the faithful fixture site (examples/site-fixture.sh), once with the
# frontend in pm2 fork mode (as t8k-install.sh sets it up) and once in cluster mode (as the README
# recommends): per release of new backend and frontend commits, the wall time, the build phase against the
# two builds (they run in parallel), and how long each service was unavailable while the release switched
# and restarted. Both are polled every 50 ms throughout: the backend's tenant readiness
# (GET /api/v1/health with X-Tenant-ID: default; the backend warms up WARMUP_MS before it listens) and the
# frontend's `/` (200 is up; a redirect to /maint, which the frontend answers while the backend is down,
# or no answer is down). Then an unchanged re-trigger.
#
#   benches/pipeline.sh [--quick] [RELEASES]   default 3 releases per mode; --quick: 1 (CI runs this)
#
# Environment: T8K_ENGINE (default target/release/t8k-engine, built if missing), WARMUP_MS (default 1000),
# MODES (default "fork cluster").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
releases=3
[ "${1:-}" = --quick ] && { releases=1; shift; }
releases=${1:-$releases}
export WARMUP_MS=${WARMUP_MS:-1000}
say() { printf '== %s\n' "$*" >&2; }
if [ -z "${T8K_ENGINE:-}" ]; then
    [ -x "$repo/target/release/t8k-engine" ] || (cd "$repo" && cargo build --release --quiet)
    T8K_ENGINE="$repo/target/release/t8k-engine"
fi
engine=$T8K_ENGINE

# poll STOP_FILE: GET both services every 50 ms until the file disappears; prints, per service, the
# longest unavailability window (first failed poll to the next good one) in ms and the failed polls.
poll() {
    python3 - "$1" "$go_port" "$astro_port" <<'PY'
import http.client, os, sys, time
stop, go, astro = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def state(port, path, headers):
    """up, maint (a redirect to the maintenance page: the backend is down) or down (no answer, an error)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        if r.status == 200:
            return "up"
        return "maint" if (r.getheader("Location") or "").startswith("/maint") else "down"
    except OSError:
        return "down"
probes = {"backend": (go, "/api/v1/health", {"X-Tenant-ID": "default"}), "frontend": (astro, "/", {})}
since, longest, failed = {}, {}, {"backend": 0, "frontend": 0}
def close(key, now):
    if key in since:
        longest[key] = max(longest.get(key, 0), now - since.pop(key))
while os.path.exists(stop):
    for name, probe in probes.items():
        seen, now = state(*probe), time.monotonic()
        for kind in ("down", "maint"):
            if seen == kind:
                since.setdefault((name, kind), now)
            else:
                close((name, kind), now)
        failed[name] += seen != "up"
    time.sleep(0.05)
for key in list(since):
    close(key, time.monotonic())
ms = lambda key: round(longest.get(key, 0) * 1000)
print(ms(("backend", "down")) , failed["backend"], ms(("frontend", "down")), ms(("frontend", "maint")), failed["frontend"])
PY
}

now_ms() { date +%s%3N; }

bench_mode() { # bench_mode MODE: one fixture site with its frontend in pm2 MODE, RELEASES releases
    local mode=$1
    PM2_MODE=$mode
    # shellcheck source=examples/site-fixture.sh
    source "$repo/examples/site-fixture.sh" >/dev/null
    trap cleanup EXIT
    for i in $(seq 1 "$releases"); do
        publish tractstack-go cmd/tractstack-go/version.txt "v$((i + 1))" "backend v$((i + 1))"
        publish my-tractstack version.txt "v$((i + 1))" "frontend v$((i + 1))"
        "$engine" trigger main >/dev/null
        touch "$root/polling"; poll "$root/polling" > "$root/poll.out" & poller=$!
        start=$(now_ms); "$engine" -q run; end=$(now_ms)
        rm "$root/polling"; wait "$poller"
        read -r back_ms back_failed front_ms maint_ms front_failed < "$root/poll.out"
        python3 - "$root/state/.t8k-engine/releases/main.json" "$mode" "$i" "$start" "$end" \
            "$back_ms" "$back_failed" "$front_ms" "$maint_ms" "$front_failed" <<'PY'
import json, sys
rec = json.load(open(sys.argv[1]))
mode, i = sys.argv[2], sys.argv[3]
start, end, back_ms, back_failed, front_ms, maint_ms, front_failed = (int(x) for x in sys.argv[4:])
steps = {s["name"]: s for s in rec["steps"]}
def span(*names):
    ss = [steps[n] for n in names if n in steps]
    return min(s["start_ms"] for s in ss), max(s["start_ms"] + s["wall_ms"] for s in ss)
b0, b1 = span("build backend")
f0, f1 = span("install frontend", "build frontend")
backend, frontend = (b1 - b0) / 1000, (f1 - f0) / 1000
build = (max(b1, f1) - min(b0, f0)) / 1000
print(f"{mode:<8} {i:<3} {(end - start) / 1000:7.2f} {build:8.2f} {backend:10.2f} {frontend:11.2f} "
      f"{back_ms:12} {back_failed:6} {front_ms:13} {maint_ms:14} {front_failed:6}")
PY
    done
    "$engine" trigger main >/dev/null
    start=$(now_ms); "$engine" -q run; end=$(now_ms)
    echo "$mode: unchanged re-trigger $(( end - start )) ms wall (astro-tractstack update check and both health checks)" >&2
    cleanup
    trap - EXIT
}

printf '%-8s %-3s %7s %8s %10s %11s %12s %6s %13s %14s %6s\n' mode rel wall_s build_s backend_s frontend_s \
    backend_down failed frontend_down frontend_maint failed
for mode in ${MODES:-fork cluster}; do
    ( bench_mode "$mode" )
done
echo "backend warm-up before it listens: ${WARMUP_MS} ms. Longest windows in ms during the release, polled every 50 ms:"
echo "backend_down: /api/v1/health did not answer 200; frontend_down: / gave no answer or an error (the Node process"
echo "was not serving); frontend_maint: / redirected to /maint (the frontend up, the backend not). failed: failed polls"
echo "build_s is the build phase (first build start to last build end); target: within 15% of max(backend_s, frontend_s)"
