#!/usr/bin/env bash
# Benchmarks `t8k-engine whitelist` against the old extractor (baseline_v1.py) on the Astro + Tailwind
# corpora of shared/bench/whitelist, warm cache, and prints one table: median wall and CPU time, peak RSS,
# entries, recall and precision (score.py) per corpus and extractor.
#
#   benches/whitelist.sh [N...]          default N: 500 2000 10000
#   benches/whitelist.sh --quick         n500, one timed run each (CI runs this: benches::the_whitelist_benchmark_runs_in_quick_mode)
#
# Environment:
#   T8K_ENGINE     the binary to measure (default target/release/t8k-engine; build it with cargo build --release)
#   T8K_WL_BENCH   the benchmark directory (default ../shared/bench/whitelist beside the repository)
#   T8K_WL_CORPUS  where corpora are built and kept (default $TMPDIR/t8k-wl-corpus); must be outside any git
#                  work tree, or Tailwind also scans node_modules and the scorer's truth is wrong
#   SEED           corpus seed (default 42); other seeds are kept in $T8K_WL_CORPUS/seedS
#   RUNS           timed runs per extractor and corpus after one warm-up (default 5; baseline: BASE_RUNS, 3)
# Needs bash, python3 and npm (the first corpus build installs Node 22 and the site's packages from npm).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
engine="${T8K_ENGINE:-$here/target/release/t8k-engine}"
bench="${T8K_WL_BENCH:-$here/../shared/bench/whitelist}"
seed="${SEED:-42}"
runs="${RUNS:-5}"
base_runs="${BASE_RUNS:-3}"
corpus="${T8K_WL_CORPUS:-${TMPDIR:-/tmp}/t8k-wl-corpus}"
[ "$seed" = 42 ] || corpus="$corpus/seed$seed"
if [ "${1:-}" = --quick ]; then
    shift; runs=1; base_runs=1; sizes=(500)
else
    sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(500 2000 10000)
fi

[ -x "$engine" ] || { echo "no engine binary at $engine: run cargo build --release or set T8K_ENGINE" >&2; exit 1; }
[ -f "$bench/build-corpus.sh" ] || { echo "no benchmark at $bench: check out shared/ or set T8K_WL_BENCH" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed (score.py, baseline_v1.py)" >&2; exit 1; }
mkdir -p "$corpus"; corpus="$(cd "$corpus" && pwd)"
d="$corpus"; while [ "$d" != / ]; do
    [ -e "$d/.git" ] && { echo "$corpus is inside the git work tree $d: set T8K_WL_CORPUS outside it" >&2; exit 1; }
    d="$(dirname "$d")"
done
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT

if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing GNU time ..." >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
    fi
    [ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is needed: apt-get install time" >&2; exit 1; }
fi

# Runs a command $1 times after one warm-up under GNU time; prints "median_wall_s median_cpu_s max_rss_mb".
measure() {
    local n=$1 i; shift
    "$@" >/dev/null 2>&1
    : >"$work/times"
    for ((i = 0; i < n; i++)); do
        /usr/bin/time -a -o "$work/times" -f '%e %U %S %M' "$@" >/dev/null 2>"$work/err" ||
            { cat "$work/err" >&2; exit 1; }
    done
    python3 - "$work/times" <<'PY'
import statistics, sys
rows = [[float(x) for x in line.split()] for line in open(sys.argv[1]) if line.strip()]
print(f"{statistics.median(r[0] for r in rows):.3f} {statistics.median(r[1] + r[2] for r in rows):.3f} "
      f"{max(r[3] for r in rows) / 1024:.1f}")
PY
}

score() {  # prints "entries recall precision"
    python3 "$bench/score.py" "$1" "$2" | sed -E 's/.*entries=([0-9]+).*recall=([0-9.]+) precision=([0-9.]+).*/\1 \2 \3/'
}

rows=()
for n in "${sizes[@]}"; do
    dist="$corpus/n$n/dist"
    if [ ! -d "$dist" ]; then
        echo "building corpus n$n (seed $seed) in $corpus ..." >&2
        OUT="$corpus" bash "$bench/build-corpus.sh" "$n" "$seed" >/dev/null
    fi
    files=$(find "$dist" -type f \( -name '*.html' -o -name '*.js' -o -name '*.mjs' \) | wc -l)
    mb=$(du -sm --apparent-size "$dist" | cut -f1)
    ours="$work/ours-$n.json" base="$work/base-$n.json"
    echo "measuring n$n ..." >&2
    read -r w c m < <(measure "$runs" "$engine" whitelist "$dist" "$ours")
    read -r e r p < <(score "$dist" "$ours")
    rows+=("n$n|$files|$mb|t8k-engine whitelist|$w|$c|$m|$e|$r|$p")
    read -r w c m < <(measure "$base_runs" python3 "$bench/baseline_v1.py" "$dist" "$base")
    read -r e r p < <(score "$dist" "$base")
    rows+=("n$n|$files|$mb|baseline_v1.py|$w|$c|$m|$e|$r|$p")
done

echo
echo "seed $seed, warm cache, median of $runs runs (baseline $base_runs), $(nproc) cores"
printf '%-7s %6s %5s  %-21s %8s %8s %9s %8s %7s %9s\n' corpus files MB extractor wall_s cpu_s peak_MB entries recall precision
for row in "${rows[@]}"; do
    IFS='|' read -r cn f mbs x w c m e r p <<<"$row"
    printf '%-7s %6s %5s  %-21s %8s %8s %9s %8s %7s %9s\n' "$cn" "$f" "$mbs" "$x" "$w" "$c" "$m" "$e" "$r" "$p"
done
