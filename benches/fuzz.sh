#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, stable Rust: no sanitizer) and runs each for
# SECONDS, then prints one table: time taken (less than SECONDS if it stopped at a finding), executions,
# executions per second, coverage (edges and features), corpus size and findings per target. Exits 1 if any
# target found a crash (a failed check), a timeout or an out-of-memory input.
#
#   benches/fuzz.sh [SECONDS] [TARGET...]     default 600 seconds each, every target
#
# Environment:
#   FUZZ_NICE        niceness of the fuzzing runs (default 19: the machine is shared)
#   FUZZ_CORPUS      where each target's corpus grows, one directory per target (default fuzz/corpus)
#   FUZZ_ARTIFACTS   where findings are written, one directory per target (default fuzz/artifacts)
#   FUZZ_TARGET_DIR  where the targets are built (default fuzz/target, whatever CARGO_TARGET_DIR says: the
#                    instrumented build must not share a directory with the engine's)
#   FUZZ_BUILD_ARGS  extra arguments to `cargo fuzz build` (e.g. `--codegen-units 16` for a faster build)
#   FUZZ_ARGS        extra libFuzzer arguments for every run (e.g. `-max_len=65536`)
# Seeds in fuzz/seeds/TARGET and the dictionary fuzz/TARGET.dict are used when present. For a finding it
# prints the failed check, the input in base64, and the commands that replay and minimize it.
set -euo pipefail

# All in one function, so that bash has read the whole script before it runs: editing it during a long run
# cannot change what that run does.
main() {
    here="$(cd "$(dirname "$0")/.." && pwd)"
    cd "$here"
    seconds="${1:-600}"
    shift || true
    case "$seconds" in '' | *[!0-9]*) echo "SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;; esac
    nice_level="${FUZZ_NICE:-19}"
    corpus_root="${FUZZ_CORPUS:-$here/fuzz/corpus}"
    artifact_root="${FUZZ_ARTIFACTS:-$here/fuzz/artifacts}"
    target_dir="${FUZZ_TARGET_DIR:-$here/fuzz/target}"

    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "cargo-fuzz is missing: run bash .ci/install.sh (or cargo install cargo-fuzz --locked)" >&2
        exit 2
    fi
    targets=("$@")
    if [ ${#targets[@]} -eq 0 ]; then
        mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
    fi

    # No sanitizer, so that stable Rust builds it; debug assertions on, so overflows and debug_asserts count.
    build_started=$SECONDS
    # shellcheck disable=SC2086
    cargo fuzz build --fuzz-dir fuzz --target-dir "$target_dir" -s none --debug-assertions ${FUZZ_BUILD_ARGS:-} >&2
    echo "built in $((SECONDS - build_started)) s" >&2
    host="$(rustc -vV | sed -n 's/^host: //p')"
    bin_dir="$target_dir/$host/release"

    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    rows=()
    failed=0
    for t in "${targets[@]}"; do
        bin="$bin_dir/$t"
        [ -x "$bin" ] || { echo "no fuzz target binary $bin: is $t listed in fuzz/Cargo.toml?" >&2; exit 2; }
        corpus="$corpus_root/$t"
        artifacts="$artifact_root/$t"
        mkdir -p "$corpus" "$artifacts"
        args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
            -artifact_prefix="$artifacts/")
        [ -f "fuzz/$t.dict" ] && args+=(-dict="fuzz/$t.dict")
        dirs=("$corpus")
        [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
        log="$work/$t.log"
        touch "$work/$t.start"
        echo "fuzzing $t for $seconds s (log: $artifacts/last-run.log)" >&2
        status=0
        started=$SECONDS
        # shellcheck disable=SC2086
        nice -n "$nice_level" "$bin" "${args[@]}" ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1 || status=$?
        took=$((SECONDS - started))
        cp "$log" "$artifacts/last-run.log"
        final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
        execs="$(final_stat number_of_executed_units)"
        rate="$(final_stat average_exec_per_sec)"
        last="$(grep -E '^#[0-9]+' "$log" | tail -1 || true)"
        cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
        ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
        units="$(find "$corpus" -type f | wc -l)"
        bytes="$(find "$corpus" -type f -printf "%s\n" | awk "{s+=\$1} END {printf \"%d\", s/1024}")"
        mapfile -t found < <(find "$artifacts" -type f -newer "$work/$t.start" \
            \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' -o -name 'slow-unit-*' \))
        if [ "$status" -ne 0 ] && [ ${#found[@]} -eq 0 ]; then
            found=("exit status $status, no artifact: see $artifacts/last-run.log")
        fi
        rows+=("$(printf '%-16s %8s %12s %9s %7s %8s %9s %s' "$t" "${took}s" "${execs:-?}" "${rate:-?}" \
            "${cov:-?}" "${ft:-?}" "$units/${bytes}K" "${#found[@]}")")
        if [ ${#found[@]} -gt 0 ]; then
            failed=1
            echo "FINDING in $t:" >&2
            grep -E -A2 "panicked at|ERROR: libFuzzer|^Base64:" "$log" | head -16 >&2 || true
            for f in "${found[@]}"; do
                echo "  $f" >&2
                if [ -f "$f" ]; then
                    echo "  replay:   $bin $f" >&2
                    echo "  minimize: cargo fuzz tmin -s none --debug-assertions $t $f" >&2
                fi
            done
        fi
    done

    printf '%-16s %8s %12s %9s %7s %8s %9s %s\n' target time executions exec/s cov features corpus findings
    printf '%s\n' "${rows[@]}"
    exit "$failed"
}

main "$@"
