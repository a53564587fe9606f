//! Build steps in systemd scopes of their own (`step_scope`, `build_limits`), under a real systemd user
//! manager (tests/common/systemd/): the engine runs as the shipped unit there, and each scoped step is a
//! real `systemd-run --user --scope` of that manager, with its limits enforced by the kernel.

use std::time::Duration;

use crate::common::systemd::Systemd;
use crate::common::wait_until;
use crate::systemd::{ENGINE, install_engine, pids_in, root_with};

/// A step that starts a process which leaves the step's process group and session and scrubs the engine's
/// tags from its environment (the escape the README documents), waits until it runs, records its own
/// cgroup and exits.
const ESCAPING_STEP: &str = r#"cat /proc/self/cgroup > "$1/$2.cgroup"
setsid env -i /bin/sh -c 'echo $$ > "$0"; exec sleep 600' "$1/$2.pid" </dev/null >/dev/null 2>&1 &
n=0; until [ -s "$1/$2.pid" ] || [ $n -ge 200 ]; do sleep 0.05; n=$((n+1)); done
"#;

/// `main` runs the escaping step at normal priority (never scoped); `multi` runs it as a build step.
fn escaping_root() -> crate::common::Root {
    let root = root_with(
        r#"fn build(job) { step("escape", || run("sh", [`${job.root}/escape.sh`, job.root, "scoped"])); run("mark", [job.trigger]); }"#,
        "step_scope = \"always\"\nscope_manager = \"user\"\n",
    );
    root.script(
        "main.rhai",
        r#"fn build(job) { step("escape", || run("sh", [`${job.root}/escape.sh`, job.root, "unscoped"], #{ priority: "normal" })); run("mark", [job.trigger]); }"#,
    );
    std::fs::write(root.path.join("escape.sh"), ESCAPING_STEP).unwrap();
    root
}

#[test]
fn what_escaped_a_scoped_step_is_stopped_at_its_end_and_nothing_else_is() {
    let root = escaping_root();
    let Some(sd) = Systemd::boot() else { return };
    install_engine(&sd, &root, &[]);
    sd.ok(&["start", ENGINE]);

    // Unscoped, the escapee outlives its step: no sweep can find it (the control that shows it escapes).
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(60), "the unscoped job", || {
        root.marks().len() == 1
    });
    let unscoped = pids_in(&root.path.join("unscoped.pid"), 1)[0];
    assert!(
        sd.alive(unscoped),
        "without a scope the escapee outlives its step"
    );
    let cgroup = std::fs::read_to_string(root.path.join("unscoped.cgroup")).unwrap();
    assert!(!cgroup.contains("t8k-step-"), "{cgroup}");

    // Scoped, it is stopped with the step's scope before the job goes on.
    root.trigger("build-2.csv", "type=multi,tenant=default,command=build\n");
    wait_until(Duration::from_secs(60), "the scoped job", || {
        root.marks().len() == 2
    });
    let scoped = pids_in(&root.path.join("scoped.pid"), 1)[0];
    let cgroup = std::fs::read_to_string(root.path.join("scoped.cgroup")).unwrap();
    assert!(
        cgroup.contains("/t8k-step-") && cgroup.contains(".scope"),
        "the step ran in a scope of its own: {cgroup}"
    );
    assert!(
        !sd.alive(scoped),
        "the escapee of the scoped step was stopped with its scope"
    );
    assert!(sd.alive(unscoped), "the scope stopped only what was in it");
    let out = root.daemon_out();
    assert!(
        out.contains("left processes in its scope") && out.contains("the scope was stopped"),
        "{out}"
    );
    // Every scope is gone from the manager once its run is over (`mark` runs in one too, as a build step).
    let mut units = String::new();
    wait_until(Duration::from_secs(20), "no scope left", || {
        units = sd.ok(&[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "t8k-step-*",
        ]);
        units.trim().is_empty()
    });
    sd.ok(&["stop", ENGINE]);
}

#[test]
fn a_step_over_its_memory_limit_fails_saying_it_hit_the_limit() {
    let root = root_with(
        r#"fn build(job) { step("hungry", || run("python3", ["-c", "b = bytearray(300 * 1024 * 1024)"])); run("mark", [job.trigger]); }"#,
        "build_limits = [\"MemoryMax=40M\"]\nscope_manager = \"user\"\n",
    );
    let Some(sd) = Systemd::boot() else { return };
    install_engine(&sd, &root, &[]);
    sd.ok(&["start", ENGINE]);
    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut history = String::new();
    wait_until(Duration::from_secs(60), "the job to fail", || {
        history = crate::common::text(&root.run(&["history", "--json"]));
        history.contains("\"failed\"")
    });
    assert!(root.marks().is_empty(), "the job stopped at the step");
    assert!(
        history.contains("hit its memory limit (MemoryMax=40M in build_limits)"),
        "{history}"
    );
    // The log says it too, once the daemon has written its failure report (after the journal record).
    wait_until(Duration::from_secs(20), "the log to say why", || {
        root.daemon_out().contains("hit its memory limit")
    });
    sd.ok(&["stop", ENGINE]);
}

#[test]
fn an_engine_killed_mid_step_has_its_steps_scopes_stopped_by_the_next() {
    // The first attempt leaves an escapee in its scope and hangs; the second finishes at once.
    let root = root_with(
        r#"fn build(job) { step("escape", || run("sh", [`${job.root}/once.sh`, job.root])); run("mark", [job.trigger]); }"#,
        "step_scope = \"always\"\nscope_manager = \"user\"\n",
    );
    std::fs::write(root.path.join("escape.sh"), ESCAPING_STEP).unwrap();
    std::fs::write(
        root.path.join("once.sh"),
        "[ -e \"$1/again\" ] && exit 0\ntouch \"$1/again\"\nsh \"$1/escape.sh\" \"$1\" scoped\nexec sleep 600\n",
    )
    .unwrap();
    let Some(sd) = Systemd::boot() else { return };
    install_engine(&sd, &root, &["RestartSec=1"]);
    sd.ok(&["start", ENGINE]);
    root.trigger("build-1.csv", "type=main,command=build\n");
    let escapee = pids_in(&root.path.join("scoped.pid"), 1)[0];
    sd.ok(&["kill", "--kill-whom=main", "--signal=SIGKILL", ENGINE]);
    assert!(
        sd.alive(escapee),
        "the escapee outlives the engine: its scope is not the engine's cgroup"
    );
    wait_until(Duration::from_secs(60), "the resumed job", || {
        root.marks().len() == 1
    });
    assert!(
        !sd.alive(escapee),
        "the next engine stopped the scope the dead one left"
    );
    let out = root.daemon_out();
    assert!(
        out.contains("stopped the step scopes that the engine which died left for build-1.csv"),
        "{out}"
    );
    sd.ok(&["stop", ENGINE]);
}
