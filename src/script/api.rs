//! Owns the documentation of the script API: one table that `t8k-engine api` prints and the README mirrors;
//! a test keeps it equal to what the engine registers.

/// One host function as documented for script authors.
pub struct ApiFn {
    /// The function's name.
    pub name: &'static str,
    /// How it is called.
    pub signature: &'static str,
    /// What it does, in one line.
    pub summary: &'static str,
}

/// Every host function, in the order the README lists them.
pub const API: &[ApiFn] = &[
    ApiFn {
        name: "run",
        signature: "run(cmd, args) / run(cmd, args, #{cwd, env, timeout, quiet, allow_fail, priority}) -> #{code, signal, stdout, stderr, duration, timed_out}",
        summary: "run a program (never through a shell) in its own process group at low CPU and I/O priority (priority: \"normal\" opts out), streaming its output into the log; a non-zero exit or timeout throws unless allow_fail. Nothing it starts outlives it, not even a process that detaches into a session of its own; a relative path (`./x`) needs a cwd",
    },
    ApiFn {
        name: "restart_systemd",
        signature: "restart_systemd(unit) -> #{unit, active}",
        summary: "`systemctl restart UNIT` (through `sudo -n` when sudo_systemctl is set), then throws unless `systemctl is-active UNIT` (never through sudo) says active; UNIT must be tractstack-go or tractstack-go@SITE",
    },
    ApiFn {
        name: "pm2",
        signature: "pm2(action, name) -> #{name, status, pid, restarts, err_log, out_log, mode, instances, port}",
        summary: "pm2 reload/restart/start/stop/describe NAME, then confirms via `pm2 jlist` that it is online (stopped for stop); mode is fork or cluster, port the PORT of its environment (() when none); NAME must be astro-main or astro-SITE",
    },
    ApiFn {
        name: "http_check",
        signature: "http_check(url) / http_check(url, #{expect, headers, redirect_ok, redirect_bad, timeout, interval, allow_fail}) -> #{ok, status, body, location, attempts, elapsed}",
        summary: "GET with retries until the status matches (default any 2xx; with redirect_ok any 3xx too, never followed, unless its Location path starts with one of redirect_bad) or the timeout passes; headers is a map sent with each request; the pause between requests starts at interval (default 0.05 s) and grows by a quarter each time up to 0.5 s (or interval when longer); body is the last answer's first 64 KiB; throws unless allow_fail",
    },
    ApiFn {
        name: "step",
        signature: "step(name, || ...) -> value of the closure",
        summary: "a named, timed step: logged with its duration, CPU time and peak memory, and named in the failure report",
    },
    ApiFn {
        name: "parallel",
        signature: "parallel(#{name: || ..., ...}) -> #{name: value, ...}",
        summary: "run branches concurrently, output prefixed by branch name; the first failure cancels the others and is re-thrown; at most 16 branches run at once in a job, nested ones included",
    },
    ApiFn {
        name: "tailwind_whitelist",
        signature: "tailwind_whitelist(dist, out) / tailwind_whitelist(dist, out, #{extra: [dirs]}) -> #{classes, files, skipped, elapsed, written}",
        summary: "extract the Tailwind classes of a built site (plus source dirs in extra) into out as {\"safelist\": [...]}, atomically; out may be an array of paths, all written from one scan; unchanged content is not rewritten",
    },
    ApiFn {
        name: "list_dirs",
        signature: "list_dirs(dir) -> array",
        summary: "names of the subdirectories of dir, sorted, without dot-directories",
    },
    ApiFn {
        name: "switch_in",
        signature: "switch_in(new, live) / switch_in(new, live, #{keep}) -> #{live, previous}",
        summary: "move a new build (a file or directory next to live) into live by an atomic exchange; the replaced release is kept as live.prev, older ones shift to live.prev.2 and so on (the install's binary and dist/ are pruned by the release records, keep_releases; another path keeps `keep` previous ones, default keep_releases)",
    },
    ApiFn {
        name: "roll_back",
        signature: "roll_back(live) -> live",
        summary: "put live.prev back into live atomically; the failed release is kept as live.failed",
    },
    ApiFn {
        name: "last_release",
        signature: "last_release(job) -> map or ()",
        summary: "the record of the release live on the job's install (main and multi targets share one), () before its first release",
    },
    ApiFn {
        name: "record_release",
        signature: "record_release(job, #{...facts}) / record_release(job, #{...facts}, #{failed: why}) -> map",
        summary: "record the install's new release, now live: the facts given plus its number, time, job, trigger, duration, every step's time, CPU and memory and its files; then keep the newest keep_releases (the live and previous ones always). With failed: a release that failed its checks and was rolled back; its facts are remembered as rolled back",
    },
    ApiFn {
        name: "put_back",
        signature: "put_back(job, release) -> #{backend, frontend}",
        summary: "put the files of a kept release (a map with its id, as `rollback` gets it or last_release returns it) back live by atomic exchanges; says which parts changed (false: already live)",
    },
    ApiFn {
        name: "bad_release",
        signature: "bad_release(job, #{...facts}) -> map or ()",
        summary: "the newest release of the job's install that was rolled back (by an operator, or after failing its checks) whose facts equal every one given: #{release, target, at, how, reason, facts}; () when none",
    },
    ApiFn {
        name: "git_head",
        signature: "git_head(dir) -> string",
        summary: "the commit checked out in the repository at dir",
    },
    ApiFn {
        name: "git_changes",
        signature: "git_changes(dir) -> array",
        summary: "`git status --porcelain` lines for changed tracked files of the repository at dir (empty when clean)",
    },
    ApiFn {
        name: "git_local_changes",
        signature: "git_local_changes(dir) / git_local_changes(dir, #{exclude: [names]}) -> #{digest, files}",
        summary: "what differs in the repository at dir from its HEAD: changed tracked files and untracked files .gitignore does not cover, minus top-level names in exclude (NAME also covers NAME.*); digest is a SHA-256 of their paths and contents, equal for equal edits",
    },
    ApiFn {
        name: "dotenv",
        signature: "dotenv(path) -> map",
        summary: "the KEY=VALUE lines of a .env file as tractstack-go reads them (comments skipped, quotes trimmed, first value wins); empty when the file does not exist",
    },
    ApiFn {
        name: "file_digest",
        signature: "file_digest(path) -> string or ()",
        summary: "SHA-256 of a regular file in hex, () when it does not exist",
    },
    ApiFn {
        name: "artifact_key",
        signature: "artifact_key(parts) -> string",
        summary: "the artifact cache's key of a map of what decides an artifact (commit, toolchain, flags...): SHA-256 of the map as canonical JSON",
    },
    ApiFn {
        name: "artifact_fetch",
        signature: "artifact_fetch(parts, dest) -> #{key, digest, size, linked, hits} or ()",
        summary: "place the cached artifact of that key at dest (a hard link, or a copy on another filesystem) and check its SHA-256; () when there is none, or when the entry was corrupt (then it is removed and the log says so)",
    },
    ApiFn {
        name: "artifact_store",
        signature: "artifact_store(parts, path) -> #{key, digest, size, linked, hits, evicted}",
        summary: "keep the file at path (a verified build) in the artifact cache under that key, read-only; then evict the least recently used entries no release uses until the cache fits artifact_cache_max_bytes",
    },
    ApiFn {
        name: "check_resources",
        signature: "check_resources(#{disk: [#{what, path, bytes}], keep_free, memory, keep_free_setting, memory_setting}) -> #{filesystems, memory}",
        summary: "the pre-build check: throws, naming each filesystem or the memory that is short and by how much, when a filesystem the build writes to would keep less than keep_free bytes after the bytes written there, or less than memory bytes are available (MemAvailable, or the engine's cgroup limit)",
    },
    ApiFn {
        name: "disk_usage",
        signature: "disk_usage(path) -> int",
        summary: "bytes a file or directory tree takes on disk (allocated blocks, hard links once, links not followed), 0 when it does not exist",
    },
    ApiFn {
        name: "build_caches",
        signature: "build_caches() -> #{go_build, go_modules, pnpm_store}",
        summary: "where go and pnpm put their caches for the steps' environment (GOCACHE, GOMODCACHE, pnpm's store-dir, as go and pnpm find them); () for one that cannot be placed",
    },
    ApiFn {
        name: "remember",
        signature: "remember(key, max_age_secs, || ...) -> value of the closure",
        summary: "the value kept under key if it was worked out at most max_age_secs ago (0: never), else the closure's, which is kept (a closure that throws keeps nothing). Kept as JSON in the engine's memory, never on disk, for the later jobs of a round: forgotten when the queue empties. Plain data only (strings, numbers, true/false, (), arrays, maps), at most 64 KiB; concurrent calls may both run the closure",
    },
    ApiFn {
        name: "pnpm_dependency",
        signature: "pnpm_dependency(dir, name) -> #{wanted, specifier, locked, installed}",
        summary: "what the pnpm project at dir says of dependency name, without asking a registry: the range package.json wants, the specifier and version pnpm-lock.yaml resolved for that project (peers cut off) and the version node_modules holds; () for each that is missing; throws when a file is there but does not parse",
    },
    ApiFn {
        name: "http_post",
        signature: "http_post(url, body) / http_post(url, body, #{headers, timeout}) -> #{status}",
        summary: "POST a string (as text) or a map (as JSON) to a webhook (ntfy, Slack, Discord, Matrix); throws unless the status is 2xx",
    },
    ApiFn {
        name: "journal",
        signature: "journal(unit, since_unix_time) -> string or ()",
        summary: "the unit's journal since a time (journalctl -o cat), () where there is no journal to read",
    },
    ApiFn {
        name: "unit_state",
        signature: "unit_state(unit) -> #{unit, state, sub_state, invocation, restarts, main_pid}",
        summary: "what `systemctl show UNIT` (never through sudo) says of a unit: ActiveState, SubState, InvocationID, NRestarts (() before systemd 235) and MainPID",
    },
    ApiFn {
        name: "stays_up",
        signature: "stays_up(#{unit, pm2}, seconds) / stays_up(#{unit, pm2}, seconds, #{interval}) -> #{ok, after, what, how, change}",
        summary: "watch, every interval (default 0.25 s) for seconds, that the unit (as unit_state returned it) keeps its invocation, NRestarts and main process and stays active, and that the pm2 process (as pm2(\"describe\", name) returned it) keeps its pid and restart count and stays online; returns at the first change with what changed (how: restarted, exited or stopped; after: seconds into the window). A cancel or the job's deadline interrupts it",
    },
    ApiFn {
        name: "unix_time",
        signature: "unix_time() -> int",
        summary: "seconds since 1970, for journal()",
    },
    ApiFn {
        name: "file_size",
        signature: "file_size(path) -> int",
        summary: "a file's size in bytes, 0 when it does not exist",
    },
    ApiFn {
        name: "read_from",
        signature: "read_from(path, offset) -> string",
        summary: "what a log file holds after offset (at most its last 64 KiB; all of it if it was rotated); regular files only",
    },
    ApiFn {
        name: "log",
        signature: "log(message)",
        summary: "write a line to the job's log",
    },
    ApiFn {
        name: "warn",
        signature: "warn(message)",
        summary: "write a warning to the job's log",
    },
    ApiFn {
        name: "env",
        signature: "env(name) -> string or ()",
        summary: "an environment variable of the engine, () when unset",
    },
    ApiFn {
        name: "file_exists",
        signature: "file_exists(path) -> bool",
        summary: "whether path is an existing regular file",
    },
    ApiFn {
        name: "dir_exists",
        signature: "dir_exists(path) -> bool",
        summary: "whether path is an existing directory",
    },
    ApiFn {
        name: "git_is_clean",
        signature: "git_is_clean(dir) -> bool",
        summary: "whether the repository at dir has no changes to tracked files (untracked files, such as build output, do not count)",
    },
    ApiFn {
        name: "port_open",
        signature: "port_open(port) -> bool",
        summary: "whether something accepts TCP connections on 127.0.0.1:port",
    },
    ApiFn {
        name: "sleep",
        signature: "sleep(seconds)",
        summary: "wait; a cancel or the job's deadline interrupts it",
    },
];

/// The text `t8k-engine api` prints.
pub fn render() -> String {
    let mut out = String::from("Host functions available to scripts:\n\n");
    for f in API {
        out.push_str(&format!("{}\n    {}\n", f.signature, f.summary));
    }
    out.push_str("\nThe `job` object (read-only):\n\n");
    for (name, what) in super::job::FIELDS {
        out.push_str(&format!("job.{name:<13} {what}\n"));
    }
    out
}
