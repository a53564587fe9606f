//! The engine under a real systemd: a user manager in a private namespace (tests/common/systemd/) runs
//! the shipped units, adapted only where a user manager differs from the system one.

/// The web and fleet units under the same manager.
mod web_and_fleet;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::systemd::units::adapt_unit;
use crate::common::systemd::{Systemd, UNIT_PATH};
use crate::common::{Root, wait_until};

pub(crate) const ENGINE: &str = "t8k-engine.service";

/// A root whose scripts all run `script`, with only the `mark` helper on PATH (the fake `systemctl`
/// and `pm2` are removed: here `systemctl` is the real one, through the harness's wrapper).
pub(crate) fn root_with(script: &str, config: &str) -> Root {
    let root = Root::with_config(config);
    for t in ["main", "multi", "dedicated"] {
        root.script(&format!("{t}.rhai"), script);
    }
    for fake in ["systemctl", "pm2"] {
        std::fs::remove_file(root.fakes.join("bin").join(fake)).unwrap();
    }
    root
}

/// What every adapted engine unit adds: the test's config and PATH, and its output in a file (no
/// journald runs in the namespace).
fn test_environment(sd: &Systemd, root: &Root, output: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Environment=T8K_ENGINE_CONFIG={}",
            root.path.join("config.toml").display()
        ),
        format!(
            "Environment=PATH={}:{}:{UNIT_PATH}",
            root.fakes.join("bin").display(),
            sd.bin_dir().display()
        ),
        format!("Environment=MARKS={}", root.marks_path().display()),
        format!("StandardOutput=append:{}", root.path.join(output).display()),
        "StandardError=inherit".to_string(),
    ];
    lines.extend(extra.iter().map(|l| l.to_string()));
    lines
}

/// `examples/systemd/t8k-engine.service` for a user manager: no `User=`/`Group=` (a user manager runs
/// units as its own user), the test's root (also where the optional environment file is looked for) and
/// binary, and the test's environment.
pub(crate) fn install_engine(sd: &Systemd, root: &Root, extra: &[&str]) {
    let unit = adapt_unit(
        ENGINE,
        &[
            ("User=", None),
            ("Group=", None),
            (
                "Environment=T8K_ROOT=",
                Some(format!("Environment=T8K_ROOT={}", root.path.display())),
            ),
            (
                "EnvironmentFile=",
                Some(format!(
                    "EnvironmentFile=-{}/etc/t8k-engine.env",
                    root.path.display()
                )),
            ),
            (
                "ExecStart=",
                Some(format!(
                    "ExecStart={} watch",
                    env!("CARGO_BIN_EXE_t8k-engine")
                )),
            ),
        ],
        &test_environment(sd, root, "daemon.out", extra),
    );
    sd.install(ENGINE, &unit);
}

fn usec(sd: &Systemd, unit: &str, prop: &str) -> u64 {
    sd.show(unit, prop)
        .parse()
        .unwrap_or_else(|_| panic!("{prop} of {unit}"))
}

/// A systemd time span as `systemctl show` prints it (`30s`, `1min 30s`, `500ms`).
fn timespan(text: &str) -> Duration {
    text.split_whitespace()
        .map(|part| {
            let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let n: u64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("time span {text}"));
            match &part[digits.len()..] {
                "min" => Duration::from_secs(n * 60),
                "s" => Duration::from_secs(n),
                "ms" => Duration::from_millis(n),
                "us" => Duration::from_micros(n),
                unit => panic!("time span {text}: unit {unit}"),
            }
        })
        .sum()
}

/// Polls until `path` holds `n` whitespace-separated pids; returns them.
pub(crate) fn pids_in(path: &Path, n: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    wait_until(
        Duration::from_secs(20),
        &format!("{n} pid(s) in {}", path.display()),
        || {
            pids = std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            pids.len() >= n
        },
    );
    pids
}

#[test]
fn the_harness_boots_a_real_manager_and_leaves_nothing_behind() {
    let Some(sd) = Systemd::boot() else { return };
    sd.install(
        "sleeper.service",
        "[Service]\nExecStart=/bin/sh -c 'sleep 300 & exec sleep 301'\n",
    );
    sd.ok(&["start", "sleeper.service"]);
    assert_eq!(sd.show("sleeper.service", "ActiveState"), "active");
    let main: u32 = sd.show("sleeper.service", "MainPID").parse().unwrap();
    assert!(
        sd.alive(main),
        "the unit's main process runs in the namespace"
    );
    assert!(
        sd.show("sleeper.service", "ControlGroup")
            .ends_with("/app.slice/sleeper.service"),
        "units get a cgroup of their own"
    );
    // Plain `systemctl` through the wrapper reaches this manager, from outside and from inside a unit.
    let wrapper = sd.bin_dir().join("systemctl");
    let out = std::process::Command::new(&wrapper)
        .args(["is-active", "sleeper.service"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "active",
        "{}",
        crate::common::text(&out)
    );
    let answer = sd.bin_dir().join("../inside.out");
    sd.install(
        "asker.service",
        &format!(
            "[Service]\nType=oneshot\nTimeoutStartSec=30\nEnvironment=PATH={}:{}\nExecStart=/bin/sh -c 'systemctl is-active sleeper.service > {}'\n",
            sd.bin_dir().display(),
            crate::common::systemd::UNIT_PATH,
            answer.display()
        ),
    );
    sd.ok(&["start", "asker.service"]);
    assert_eq!(std::fs::read_to_string(&answer).unwrap().trim(), "active");
    let mut pids = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "both processes in the unit's cgroup",
        || {
            pids = sd.unit_pids("sleeper.service");
            pids.len() == 2
        },
    );
    let (init, cgroups) = (sd.init_pid(), sd.cgroup_dirs().to_vec());
    assert!(!cgroups.is_empty());
    drop(sd);
    for pid in pids.iter().chain([&init]) {
        assert!(
            !crate::common::alive(*pid),
            "process {pid} outlived the manager"
        );
    }
    for dir in &cgroups {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

#[test]
fn a_panicking_test_leaves_no_namespace_behind() {
    let Some(probe) = Systemd::boot() else { return };
    drop(probe);
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let sd = Systemd::boot().unwrap();
        tx.send((sd.init_pid(), sd.cgroup_dirs().to_vec())).unwrap();
        panic!("a test failing with a manager running");
    })
    .join();
    assert!(result.is_err());
    let (init, cgroups) = rx.recv().unwrap();
    assert!(
        !crate::common::alive(init),
        "PID 1 of the namespace outlived the test"
    );
    for dir in &cgroups {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

#[test]
fn start_returns_only_after_left_over_work_is_finished_and_ready_is_sent() {
    let root = root_with(
        r#"fn build(job) { run("sleep", ["1.5"]); run("mark", [job.trigger]); }"#,
        "",
    );
    // A trigger an engine that died mid-job left claimed.
    let work = root.path.join("state/.t8k-engine/work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("build-1.csv"), "type=main,command=build\n").unwrap();
    let Some(sd) = Systemd::boot() else { return };
    install_engine(&sd, &root, &[]);
    let started = Instant::now();
    sd.ok(&["start", ENGINE]);
    let took = started.elapsed();
    assert_eq!(
        root.marks(),
        ["build-1.csv"],
        "the left-over trigger ran before `systemctl start` returned ({took:?})\n{}",
        root.daemon_out()
    );
    assert!(root.work().is_empty(), "and it is no longer claimed");
    assert_eq!(sd.show(ENGINE, "ActiveState"), "active");
    assert_eq!(sd.show(ENGINE, "SubState"), "running");
    // systemd's own clock: the unit became active only after the 1.5 s job, i.e. on READY=1.
    let exec = usec(&sd, ENGINE, "ExecMainStartTimestampMonotonic");
    let active = usec(&sd, ENGINE, "ActiveEnterTimestampMonotonic");
    assert!(
        active - exec >= 1_500_000,
        "active {} ms after exec",
        (active - exec) / 1000
    );
    // The shipped capability lines hold: the engine keeps CAP_LEASE (bit 28) and nothing else.
    let main: u32 = sd.show(ENGINE, "MainPID").parse().unwrap();
    let status = std::fs::read_to_string(sd.inside(&format!("/proc/{main}/status"))).unwrap();
    for caps in ["CapBnd:", "CapAmb:", "CapEff:"] {
        let line = status.lines().find(|l| l.starts_with(caps)).unwrap();
        assert!(line.ends_with("0000000010000000"), "{line}");
    }
    let out = root.daemon_out();
    let recovery = out.find("finishing 1 trigger(s)").expect("recovery logged");
    let watching = out.find("watching ").expect("readiness logged");
    assert!(recovery < watching, "{out}");
    eprintln!(
        "systemctl start took {took:?}; active {} ms after exec",
        (active - exec) / 1000
    );
    // Then it is the daemon: a new trigger runs.
    root.trigger("build-2.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the new trigger to run", || {
        root.marks().len() == 2
    });
    sd.ok(&["stop", ENGINE]);
    assert_eq!(sd.show(ENGINE, "Result"), "success");
}

#[test]
fn a_hung_main_loop_is_killed_and_restarted_by_the_watchdog() {
    let root = root_with(r#"fn build(job) { run("mark", [job.trigger]); }"#, "");
    let Some(sd) = Systemd::boot() else { return };
    // The loop hangs for good once it takes a finished job's result.
    install_engine(&sd, &root, &["Environment=FAILPOINTS=daemon.loop=pause"]);
    // Only the watchdog period is shortened (the shipped 60 s would make a minute-long test);
    // RestartSec and everything else stay as shipped.
    sd.install(
        &format!("{ENGINE}.d/watchdog.conf"),
        "[Service]\nWatchdogSec=3\n",
    );
    sd.ok(&["start", ENGINE]);
    let first: u32 = sd.show(ENGINE, "MainPID").parse().unwrap();
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the job to run", || {
        root.marks().len() == 1
    });
    let hung = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the hung engine to be killed",
        || !sd.alive(first),
    );
    let killed = hung.elapsed();
    wait_until(Duration::from_secs(60), "a restarted engine", || {
        sd.show(ENGINE, "NRestarts") == "1" && sd.show(ENGINE, "SubState") == "running"
    });
    let restarted = hung.elapsed();
    let second: u32 = sd.show(ENGINE, "MainPID").parse().unwrap();
    assert_ne!(first, second);
    assert!(
        sd.manager_log().contains("Watchdog timeout"),
        "systemd says why:\n{}",
        sd.manager_log()
    );
    assert_eq!(sd.show(ENGINE, "ActiveState"), "active");
    assert_eq!(
        root.marks(),
        ["build-1.csv"],
        "the finished job did not run again"
    );
    eprintln!(
        "watchdog: hung engine killed {killed:?} after the hang, new engine ready {restarted:?} after it (WatchdogSec=3, RestartSec={})",
        sd.show(ENGINE, "RestartUSec")
    );
    sd.ok(&["stop", ENGINE]);
}

/// A step's process tree that ignores SIGTERM: the shell, a looping subshell and a sleep; their pids go
/// to the file named by $1.
const STUBBORN_TREE: &str = r#"trap '' TERM
(trap '' TERM; while :; do sleep 1; done) &
echo $! >> "$1"
sleep 300 &
echo $! >> "$1"
echo $$ >> "$1"
wait
"#;

#[test]
fn stop_during_a_step_kills_its_whole_tree_keeps_the_trigger_claimed_within_timeout_stop_sec() {
    // kill_grace as shipped (5 s): the tree ignores SIGTERM, so only the engine's SIGKILL ends it.
    let root = root_with(
        r#"fn build(job) { run("sh", [`${job.root}/tree.sh`, `${job.root}/tree.pids`]); run("mark", [job.trigger]); }"#,
        "kill_grace = 5\n",
    );
    std::fs::write(root.path.join("tree.sh"), STUBBORN_TREE).unwrap();
    let Some(sd) = Systemd::boot() else { return };
    install_engine(&sd, &root, &[]);
    sd.ok(&["start", ENGINE]);
    root.trigger("build-1.csv", "type=main,command=build\n");
    let tree = pids_in(&root.path.join("tree.pids"), 3);
    assert!(tree.iter().all(|&p| sd.alive(p)));
    let stopping = Instant::now();
    sd.ok(&["stop", ENGINE]);
    let took = stopping.elapsed();
    let limit = timespan(&sd.show(ENGINE, "TimeoutStopUSec"));
    assert!(
        took < limit,
        "stop took {took:?}, TimeoutStopSec is {limit:?}"
    );
    assert!(
        took >= Duration::from_millis(4500),
        "the tree ignores SIGTERM, so it lasts kill_grace (5 s); stop took {took:?}"
    );
    for pid in &tree {
        assert!(
            !sd.alive(*pid),
            "process {pid} of the step outlived the stop"
        );
    }
    assert!(
        sd.unit_pids(ENGINE).is_empty(),
        "nothing is left in the unit"
    );
    assert_eq!(root.work(), ["build-1.csv"], "the trigger stays claimed");
    assert!(
        root.marks().is_empty(),
        "the job did not go on after its step"
    );
    // A clean stop, not a failure: exit 0, no SIGKILL from systemd's timeout.
    assert_eq!(sd.show(ENGINE, "Result"), "success");
    assert_eq!(sd.show(ENGINE, "ExecMainStatus"), "0");
    let out = root.daemon_out();
    assert!(
        out.contains("its trigger stays claimed for the next start"),
        "{out}"
    );
    eprintln!(
        "systemctl stop during a step that ignores SIGTERM: {took:?} (kill_grace 5 s, TimeoutStopSec {limit:?})"
    );
    // The next start finishes it before it is ready.
    root.script(
        "main.rhai",
        r#"fn build(job) { run("mark", [job.trigger]); }"#,
    );
    sd.ok(&["start", ENGINE]);
    assert_eq!(root.marks(), ["build-1.csv"]);
    assert!(root.work().is_empty());
    sd.ok(&["stop", ENGINE]);
}

/// A step that leaves behind a process the engine cannot find: it leaves the step's process group and
/// session and scrubs the engine's tag from its environment (README: only a cgroup per step would
/// catch it). Both record the SIGTERMs they receive.
const STEP_WITH_ESCAPEE: &str = r#"trap 'echo step-TERM >> "$1/signals"; exit 0' TERM
setsid env -i /bin/sh "$1/escapee.sh" "$1" </dev/null >/dev/null 2>&1 &
echo $$ > "$1/step.pid"
while :; do sleep 0.1; done
"#;
const ESCAPEE: &str = r#"trap 'echo escapee-TERM >> "$1/signals"' TERM
echo $$ > "$1/escapee.pid"
while :; do sleep 0.1; done
"#;

#[test]
fn kill_mode_mixed_terms_only_the_engine_then_kills_what_escaped_it() {
    let root = root_with(
        r#"fn build(job) { run("sh", [`${job.root}/step.sh`, job.root]); }"#,
        "",
    );
    std::fs::write(root.path.join("step.sh"), STEP_WITH_ESCAPEE).unwrap();
    std::fs::write(root.path.join("escapee.sh"), ESCAPEE).unwrap();
    let Some(sd) = Systemd::boot() else { return };
    install_engine(&sd, &root, &[]);
    assert_eq!(sd.show(ENGINE, "KillMode"), "mixed");
    sd.ok(&["start", ENGINE]);
    root.trigger("build-1.csv", "type=main,command=build\n");
    let step = pids_in(&root.path.join("step.pid"), 1)[0];
    let escapee = pids_in(&root.path.join("escapee.pid"), 1)[0];
    // The escapee really escaped the engine: a session of its own, no tag, but still in the unit.
    let stat = std::fs::read_to_string(sd.inside(&format!("/proc/{escapee}/stat"))).unwrap();
    let session: u32 = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, escapee);
    let environ = std::fs::read(sd.inside(&format!("/proc/{escapee}/environ"))).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("T8K_ENGINE_TRIGGER"));
    let cgroup = std::fs::read_to_string(sd.inside(&format!("/proc/{escapee}/cgroup"))).unwrap();
    assert!(cgroup.contains(&format!("/app.slice/{ENGINE}")), "{cgroup}");
    let stopping = Instant::now();
    sd.ok(&["stop", ENGINE]);
    let took = stopping.elapsed();
    let signals = std::fs::read_to_string(root.path.join("signals")).unwrap_or_default();
    assert!(
        signals.contains("step-TERM"),
        "the engine stopped its step with SIGTERM first: {signals:?}"
    );
    assert!(
        !signals.contains("escapee-TERM"),
        "systemd sent SIGTERM to the engine alone (KillMode=mixed), not to the whole cgroup: {signals:?}"
    );
    assert!(!sd.alive(step));
    assert!(
        !sd.alive(escapee),
        "systemd killed what the engine could not find, once the engine had exited"
    );
    assert!(sd.unit_pids(ENGINE).is_empty());
    assert_eq!(root.work(), ["build-1.csv"]);
    assert_eq!(sd.show(ENGINE, "Result"), "success");
    eprintln!("systemctl stop during a step that exits on SIGTERM, with an escapee: {took:?}");
}

const WATCHER: &str = "t8k-build-watcher";

/// `examples/systemd/t8k-build-watcher.path` and `.service` for a user manager: the test's inbox in the
/// glob, no `User=`/`Group=`, the test's root, binary and environment.
fn install_watcher(sd: &Systemd, root: &Root, extra: &[&str]) {
    let path = adapt_unit(
        &format!("{WATCHER}.path"),
        &[(
            "PathExistsGlob=",
            Some(format!(
                "PathExistsGlob={}/state/build-*.csv",
                root.path.display()
            )),
        )],
        &[],
    );
    let service = adapt_unit(
        &format!("{WATCHER}.service"),
        &[
            ("User=", None),
            ("Group=", None),
            (
                "Environment=T8K_ROOT=",
                Some(format!("Environment=T8K_ROOT={}", root.path.display())),
            ),
            (
                "EnvironmentFile=",
                Some(format!(
                    "EnvironmentFile=-{}/etc/t8k-engine.env",
                    root.path.display()
                )),
            ),
            (
                "ExecStart=",
                Some(format!(
                    "ExecStart={} run",
                    env!("CARGO_BIN_EXE_t8k-engine")
                )),
            ),
        ],
        &test_environment(sd, root, "run.out", extra),
    );
    std::fs::write(sd.unit_dir().join(format!("{WATCHER}.path")), path).unwrap();
    sd.install(&format!("{WATCHER}.service"), &service);
}

#[test]
fn the_path_unit_runs_every_trigger_even_one_that_lands_as_a_run_ends() {
    let root = root_with(
        r#"fn build(job) {
            if job.trigger.contains("slow") {
                run("sh", ["-c", "touch waiting; while [ ! -e gate ]; do sleep 0.05; done"], #{ cwd: job.root });
            }
            run("mark", [`${job.trigger} ${env("INVOCATION_ID")}`]);
        }"#,
        "",
    );
    let Some(sd) = Systemd::boot() else { return };
    // Each run lingers 1.5 s after its last look at the inbox, before it exits: the window in which a
    // trigger is seen by no run, and only the path unit's check at the service's exit starts another.
    install_watcher(
        &sd,
        &root,
        &["Environment=FAILPOINTS=run.drained=sleep(1500)"],
    );
    let path = format!("{WATCHER}.path");
    let service = format!("{WATCHER}.service");
    sd.ok(&["start", &path]);
    assert_eq!(sd.show(&path, "SubState"), "waiting");
    root.trigger("build-1-slow.csv", "type=main,command=build\n");
    wait_until(
        Duration::from_secs(20),
        "the path unit to start a run",
        || root.path.join("waiting").exists(),
    );
    assert_eq!(sd.show(&service, "ActiveState"), "activating");
    // While the run is busy: this one is picked up by the same run's next look at the inbox.
    root.trigger("build-2.csv", "type=main,command=build\n");
    std::fs::write(root.path.join("gate"), "").unwrap();
    let run_out = || std::fs::read_to_string(root.path.join("run.out")).unwrap_or_default();
    wait_until(Duration::from_secs(20), "the run to finish", || {
        run_out().contains("run finished")
    });
    // After the run's last look, before it exits.
    root.trigger("build-3.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(30), "every trigger to run", || {
        root.marks().len() == 3
    });
    let marks = root.marks();
    let runs: Vec<(&str, &str)> = marks
        .iter()
        .map(|m| m.split_once(' ').expect("trigger and invocation"))
        .collect();
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        ["build-1-slow.csv", "build-2.csv", "build-3.csv"]
    );
    assert_eq!(runs[0].1, runs[1].1, "one run took both: {marks:?}");
    assert_ne!(
        runs[1].1, runs[2].1,
        "the last one needed a new run, started by the path unit: {marks:?}"
    );
    // Nothing is left to match the glob, so the path unit waits and the service stays down.
    wait_until(Duration::from_secs(20), "the service to end", || {
        sd.show(&service, "ActiveState") == "inactive"
    });
    assert_eq!(sd.show(&path, "SubState"), "waiting");
    assert!(root.inbox().is_empty() && root.work().is_empty() && root.failed().is_empty());
    assert_eq!(sd.show(&service, "Result"), "success");
}
