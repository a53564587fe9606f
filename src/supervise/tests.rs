//! Unit tests of the supervisor: real processes, real signals, real pipes.

use super::output::{MAX_LINE, Piped, Sink, Tail};
use super::*;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::sync_channel;

fn sh(script: &str) -> Spec {
    let mut spec = Spec::new("sh");
    spec.args = vec!["-c".into(), script.into()];
    spec
}

fn collect(spec: &Spec, cancel: &Cancel) -> (Outcome, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let outcome = run(spec, cancel, &mut |s, l| lines.push((s, l.to_string()))).expect("spawn");
    (outcome, lines)
}

/// True once `pid` no longer exists or is only a zombie waiting for init.
fn gone(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exit_code_and_streams() {
    let (o, lines) = collect(
        &sh("echo out; echo err >&2; echo out2; exit 3"),
        &Cancel::new(),
    );
    assert_eq!(
        (o.code, o.signal, o.ended.clone()),
        (Some(3), None, Ended::Exited)
    );
    assert_eq!(o.stdout, "out\nout2\n");
    assert_eq!(o.stderr, "err\n");
    assert!(!o.truncated);
    let out: Vec<_> = lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(out, ["out", "out2"]);
    assert!(lines.contains(&(Stream::Stderr, "err".into())));
    assert_eq!(o.leftovers_killed, 0);
}

#[test]
fn odd_output_does_not_panic() {
    let (o, lines) = collect(&sh("printf 'a\\r\\nb\\377\\000c'"), &Cancel::new());
    assert_eq!(o.code, Some(0));
    assert_eq!(lines[0].1, "a");
    assert_eq!(lines[1].1, "b\u{fffd}\0c");
    let (o, _) = collect(&sh("true"), &Cancel::new());
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("", ""));
    let (o, lines) = collect(&sh("head -c 200000 /dev/zero | tr '\\0' x"), &Cancel::new());
    let sizes: Vec<_> = lines.iter().map(|(_, l)| l.len()).collect();
    assert_eq!(
        sizes,
        [MAX_LINE, MAX_LINE, MAX_LINE, 200_000 - 3 * MAX_LINE]
    );
    assert_eq!(o.code, Some(0));
}

/// Re-runs itself in a child test process whose environment holds the variables to strip,
/// because setting them in this multi-threaded process would race the other tests.
#[test]
fn environment_is_cleaned() {
    if std::env::var_os("SUPERVISE_ENV_PROBE").is_none() {
        let path = module_path!().split_once("::").map_or("", |(_, p)| p);
        let name = format!("{path}::environment_is_cleaned");
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--test-threads=1"])
            .env("SUPERVISE_ENV_PROBE", "1")
            .env("NOTIFY_SOCKET", "/run/systemd/notify")
            .env("LISTEN_FDS", "3")
            .env("GIT_TERMINAL_PROMPT", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    assert!(std::env::var_os("NOTIFY_SOCKET").is_some());
    let mut spec = Spec::new("env");
    spec.env = vec![("CI".into(), "custom".into()), ("EXTRA".into(), "1".into())];
    let (o, lines) = collect(&spec, &Cancel::new());
    let vars: Vec<_> = lines.into_iter().map(|(_, l)| l).collect();
    assert_eq!(o.code, Some(0));
    assert!(
        !vars
            .iter()
            .any(|v| v.starts_with("NOTIFY_SOCKET=") || v.starts_with("LISTEN_FDS="))
    );
    assert!(vars.contains(&"GIT_TERMINAL_PROMPT=0".into()));
    assert!(vars.contains(&"CI=custom".into()) && !vars.contains(&"CI=true".into()));
    assert!(vars.contains(&"EXTRA=1".into()));
    assert!(base_env().contains(&("CI".into(), "true".into())));
}

#[test]
fn timeout_kills_the_whole_tree() {
    let mut spec = sh("sleep 300 & echo $!; sleep 300");
    spec.timeout = Duration::from_millis(500);
    spec.grace = Duration::from_secs(2);
    let started = Instant::now();
    let (o, lines) = collect(&spec, &Cancel::new());
    assert!(started.elapsed() < spec.timeout + spec.grace + Duration::from_secs(2));
    assert_eq!(o.ended, Ended::TimedOut);
    assert_eq!(o.signal, Some(libc::SIGTERM));
    let grandchild = &lines.first().expect("grandchild pid").1;
    eventually("the grandchild to die", Duration::from_secs(5), || {
        gone(grandchild)
    });
}

#[test]
fn term_trap_gets_sigkill() {
    let mut spec = sh("trap '' TERM; sleep 300");
    spec.timeout = Duration::from_millis(200);
    spec.grace = Duration::from_millis(300);
    let started = Instant::now();
    let (o, _) = collect(&spec, &Cancel::new());
    assert_eq!((o.ended, o.signal), (Ended::TimedOut, Some(libc::SIGKILL)));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn cancel_from_another_thread() {
    let cancel = Cancel::new();
    let remote = cancel.clone();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        remote.cancel("operator abort");
    });
    let mut spec = Spec::new("sleep");
    spec.args = vec!["300".into()];
    spec.grace = Duration::from_secs(2);
    let started = Instant::now();
    let (o, _) = collect(&spec, &cancel.child());
    canceller.join().unwrap();
    assert_eq!(o.ended, Ended::Cancelled("operator abort".into()));
    assert_eq!(o.signal, Some(libc::SIGTERM));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn background_leftover_is_killed() {
    let mut spec = sh("sleep 300 &");
    spec.grace = Duration::from_millis(500);
    let started = Instant::now();
    let (o, _) = collect(&spec, &Cancel::new());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((o.code, o.ended), (Some(0), Ended::Exited));
    assert!(o.leftovers_killed >= 1);
}

#[test]
fn setsid_escapee_is_killed_unless_detaching_is_allowed() {
    // The escapee keeps the pipes open and ignores SIGTERM: only the tag finds it, only SIGKILL stops it.
    let script = "setsid sh -c 'trap \"\" TERM; echo $$; exec sleep 30' &";
    let mut spec = sh(script);
    spec.grace = Duration::from_millis(300);
    let started = Instant::now();
    let (o, lines) = collect(&spec, &Cancel::new());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((o.code, o.leftovers_killed), (Some(0), 1));
    let escapee = &lines.first().expect("escapee pid").1;
    eventually("the escapee to die", Duration::from_secs(5), || {
        gone(escapee)
    });

    // A service manager's daemon detaches the same way and must survive.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    spec.keep_detached = true;
    spec.args[1] = format!(
        "setsid sh -c 'echo $$ > {0}; exec sleep 30' > /dev/null 2>&1 &\nwhile [ ! -s {0} ]; do sleep 0.01; done",
        pidfile.display()
    );
    let (o, _) = collect(&spec, &Cancel::new());
    assert_eq!((o.code, o.leftovers_killed), (Some(0), 0));
    eventually("the daemon's pid", Duration::from_secs(5), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| p.ends_with('\n'))
    });
    let daemon = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(!gone(&daemon), "the detached daemon was left running");
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(daemon.parse().unwrap(), libc::SIGKILL) };
}

#[test]
fn rusage_is_reported() {
    let mut spec = Spec::new("python3");
    spec.args = vec!["-c".into(), "b = b'x' * (100 << 20); print(len(b))".into()];
    let (o, _) = collect(&spec, &Cancel::new());
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        (50_000..2_000_000).contains(&o.max_rss_kib),
        "{}",
        o.max_rss_kib
    );
    assert!(o.user_cpu + o.sys_cpu > Duration::ZERO);
    assert!(o.wall > Duration::ZERO);
}

#[test]
fn disk_io_is_reported() {
    // Written through the page cache and synced, then read back around it (O_DIRECT), so that both
    // reach the disk; tmpfs would count nothing, so the file lives in /var/tmp, which is on disk.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = dir.path().join("io");
    let mut spec = sh(&format!(
        "dd if=/dev/zero of={0} bs=1M count=8 conv=fsync status=none && dd if={0} of=/dev/null bs=1M iflag=direct status=none",
        file.display()
    ));
    spec.timeout = Duration::from_secs(60);
    let (o, _) = collect(&spec, &Cancel::new());
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.written_bytes >= 8 << 20, "written {}", o.written_bytes);
    assert!(o.read_bytes >= 8 << 20, "read {}", o.read_bytes);
}

#[test]
fn capture_keeps_the_tail() {
    let mut spec = Spec::new("seq");
    spec.args = vec!["10000".into()];
    spec.capture_limit = 1024;
    let (o, lines) = collect(&spec, &Cancel::new());
    assert_eq!(lines.len(), 10_000);
    assert!(o.truncated);
    assert!(o.stdout.len() <= 1024 && o.stdout.len() > 1000);
    assert!(o.stdout.ends_with("9999\n10000\n"));
    let first = o.stdout.lines().next().unwrap().parse::<u32>().unwrap();
    assert_eq!(first as usize + o.stdout.lines().count() - 1, 10_000);
    let mut tail = Tail::new(4);
    tail.push("abcdefé".into());
    assert_eq!((tail.finish().as_str(), tail.truncated), ("fé\n", true));
}

#[test]
fn pump_delivers_every_queued_line() {
    let (tx, rx) = sync_channel(10_000);
    for i in 0..9_000 {
        tx.send(Piped::Line(Stream::Stdout, i.to_string())).unwrap();
    }
    tx.send(Piped::Closed).unwrap();
    tx.send(Piped::Closed).unwrap();
    let mut seen = 0;
    let mut on_line = |_: Stream, _: &str| seen += 1;
    let mut sink = Sink::new(&mut on_line, rx, 10);
    while sink.open > 0 {
        sink.pump(Duration::ZERO);
    }
    assert_eq!(sink.out.finish(), "8998\n8999\n");
    assert_eq!(seen, 9_000);
}

#[test]
fn missing_command_is_not_found() {
    let err = run(
        &Spec::new("t8k-no-such-command"),
        &Cancel::new(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, SpawnError::NotFound(ref p) if p == "t8k-no-such-command"),
        "{err}"
    );
    let mut spec = Spec::new("/nonexistent/prog");
    spec.args = vec![];
    assert!(matches!(
        run(&spec, &Cancel::new(), &mut |_, _| {}),
        Err(SpawnError::NotFound(_))
    ));
    let mut spec = Spec::new("true");
    spec.cwd = Some("/nonexistent-dir".into());
    assert!(matches!(
        run(&spec, &Cancel::new(), &mut |_, _| {}),
        Err(SpawnError::Io { .. })
    ));
}

/// duct spawns and reaps the leader, but its captured output would wait for every holder of the pipes:
/// here a daemon the step may leave (as pm2's) keeps stdout open for 30 s, and the step still ends
/// within the drain bound, with its output, while the daemon runs on.
#[test]
fn a_grandchild_holding_the_pipe_never_hangs_the_step() {
    let mut spec =
        sh("echo before; setsid sh -c 'echo $$; exec sleep 30' &\nsleep 0.2; echo after");
    spec.keep_detached = true;
    let started = Instant::now();
    let (o, lines) = collect(&spec, &Cancel::new());
    assert!(
        started.elapsed() < DRAIN + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((o.code, o.ended), (Some(0), Ended::Exited));
    assert!(
        o.stdout.starts_with("before\n") && o.stdout.contains("after\n"),
        "{}",
        o.stdout
    );
    let daemon = lines
        .iter()
        .map(|(_, l)| l)
        .find(|l| l.parse::<i32>().is_ok())
        .expect("the daemon's pid");
    assert!(
        !gone(daemon),
        "the daemon holding the pipe was left running"
    );
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(daemon.parse().unwrap(), libc::SIGKILL) };
}

/// The leader's usage is read from its zombie (`waitid` with WNOWAIT), then duct reaps it: nothing
/// is left unreaped, and each run's figures are its own even when runs overlap (the engine-wide
/// `getrusage(RUSAGE_CHILDREN)` would give the quiet run the busy one's memory).
#[test]
fn each_run_is_reaped_once_with_its_own_usage_when_runs_overlap() {
    let busy = thread::spawn(|| {
        let mut spec = Spec::new("python3");
        spec.args = vec![
            "-c".into(),
            "import time; b = b'x' * (300 << 20); time.sleep(0.5)".into(),
        ];
        collect(&spec, &Cancel::new()).0
    });
    let (quiet, lines) = collect(&sh("echo $$; sleep 0.5"), &Cancel::new());
    let busy = busy.join().unwrap();
    assert_eq!(
        (busy.code, quiet.code),
        (Some(0), Some(0)),
        "{}",
        busy.stderr
    );
    // A peak includes the image of the process the child was forked from (the kernel keeps it across
    // exec), here the test binary with whatever the tests beside this one hold: tens of MiB. So the quiet
    // run is not near zero; it is far below the 300 MiB the busy one held at the time.
    assert!(
        quiet.max_rss_kib + 50_000 < busy.max_rss_kib,
        "quiet {} KiB, busy {} KiB",
        quiet.max_rss_kib,
        busy.max_rss_kib
    );
    let leader = &lines.first().expect("the leader's pid").1;
    assert!(
        !Path::new(&format!("/proc/{leader}")).exists(),
        "the leader was left a zombie"
    );
}
