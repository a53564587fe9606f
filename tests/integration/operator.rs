//! An operator moving a server set up by TractStack's installer to t8k-engine, through the real binary: a
//! wrong root, a service PATH without go or pnpm, the concierge's units still enabled, and script copies
//! that the built-in scripts have moved past.

use std::os::unix::fs::PermissionsExt;

use crate::common::{Root, stop, text};
use sha2::{Digest, Sha256};

/// A root whose config points `systemd_dir` at `dir` (the machine's own /etc/systemd/system must not
/// decide a test), with `extra` appended.
fn root_with_systemd(dir: &str, extra: &str) -> Root {
    Root::with_config(&format!("systemd_dir = {dir:?}\n{extra}"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_root_that_does_not_exist_or_holds_no_layout_is_named_not_shown_idle() {
    let root = Root::new();
    let missing = root.path.join("does/not/exist");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["--root", m, "status"],
        vec!["--root", m, "status", "--json"],
        vec!["--root", m, "history"],
        vec!["--root", m, "run"],
        vec!["--root", m, "watch"],
        vec!["--root", m, "trigger", "main"],
        vec!["--root", m, "retry", "build-1.csv"],
        vec!["--root", m, "check"],
        vec!["--root", m, "scripts", "init"],
        vec!["--root", m, "eval", "--job", "type=main", "1"],
    ] {
        let out = root.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("the TractStack root {m} does not exist"))
                && err.contains("--root DIR, T8K_ROOT or `root` in the config file"),
            "{args:?}: {err}"
        );
        assert!(
            stdout(&out).is_empty(),
            "{args:?}: nothing that looks like an answer"
        );
    }
    assert!(
        !missing.exists(),
        "nothing creates a root that is not there"
    );

    let empty = root.path.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = root.run(&["--root", empty.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("holds no TractStack layout (none of state, src/tractstack-go"),
        "{}",
        text(&out)
    );
    assert!(!empty.join("state").exists());

    // What reads no root still answers.
    let out = root.run(&["--root", m, "config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = root.run(&["--root", m, "eval", "1 + 1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A root as the installer leaves it, before any trigger: src/ and t8k-go-server/ but no state yet.
    let fresh = root.path.join("fresh");
    std::fs::create_dir_all(fresh.join("src/tractstack-go")).unwrap();
    let out = root.run(&["--root", fresh.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A directory of stand-ins for the tools the installer puts on t8k's PATH through ~/.profile.
fn toolbox(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in tools {
        let p = dir.path().join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\nmark \"{tool} ran with PM2_HOME=$PM2_HOME\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[test]
fn check_names_each_missing_tool_with_the_path_it_searched() {
    let root = Root::new();
    // A service's PATH: no ~/.profile, so no go, node or pnpm (the fakes provide systemctl and pm2).
    let bare = root.fakes.join("bin").display().to_string();
    let out = root.cmd(&["check"]).env("PATH", &bare).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = stdout(&out);
    for tool in ["git", "go", "node", "pnpm"] {
        assert!(
            s.lines()
                .any(|l| l.starts_with(&format!("missing tool: `{tool}`"))
                    && l.contains(&format!("PATH={bare};"))),
            "{tool}: {s}"
        );
    }
    for tool in ["pm2", "systemctl"] {
        assert!(!s.contains(&format!("`{tool}`")), "{tool} is on PATH: {s}");
    }

    // `[env] path` puts the installer's directories in front, for check and for every step.
    let dir = toolbox(&["git", "go", "node", "pnpm"]);
    let root = Root::with_config(&format!(
        "[env]\npath = [{:?}]\nvars = {{ PM2_HOME = \"/home/t8k/.pm2\" }}\n",
        dir.path().display().to_string()
    ));
    let out = root.cmd(&["check"]).env("PATH", &bare).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("the steps' PATH has git, go, node, pnpm, pm2, systemctl"));
    root.script(
        "main.rhai",
        "fn build(job) { run(\"go\", [\"version\"]); }\n",
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let out = root
        .cmd(&["run"])
        .env("PATH", format!("{bare}:/usr/bin:/bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.marks(), ["go ran with PM2_HOME=/home/t8k/.pm2"]);
}

#[test]
fn run_and_watch_warn_at_start_when_the_services_path_lacks_a_tool() {
    let root = Root::new();
    // The engine itself needs nothing from PATH; its steps do, and a unit's PATH is not the login one.
    let bare = root.fakes.join("bin").display().to_string();
    let missing = format!(
        "missing tool: `go` (needed for building the backend) is not in the steps' PATH={bare};"
    );
    let out = root.cmd(&["run"]).env("PATH", &bare).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.log().contains(&missing), "{}", root.log());
    let daemon = root.daemon(&[("PATH", bare.as_str())]);
    root.wait_watching();
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    assert!(
        root.daemon_out().contains(&missing),
        "{}",
        root.daemon_out()
    );
}

const INSTALLER_SERVICE: &str = "[Unit]\nDescription=TractStack Build Concierge\n[Service]\nType=oneshot\nUser=t8k\nGroup=t8k\nExecStart=/home/t8k/scripts/t8k-concierge.sh\n[Install]\nWantedBy=multi-user.target\n";
const INSTALLER_PATH: &str = "[Unit]\nDescription=TractStack Build Watcher\n[Path]\nPathModified=/home/t8k/state\nUnit=t8k-build-watcher.service\n[Install]\nWantedBy=multi-user.target\n";

#[test]
fn the_concierges_enabled_units_and_script_are_named_by_watch_run_and_status() {
    let systemd_dir = tempfile::tempdir().unwrap();
    let systemd = systemd_dir.path();
    let root = root_with_systemd(systemd.to_str().unwrap(), "");
    // What `systemctl enable t8k-build-watcher.path` leaves, as TractStack's installer runs it.
    std::fs::create_dir_all(systemd.join("multi-user.target.wants")).unwrap();
    std::fs::write(systemd.join("t8k-build-watcher.service"), INSTALLER_SERVICE).unwrap();
    std::fs::write(systemd.join("t8k-build-watcher.path"), INSTALLER_PATH).unwrap();
    std::os::unix::fs::symlink(
        systemd.join("t8k-build-watcher.path"),
        systemd.join("multi-user.target.wants/t8k-build-watcher.path"),
    )
    .unwrap();
    std::fs::write(root.path.join("scripts/t8k-concierge.sh"), "#!/bin/bash\n").unwrap();
    let enabled = "t8k-concierge.sh's units are still enabled";
    let installed = "t8k-concierge.sh is still installed at";

    let status = stdout(&root.run(&["status"]));
    assert!(status.contains(&format!("warning: {enabled}")), "{status}");
    assert!(
        status.contains("state/failed/ and state/.t8k-engine/work/")
            && status.contains("sudo systemctl disable --now t8k-build-watcher.path"),
        "{status}"
    );
    assert!(
        status.contains(&format!("warning: {installed}")),
        "{status}"
    );

    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.log().contains(enabled), "{}", root.log());
    assert!(root.log().contains(installed), "{}", root.log());

    let daemon = root.daemon(&[]);
    root.wait_watching();
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    assert!(root.daemon_out().contains(enabled), "{}", root.daemon_out());

    // t8k-engine's own path-unit model (examples/systemd) keeps those names, running `t8k-engine run`.
    std::fs::write(
        systemd.join("t8k-build-watcher.service"),
        INSTALLER_SERVICE.replace(
            "/home/t8k/scripts/t8k-concierge.sh",
            "/usr/local/bin/t8k-engine run",
        ),
    )
    .unwrap();
    let status = stdout(&root.run(&["status"]));
    assert!(!status.contains(enabled), "{status}");
    // Disabled (the link gone) and the script removed: nothing to say.
    std::fs::write(systemd.join("t8k-build-watcher.service"), INSTALLER_SERVICE).unwrap();
    std::fs::remove_file(systemd.join("multi-user.target.wants/t8k-build-watcher.path")).unwrap();
    std::fs::remove_file(root.path.join("scripts/t8k-concierge.sh")).unwrap();
    let status = stdout(&root.run(&["status"]));
    assert!(!status.contains("warning:"), "{status}");
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes the copy of `name` look as if an older t8k-engine's `scripts init` had made it from `older`.
fn made_by_an_older_engine(root: &Root, name: &str, older: &str) {
    let base = root.path.join("scripts/.t8k-engine-base");
    std::fs::write(base.join(name), older).unwrap();
    let manifest = base.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["files"][name] = serde_json::json!({
        "engine_version": "0.0.9",
        "sha256": sha256(older),
        "copied_at": "2026-01-01T00:00:00Z",
    });
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn copies_of_older_built_in_scripts_are_flagged_diffed_and_merged() {
    let root = root_with_systemd("/nonexistent", "");
    let out = root.run(&["scripts", "init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let check = root.run(&["check"]);
    assert!(!stderr(&check).contains("warning:"), "{}", text(&check));
    let copy = root.path.join("scripts/main.rhai");
    let shipped = std::fs::read_to_string(&copy).unwrap();
    // The older built-in lacked the first line of today's; the operator added a line at the end.
    let older = shipped.split_once('\n').unwrap().1.to_string();
    made_by_an_older_engine(&root, "main.rhai", &older);
    let mine = format!("{older}// my own hook\n");
    std::fs::write(&copy, &mine).unwrap();

    let check = root.run(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let flagged = "main.rhai is a copy of the built-in of t8k-engine 0.0.9";
    assert!(stderr(&check).contains(flagged), "{}", text(&check));
    assert!(
        stderr(&check).contains("`t8k-engine scripts diff main.rhai`"),
        "{}",
        text(&check)
    );
    assert!(stdout(&root.run(&["status"])).contains(flagged));

    let diff = root.run(&["scripts", "diff", "main.rhai"]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));
    let d = stdout(&diff);
    let first = shipped.lines().next().unwrap();
    let (mine_part, rest) = d.split_once("-- upstream changes:").expect("both sides");
    assert!(
        mine_part.contains("-- your changes:") && mine_part.contains("+// my own hook"),
        "{d}"
    );
    assert!(rest.contains(&format!("+{first}")), "{d}");
    assert!(rest.contains("merge proposal (merges cleanly)"), "{d}");

    let merged = root.run(&["scripts", "merge"]);
    assert_eq!(merged.status.code(), Some(0), "{}", text(&merged));
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        format!("{shipped}// my own hook\n")
    );
    assert_eq!(
        std::fs::read_to_string(root.path.join("scripts/main.rhai.old")).unwrap(),
        mine
    );
    assert!(!stderr(&root.run(&["check"])).contains("warning:"));

    // Both sides changed the same line: the copy is left alone and the proposal written beside it.
    made_by_an_older_engine(&root, "main.rhai", &older);
    std::fs::write(&copy, format!("// my first line\n{older}")).unwrap();
    let merged = root.run(&["scripts", "merge", "main.rhai"]);
    assert_eq!(merged.status.code(), Some(1), "{}", text(&merged));
    assert!(
        stdout(&merged).contains("1 conflict(s), left unchanged"),
        "{}",
        text(&merged)
    );
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        format!("// my first line\n{older}")
    );
    let proposal = std::fs::read_to_string(root.path.join("scripts/main.rhai.merged")).unwrap();
    assert!(
        proposal.contains("<<<<<<< ours") && proposal.contains(first),
        "{proposal}"
    );
    std::fs::write(&copy, &proposal).unwrap();
    let refused = root.run(&["scripts", "merge", "--resolved", "main.rhai"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(stderr(&refused).contains("still holds conflict markers"));
    std::fs::write(&copy, format!("// my first line\n{shipped}")).unwrap();
    let resolved = root.run(&["scripts", "merge", "--resolved", "main.rhai"]);
    assert_eq!(resolved.status.code(), Some(0), "{}", text(&resolved));
    assert!(!stderr(&root.run(&["check"])).contains("warning:"));

    // A copy made before bases were recorded: said so, and compared with the built-in.
    std::fs::write(root.path.join("scripts/multi.rhai"), "fn build(job) { }\n").unwrap();
    std::fs::remove_file(root.path.join("scripts/.t8k-engine-base/multi.rhai")).unwrap();
    let check = stderr(&root.run(&["check"]));
    assert!(
        check.contains("multi.rhai differs from t8k-engine"),
        "{check}"
    );
    assert!(check.contains("has no recorded base"), "{check}");
    let diff = stdout(&root.run(&["scripts", "diff", "multi.rhai"]));
    assert!(
        diff.contains("no recorded base") && diff.contains("-fn build(job) { }"),
        "{diff}"
    );
    let unknown = root.run(&["scripts", "diff", "nope.rhai"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
}
