//! Every path the engine creates, reads or renames, replaced by a symlink, a FIFO, a hard link, a directory
//! or another user's file. The engine's own directories (`state/failed`, `state/.t8k-engine` and below)
//! are refused unless they are real directories of the engine's user that nobody else can write, and
//! nothing is ever written through a link; the operator's files (config, scripts, ports, log) may be links,
//! but nothing may hang on a FIFO, and every refusal says what, where and what to do.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{Root, text};

/// Runs a command, failing the test if it has not ended after 30 s (a FIFO read would block for good).
fn bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the engine hung: {:?}",
                child.wait_with_output().map(|o| text(&o))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Puts something in a path's place.
type Make = fn(&Path);

fn run(root: &Root) -> Output {
    bounded(root.cmd(&["run"]))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
}

/// A root whose `main` jobs fail (so their trigger is set aside into `failed/`) and whose `multi` jobs
/// record a release (so `releases/` is written), with one trigger of each waiting.
fn root_with_work() -> Root {
    let root = Root::new();
    root.script("main.rhai", "fn build(job) { throw \"no\"; }\n");
    root.script(
        "multi.rhai",
        "fn build(job) { record_release(job, #{ ok: true }); run(\"mark\", [job.tenant]); }\n",
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=multi,tenant=t,command=build\n");
    root
}

/// The engine's own directories, by path below the root, and how deep below the inbox each is.
const OWN_DIRS: [&str; 6] = [
    "state/failed",
    "state/.t8k-engine",
    "state/.t8k-engine/work",
    "state/.t8k-engine/history",
    "state/.t8k-engine/releases",
    "state/.t8k-engine/releases/pending",
];

fn outside_is_empty(outside: &Path) -> bool {
    std::fs::read_dir(outside).unwrap().next().is_none()
}

fn assert_refused(root: &Root, out: &Output, dir: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}: {}",
        dir.display(),
        text(out)
    );
    let wanted = format!("refusing to use {}: {what}", dir.display());
    assert!(stderr.contains(&wanted), "want `{wanted}` in\n{stderr}");
    assert_eq!(
        root.inbox(),
        ["build-1.csv", "build-2.csv"],
        "nothing was claimed before the refusal"
    );
    assert!(root.marks().is_empty());
}

#[test]
fn each_engine_directory_replaced_by_a_symlink_is_refused_and_nothing_is_written_through_it() {
    for rel in OWN_DIRS {
        let root = root_with_work();
        let dir = root.path.join(rel);
        let outside = root.path.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        symlink(&outside, &dir).unwrap();
        let out = run(&root);
        assert_refused(
            &root,
            &out,
            &dir,
            &format!("it is a symlink to {}", outside.display()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("mv {0} {0}.suspect", dir.display())),
            "it says what to do: {stderr}"
        );
        assert!(
            outside_is_empty(&outside),
            "{rel}: something was written through the link"
        );
        // Done as advised, the engine makes a real directory and works.
        std::fs::rename(&dir, root.path.join("moved-aside")).unwrap();
        let out = run(&root);
        assert_eq!(out.status.code(), Some(1), "{rel}: {}", text(&out));
        assert_eq!(root.failed(), ["build-1.csv"], "{rel}");
        assert_eq!(root.marks(), ["t"], "{rel}");
        assert!(std::fs::symlink_metadata(&dir).unwrap().is_dir(), "{rel}");
        assert!(outside_is_empty(&outside), "{rel}");
    }
}

#[test]
fn an_engine_directory_that_is_a_file_a_fifo_another_users_or_writable_by_others_is_refused() {
    let cases: [(&str, Make, &str); 5] = [
        (
            "a regular file",
            |p| std::fs::write(p, "x").unwrap(),
            "it is a regular file, not a directory",
        ),
        ("a FIFO", mkfifo, "it is a FIFO, not a directory"),
        (
            "another user's directory",
            |p| {
                std::fs::create_dir(p).unwrap();
                chown_nobody(p);
            },
            "it is owned by nobody, not by root, the user this engine runs as",
        ),
        (
            "a group-writable directory",
            |p| {
                std::fs::create_dir(p).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o775)).unwrap();
            },
            "its group can write it (mode 0775)",
        ),
        (
            "a world-writable directory",
            |p| {
                std::fs::create_dir(p).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o1777)).unwrap();
            },
            "every local user can write it (mode 1777)",
        ),
    ];
    for rel in OWN_DIRS {
        for (what, make, says) in cases {
            let root = root_with_work();
            let dir = root.path.join(rel);
            std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
            make(&dir);
            let out = run(&root);
            assert_refused(&root, &out, &dir, says);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let advice = if what.ends_with("writable directory") {
                format!("`chmod go-w {}`", dir.display())
            } else {
                format!("`mv {0} {0}.suspect`", dir.display())
            };
            assert!(stderr.contains(&advice), "{rel} as {what}: {stderr}");
        }
    }
}

#[test]
fn a_daemon_holds_a_trigger_back_while_an_engine_directory_is_a_link_and_goes_on_once_it_is_fixed()
{
    let root = Root::new();
    root.script("main.rhai", "fn build(job) { throw \"no\"; }\n");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    let outside = root.path.join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A producer who can write the inbox swaps failed/ for a link just before a trigger fails.
    let failed = root.path.join("state/failed");
    std::fs::rename(&failed, root.path.join("old-failed")).unwrap();
    symlink(&outside, &failed).unwrap();
    root.trigger("build-1.csv", "type=main,command=build\n");
    // As for a read-only directory: reported, the trigger kept claimed and retried later, in order.
    crate::common::wait_until(Duration::from_secs(20), "the refusal", || {
        root.daemon_out()
            .contains("stays claimed and runs again in 5s")
    });
    let out = root.daemon_out();
    assert!(
        out.contains(&format!(
            "refusing to use {}: it is a symlink to {}",
            failed.display(),
            outside.display()
        )),
        "{out}"
    );
    assert!(outside_is_empty(&outside));
    assert_eq!(root.work(), ["build-1.csv"], "the trigger is kept");
    // Done as advised: the next retry sets it aside in a real directory.
    std::fs::rename(&failed, root.path.join("link-aside")).unwrap();
    crate::common::wait_until(Duration::from_secs(30), "the trigger set aside", || {
        root.failed() == ["build-1.csv"]
    });
    assert!(outside_is_empty(&outside));
    assert_eq!(crate::common::stop(daemon, libc::SIGTERM), Some(0));
}

#[test]
fn links_fifos_and_hard_links_inside_the_engine_directories_are_never_followed() {
    let root = root_with_work();
    let engine = root.path.join("state/.t8k-engine");
    for d in ["history", "releases", "work"] {
        std::fs::create_dir_all(engine.join(d)).unwrap();
    }
    std::fs::create_dir_all(root.path.join("state/failed")).unwrap();
    let victim = root.path.join("victim.txt");
    std::fs::write(&victim, "keep me\n").unwrap();
    // A link where the pid file, a reason, a release record and the release history go: each is replaced
    // or refused, never written through.
    symlink(&victim, engine.join("engine.pid")).unwrap();
    symlink(&victim, root.path.join("state/failed/build-1.csv.reason")).unwrap();
    symlink(&victim, engine.join("releases/multi_t.json")).unwrap();
    // The journal as a FIFO: appending must neither block nor write elsewhere.
    mkfifo(&engine.join("history/journal.jsonl"));
    let out = run(&root);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert!(
        std::fs::symlink_metadata(root.path.join("state/failed/build-1.csv.reason"))
            .unwrap()
            .is_file(),
        "the reason replaced the link"
    );
    assert!(root.reason("build-1.csv").contains("no"));
    assert!(
        root.log().contains(&format!(
            "refusing to use {}: it is a FIFO, not a regular file",
            engine.join("history/journal.jsonl").display()
        )),
        "the history write is refused and logged, and the job goes on:\n{}",
        root.log()
    );
    assert_eq!(root.marks(), ["t"]);
    let record = engine.join("releases/multi_t.json");
    assert!(std::fs::symlink_metadata(&record).unwrap().is_file());

    // A hard link to another file where the release history is appended: refused, the other file kept.
    std::fs::hard_link(&victim, engine.join("releases/multi_t.history.jsonl")).unwrap_or_else(
        |_| {
            std::fs::remove_file(engine.join("releases/multi_t.history.jsonl")).unwrap();
            std::fs::hard_link(&victim, engine.join("releases/multi_t.history.jsonl")).unwrap();
        },
    );
    std::fs::remove_file(engine.join("history/journal.jsonl")).unwrap();
    root.trigger("build-3.csv", "type=multi,tenant=t,command=build\n");
    let out = run(&root);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert!(
        root.reason("build-3.csv")
            .contains("it is a hard link (2 names)"),
        "{}",
        root.reason("build-3.csv")
    );

    // A link where a claimed trigger's attempt count lives: refused, the trigger stays claimed.
    std::fs::write(
        engine.join("work/build-4.csv"),
        "type=multi,tenant=u,command=build\n",
    )
    .unwrap();
    symlink(&victim, engine.join("work/.build-4.csv.attempts")).unwrap();
    let out = run(&root);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "refusing to use {}: it is a symlink",
            engine.join("work/.build-4.csv.attempts").display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(root.work(), ["build-4.csv"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
}

#[test]
fn a_null_or_empty_config_means_the_defaults_and_no_advice_touches_a_device() {
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) { run(\"mark\", [job.trigger]); }\n",
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let empty = root.path.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    for config in [Path::new("/dev/null"), empty.as_path()] {
        let mut cmd = root.cmd(&["--root", root.path.to_str().unwrap(), "config"]);
        cmd.env("T8K_ENGINE_CONFIG", config);
        let out = bounded(cmd);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("kill_grace = 5"),
            "{}",
            text(&out)
        );
    }
    let mut cmd = root.cmd(&["--root", root.path.to_str().unwrap(), "run"]);
    cmd.env("T8K_ENGINE_CONFIG", "/dev/null");
    let out = bounded(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.marks(), ["build-1.csv"]);
    let all = format!("{}{}", text(&out), root.log());
    assert!(!all.contains("/dev/null (mode"), "{all}");
    assert!(
        !all.contains("chmod"),
        "no advice at all for a null config: {all}"
    );
}

#[test]
fn operator_files_that_are_fifos_directories_or_broken_links_give_clear_errors_and_never_hang() {
    // The config file: a FIFO and a directory are refused at once (exit 2); a link is followed.
    let root = Root::new();
    let fifo = root.path.join("config.fifo");
    mkfifo(&fifo);
    let dir = root.path.join("config.d");
    std::fs::create_dir(&dir).unwrap();
    for (config, says) in [
        (
            &fifo,
            "is a FIFO, not a regular file: give a regular file, or /dev/null for the defaults",
        ),
        (&dir, "is a directory: give the file itself"),
    ] {
        let mut cmd = root.cmd(&["run"]);
        cmd.env("T8K_ENGINE_CONFIG", config);
        let out = bounded(cmd);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            text(&out)
        );
    }
    let link = root.path.join("config.link");
    symlink(root.path.join("config.toml"), &link).unwrap();
    let mut cmd = root.cmd(&["run"]);
    cmd.env("T8K_ENGINE_CONFIG", &link);
    assert_eq!(bounded(cmd).status.code(), Some(0));

    // A script that is a FIFO, a directory or a broken link fails its job with a clear reason, never
    // reads the FIFO and never falls back to the built-in script.
    let scripts = root.path.join("scripts");
    let cases: [(&str, Make, &str); 3] = [
        (
            "main.rhai",
            mkfifo,
            "is not a regular file: put the script there, or remove it",
        ),
        (
            "multi.rhai",
            |p| std::fs::create_dir(p).unwrap(),
            "is not a regular file",
        ),
        (
            "dedicated.rhai",
            |p| symlink("/nonexistent/script.rhai", p).unwrap(),
            "is a link to nothing that can be read",
        ),
    ];
    for (name, make, _) in &cases {
        make(&scripts.join(name));
    }
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=multi,tenant=t,command=build\n");
    root.trigger("build-3.csv", "type=dedicated,site=s,command=build\n");
    let out = run(&root);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for ((name, _, says), trigger) in
        cases
            .iter()
            .zip(["build-1.csv", "build-2.csv", "build-3.csv"])
    {
        let reason = root.reason(trigger);
        assert!(
            reason.contains(&format!("{}", scripts.join(name).display())) && reason.contains(says),
            "{name}: {reason}"
        );
    }

    // The ports file as a FIFO: the job that needs it fails, nothing hangs.
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) { run(\"mark\", [`${job.go_port}`]); }\n",
    );
    std::fs::remove_file(root.path.join("etc/t8k-ports.conf")).unwrap();
    mkfifo(&root.path.join("etc/t8k-ports.conf"));
    root.trigger("build-1.csv", "type=main,command=build\n");
    let out = run(&root);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        root.reason("build-1.csv")
            .contains("t8k-ports.conf is not a regular file"),
        "{}",
        root.reason("build-1.csv")
    );

    // The build log as a FIFO or a directory: the engine logs to stderr alone and says why.
    for make in [mkfifo as fn(&Path), |p: &Path| {
        std::fs::create_dir(p).unwrap()
    }] {
        let root = Root::new();
        root.script(
            "main.rhai",
            "fn build(job) { run(\"mark\", [job.trigger]); }\n",
        );
        make(&root.path.join("log/build.log"));
        root.trigger("build-1.csv", "type=main,command=build\n");
        let out = run(&root);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(root.marks(), ["build-1.csv"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("logging to stderr only"),
            "{}",
            text(&out)
        );
    }

    // The inbox as a regular file: a clear error, nothing else touched.
    let root = Root::new();
    std::fs::remove_dir(root.path.join("state")).unwrap();
    std::fs::write(root.path.join("state"), "not a directory").unwrap();
    let out = run(&root);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&root.path.join("state").display().to_string()),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(root.path.join("state")).unwrap(),
        "not a directory"
    );
}

#[test]
fn a_trigger_of_another_user_runs_and_one_the_engine_cannot_read_is_set_aside() {
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) { run(\"mark\", [job.trigger]); }\n",
    );
    let theirs = root.trigger("build-1.csv", "type=main,command=build\n");
    chown_nobody(&theirs);
    let out = run(&root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        root.marks(),
        ["build-1.csv"],
        "a producer's trigger is the normal case"
    );

    // The engine as `nobody` (root reads anything) and a trigger it may not read.
    let unreadable = root.trigger("build-2.csv", "type=main,command=build\n");
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&root.path)
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::chown(&unreadable, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = root.cmd(&["run"]);
    {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534).env("HOME", &root.path);
    }
    let out = bounded(cmd);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = root.reason("build-2.csv");
    assert!(reason.contains("Permission denied"), "{reason}");
    assert_eq!(root.marks(), ["build-1.csv"]);
    let moved: PathBuf = root.path.join("state/failed/build-2.csv");
    assert_eq!(
        std::fs::metadata(&moved).unwrap().uid(),
        0,
        "set aside as it is, unread"
    );
}
