#!/usr/bin/env python3
"""Measures what a full job journal costs: the daemon's CPU and peak memory per job, and `trigger --wait`'s
CPU and peak memory while it follows a job, with the journal at its largest (three rotated files and the
current one, 8 MiB each) and with it empty.

Usage: python3 benches/journal.py [--quick] [--jobs 20] [--binary target/release/t8k-engine]

The journal is filled with copies of the records of real jobs (a script of eight steps), each copy with its
own job id, trigger and one of 50 tenants, so that every reader parses what a busy server's journal holds.
Start peak: the daemon's peak resident memory once it is up and idle (start-up reads the whole journal).
Per job: its CPU over --jobs jobs run one after another, divided by their number, and its peak resident
memory while it ran them (reset through /proc/PID/clear_refs after a first job and the idle trim after it,
so that start-up's leftovers are not counted). The follower: `t8k-engine trigger --wait` on a job whose
step sleeps --follow seconds, its CPU (from wait4) and peak memory (its VmHWM); then `t8k-engine status` (the snapshot that
`serve` and the fleet bridge also take at every change), its CPU and peak memory. Serve: `t8k-engine serve`
running beside the daemon (it makes a status document at every change it sees) with one page open (which
reads the last 30 jobs at each job's start and end: two `GET /api/history?limit=30` a job), its CPU over
the jobs divided by their number, and its resident memory after them.
--quick: a 1 MiB journal, 3 jobs, a 0.5 s follow (what CI runs, so that the benchmark cannot rot).
"""

import argparse
import json
import os
import subprocess
import sys
import socket
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_BYTES = 8 << 20  # the journal's rotation size (src/history/journal.rs)
ROTATED = 3
SCRIPT = """
fn build(job) {
    for name in ["check room", "pull backend", "pull frontend", "build backend", "install frontend",
                 "build frontend", "restart", "health"] {
        step(name, || run("true", []));
    }
}
fn follow(job) { step("wait", || run("sleep", ["SECONDS"])); }
"""


def proc_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def wait_for(what, check, seconds=30):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            sys.exit(f"{what} did not happen within {seconds} s")
        time.sleep(0.01)


class Root:
    def __init__(self, binary, follow_secs, existing=None):
        self.binary = binary
        self.dir = existing or tempfile.mkdtemp(prefix="t8k-journal-bench-")
        if not existing:
            os.makedirs(f"{self.dir}/scripts")
            os.makedirs(f"{self.dir}/state")
            with open(f"{self.dir}/scripts/multi.rhai", "w") as f:
                f.write(SCRIPT.replace("SECONDS", str(follow_secs)))
        self.env = dict(os.environ, T8K_ROOT=self.dir, T8K_ENGINE_CONFIG="/dev/null")
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            self.env.pop(key, None)
        self.history = f"{self.dir}/state/.t8k-engine/history"
        self.seq = 0

    def drop(self, line):
        self.seq += 1
        name = f"build-{self.seq:06d}.csv"
        with open(f"{self.dir}/state/{name}", "w") as f:
            f.write(line + "\n")
        return name

    def gone(self, name):
        state = f"{self.dir}/state"
        return not os.path.exists(f"{state}/{name}") and not os.path.exists(f"{state}/.t8k-engine/work/{name}")

    def run_once(self):
        subprocess.run([self.binary, "run"], env=self.env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def fill(self, total):
        """Fills the journal to `total` bytes with copies of the records of one real job."""
        self.drop("type=multi,tenant=seed,command=build")
        self.run_once()
        current = f"{self.history}/journal.jsonl"
        lines = [l for l in open(current).read().splitlines() if '"job_id"' in l]
        job_id = next(l.split('"job_id":"', 1)[1].split('"', 1)[0] for l in lines)
        trigger = next(l.split('"trigger":"', 1)[1].split('"', 1)[0] for l in lines if '"trigger":"' in l)
        files = [f"{self.history}/journal.{n}.jsonl" for n in range(ROTATED, 0, -1)] + [current]
        per_file = min(total, FILE_BYTES * (ROTATED + 1)) // len(files)
        copies = 0
        for path in files:
            chunks, size = [], 0
            while size < per_file - 4096:
                copies += 1
                new_id = f"{copies:026d}"
                chunk = "\n".join(l.replace(job_id, new_id)
                                  .replace(trigger, f"build-{copies:010d}.csv")
                                  .replace("multi/seed", f"multi/t{copies % 50}") for l in lines) + "\n"
                chunks.append(chunk)
                size += len(chunk)
            with open(path, "w") as f:
                f.write("".join(chunks))
            os.chmod(path, 0o600)
        return sum(os.path.getsize(p) for p in files), copies


def fill_apart(root, total):
    """Fills the journal from a child process: a child forked from a Python that held the records would
    count the parent's pages in its own peak (ru_maxrss), and every process measured here is such a child."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--fill", root.dir, str(total),
                          "--binary", root.binary], check=True, capture_output=True, text=True).stdout
    size, copies = out.split()
    return int(size), int(copies)


def start_serve(binary, root):
    """`t8k-engine serve` on a free port, once it answers."""
    serve = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0"], env=root.env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = serve.stdout.readline()  # "listening on http://ADDR/"
    if "listening on" not in line:
        sys.exit(f"serve did not start: {line!r}")
    serve.url = line.split()[-1].rstrip("/")
    return serve


def run_measured(argv, env):
    """Runs `argv` to its end: its exit code, CPU (ms, from wait4) and peak resident memory (KiB). The peak
    is its own VmHWM, read every 2 ms from the exec on: wait4's ru_maxrss would count this Python's pages,
    which a child holds until it execs (Linux keeps that high-water mark across exec)."""
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, peak = os.path.realpath(argv[0]), 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode, 1000 * (usage.ru_utime + usage.ru_stime), peak
        try:
            if os.readlink(f"/proc/{child.pid}/exe") == target:
                peak = max(peak, status_kib(child.pid, "VmHWM"))
        except OSError:
            pass  # between fork and exec, or exiting
        time.sleep(0.002)


def http_get(url):
    """The body of a GET (plain sockets: urllib would add 7 MiB to this process, which every child it
    starts counts in its peak until exec)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"GET {url}: {head[:200]!r}")
    if b"chunked" in head.lower():
        sys.exit(f"GET {url}: a chunked answer, which this reader does not decode")
    return body


def settle(pid, quiet=1.0, seconds=60):
    """Returns once `pid` has used no CPU for `quiet` seconds (it has handled what it was woken for)."""
    deadline, last, since = time.time() + seconds, proc_cpu(pid), time.time()
    while time.time() - since < quiet:
        if time.time() > deadline:
            sys.exit(f"pid {pid} did not go quiet within {seconds} s")
        time.sleep(0.05)
        now = proc_cpu(pid)
        if now != last:
            last, since = now, time.time()


def serve_saw(serve, target):
    """Whether serve's status document shows a job of `target` that has ended."""
    doc = json.loads(http_get(f"{serve.url}/api/status"))
    return any(t["target"] == target and (t.get("last_job") or {}).get("result") not in (None, "running")
               for t in doc["targets"])


def measure(binary, journal_bytes, jobs, follow_secs):
    root = Root(binary, follow_secs)
    try:
        size, copies = fill_apart(root, journal_bytes) if journal_bytes else (0, 0)
        # -v: the daemon logs a line each time it goes idle and trims what start-up or a job left resident.
        daemon = subprocess.Popen([binary, "watch", "-v"], env=root.env, stderr=subprocess.DEVNULL)
        try:
            log = f"{root.dir}/log/build.log"
            idles = lambda: open(log).read().count("idle: resident memory") if os.path.exists(log) else 0
            wait_for("the daemon's start", lambda: os.path.exists(log) and "watching" in open(log).read())
            wait_for("the daemon to go idle", lambda: idles() >= 1)
            start_peak = status_kib(daemon.pid, "VmHWM")
            serve = start_serve(binary, root)
            # One job first, then its idle trim: the peak below is what jobs take, not start-up's leftovers.
            warm = root.drop("type=multi,tenant=warm,command=build")
            wait_for("the first job", lambda: root.gone(warm) and idles() >= 2)
            wait_for("serve to see the first job", lambda: serve_saw(serve, "multi/warm"))
            settle(serve.pid)
            with open(f"/proc/{daemon.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            cpu0, serve_cpu0 = proc_cpu(daemon.pid), proc_cpu(serve.pid)
            for i in range(jobs):
                # The last one's tenant is new, so that serve can be seen to have caught up with it.
                tenant = "done" if i == jobs - 1 else f"t{i % 50}"
                name = root.drop(f"type=multi,tenant={tenant},command=build")
                wait_for(f"job {name}", lambda: root.gone(name))
                # What one open page asks at each job's start and end.
                for _ in range(2):
                    json.loads(http_get(f"{serve.url}/api/history?limit=30"))
            per_job_ms = 1000 * (proc_cpu(daemon.pid) - cpu0) / jobs
            job_peak = status_kib(daemon.pid, "VmHWM")
            # Measured once serve has handled the last change, before asking it anything (each answer is a
            # snapshot too); then it must show the last job.
            settle(serve.pid)
            serve_per_job = 1000 * (proc_cpu(serve.pid) - serve_cpu0) / jobs
            serve_rss = status_kib(serve.pid, "VmRSS")
            if not serve_saw(serve, "multi/done"):
                sys.exit("serve's status does not show the last job")
            serve.terminate()
            serve.wait(timeout=10)

            # The follower drops its own trigger and follows it to its end.
            t0 = time.time()
            code, follow_cpu, follow_peak = run_measured(
                [binary, "trigger", "multi", "--tenant", "follow", "--command", "follow", "--wait"], root.env)
            if code != 0:
                sys.exit(f"trigger --wait exited {code}")
            wall = time.time() - t0
            # A snapshot, as `status` prints it and `serve` and the fleet bridge take one at every change.
            _, status_cpu, status_peak = run_measured([binary, "status"], root.env)
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
        return {
            "size": size, "copies": copies, "start_peak": start_peak, "per_job_ms": per_job_ms,
            "job_peak": job_peak, "follow_wall": wall, "follow_cpu": follow_cpu, "follow_peak": follow_peak,
            "status_cpu": status_cpu, "status_peak": status_peak, "serve_per_job": serve_per_job,
            "serve_rss": serve_rss,
        }
    finally:
        subprocess.run(["rm", "-rf", root.dir])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--follow", type=float, default=3.0)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/t8k-engine"))
    ap.add_argument("--fill", nargs=2, metavar=("ROOT", "BYTES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fill:
        print(*Root(args.binary, 0, existing=args.fill[0]).fill(int(args.fill[1])))
        return
    if not os.access(args.binary, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    full = (1 << 20) if args.quick else FILE_BYTES * (ROTATED + 1)
    jobs = 3 if args.quick else args.jobs
    follow = 0.5 if args.quick else args.follow
    print(f"{'journal':>10} {'jobs in it':>10} {'start peak':>11} {'cpu/job':>9} {'job peak':>9} "
          f"{'follow':>7} {'follow cpu':>11} {'follow peak':>12} {'status cpu':>11} {'status peak':>12} "
          f"{'serve/job':>10} {'serve rss':>10}")
    for size in (0, full):
        m = measure(args.binary, size, jobs, follow)
        print(f"{m['size'] / (1 << 20):8.1f}Mi {m['copies'] + (1 if size else 0):>10} "
              f"{m['start_peak'] / 1024:9.1f}Mi {m['per_job_ms']:7.1f}ms {m['job_peak'] / 1024:7.1f}Mi "
              f"{m['follow_wall']:6.2f}s {m['follow_cpu']:9.0f}ms {m['follow_peak'] / 1024:10.1f}Mi "
              f"{m['status_cpu']:9.0f}ms {m['status_peak'] / 1024:10.1f}Mi "
              f"{m['serve_per_job']:8.1f}ms {m['serve_rss'] / 1024:8.1f}Mi")
    print(f"(daemon: {jobs} jobs of eight steps each; start peak is its VmHWM once idle after its start, job "
          f"peak its VmHWM over the jobs, reset after a first job and the idle trim that follows it; follow: trigger --wait on a job of {follow:.1f} s)")


if __name__ == "__main__":
    main()
