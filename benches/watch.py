#!/usr/bin/env python3
"""Measures `t8k-engine watch`: latency from a trigger file's close to its job starting, and the idle daemon's
CPU time, wakeups and resident memory.

Usage: python3 benches/watch.py [--triggers 200] [--idle 60] [--binary target/release/t8k-engine]

Latency: each trigger is written in place (open, write, close, like `echo > file`) while the daemon is idle;
the job's start is the timestamp of its "job 1/1 started" line in log/build.log. The script does nothing.
Wakeups: context switches of every thread of the daemon (each wakeup is at least one) over the idle window.
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ts(text):
    """Parses tracing's RFC 3339 timestamp into epoch seconds."""
    text = text.rstrip("Z")
    whole, _, frac = text.partition(".")
    t = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def proc_times(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def switches(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in open(f"/proc/{pid}/task/{tid}/status"):
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def rollup(pid):
    """Resident memory by kind from /proc/PID/smaps_rollup (KiB): anonymous (heap, arenas, stacks) and
    file-backed (the binary's code and read-only data, shared libraries)."""
    fields = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
    return fields


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--triggers", type=int, default=200)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/t8k-engine"))
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    root = tempfile.mkdtemp(prefix="t8k-bench-")
    os.makedirs(f"{root}/scripts")
    os.makedirs(f"{root}/state")  # a TractStack root: the engine refuses a directory without its layout
    with open(f"{root}/scripts/multi.rhai", "w") as f:
        f.write("fn build(job) { }\n")
    # No config: /dev/null means the built-in defaults (the integration test benches::the_watch_benchmark_runs_in_quick_mode keeps it so).
    env = dict(os.environ, T8K_ROOT=root, T8K_ENGINE_CONFIG="/dev/null")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    log = f"{root}/log/build.log"
    # -v: the debug line the daemon writes when it goes idle holds its memory before and after its trim.
    daemon = subprocess.Popen([args.binary, "watch", "-v"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while not (os.path.exists(log) and "watching" in open(log).read()):
            if time.time() > deadline:
                sys.exit("the daemon did not start")
            time.sleep(0.05)

        closed = {}
        started_re = re.compile(r"^(\S+)\s+INFO .*job 1/1 started: .*\((build-\S+\.csv) line")
        for i in range(args.triggers):
            name = f"build-{i:06d}.csv"
            with open(f"{root}/state/{name}", "w") as f:
                f.write(f"type=multi,tenant=t{i},command=build\n")
            closed[name] = time.time()
            # Wait until it ran, so that every trigger meets an idle daemon.
            deadline = time.time() + 10
            while os.path.exists(f"{root}/state/{name}") or os.path.exists(f"{root}/state/.t8k-engine/work/{name}"):
                if time.time() > deadline:
                    sys.exit(f"{name} was not processed within 10 s")
                time.sleep(0.002)
        lat = []
        for line in open(log):
            m = started_re.match(line)
            if m and m.group(2) in closed:
                lat.append((ts(m.group(1)) - closed[m.group(2)]) * 1000)
        if len(lat) != args.triggers:
            sys.exit(f"found {len(lat)} job starts for {args.triggers} triggers")
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]
        print(f"close-to-start latency over {len(lat)} triggers: median {statistics.median(lat):.2f} ms, "
              f"p99 {p99:.2f} ms, max {lat[-1]:.2f} ms (target p99 < 50 ms)")

        time.sleep(1)
        cpu0, sw0 = proc_times(daemon.pid), switches(daemon.pid)
        time.sleep(args.idle)
        cpu1, sw1 = proc_times(daemon.pid), switches(daemon.pid)
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
        print(f"idle {args.idle:.0f} s: cpu {1000 * (cpu1 - cpu0):.0f} ms, {sw1 - sw0} context switches over "
              f"{threads} threads (the 30 s rescan is the only timer)")
        print(f"idle resident memory: {rss_kib(daemon.pid) / 1024:.1f} MiB (target < 10 MiB)")
        r = rollup(daemon.pid)
        anon = r.get("Anonymous", 0)
        print(f"  anonymous {anon / 1024:.1f} MiB (heap, allocator arenas, thread stacks, relocated data: what the "
              f"daemon really holds), file-backed {(r.get('Rss', 0) - anon) / 1024:.1f} MiB (the binary's code and "
              f"read-only data, libc: clean page cache); PSS {r.get('Pss', 0) / 1024:.1f} MiB")
        trims = [line.split("idle: ", 1)[1].strip() for line in open(log) if "DEBUG" in line and "idle: resident" in line]
        if trims:
            parts = trims[-1].removeprefix("resident memory ").split("; ")
            print(f"  when the last job ended: {parts[0]}")
            for part in parts[1:]:
                print(f"    {part}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        subprocess.run(["rm", "-rf", root])


if __name__ == "__main__":
    main()
