//! Test harness: a temporary TractStack root driven through the real `t8k-engine` binary, with a recording
//! `pm2`, a `mark` helper and a stand-in `systemctl` (tests/fixtures/systemctl says where it is still used);
//! tests that restart a unit replace it with a real systemd's (`systemd::Systemd::replace_fake_systemctl`).

pub mod site;
pub mod systemd;
pub mod web;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A script that marks each job it runs as `trigger:line:type:tenant:site`.
pub const MARKING: &str = r#"
fn build(job) { run("mark", [`${job.trigger}:${job.line}:${job.type}:${job.tenant}:${job.site}`]); }
"#;

/// A root whose main, multi and dedicated scripts all run [`MARKING`].
pub fn marking_root() -> Root {
    root_with(MARKING, "")
}

/// A root whose main, multi and dedicated scripts are all `script`, with `config` added to its config.
pub fn root_with(script: &str, config: &str) -> Root {
    let root = Root::with_config(config);
    for t in ["main", "multi", "dedicated"] {
        root.script(&format!("{t}.rhai"), script);
    }
    root
}

/// A temporary TractStack root.
pub struct Root {
    _dir: tempfile::TempDir,
    /// The root directory.
    pub path: PathBuf,
    /// Where the fakes record calls and keep state.
    pub fakes: PathBuf,
}

impl Root {
    /// A fresh root with short timeouts and the fakes on PATH.
    pub fn new() -> Root {
        Self::with_config("")
    }

    /// A fresh root whose config file gets `extra` appended.
    pub fn with_config(extra: &str) -> Root {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().canonicalize().unwrap();
        let fakes = path.join("fakes");
        for d in ["state", "scripts", "etc", "fakes/bin", "fakes/units", "log"] {
            std::fs::create_dir_all(path.join(d)).unwrap();
        }
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for tool in ["systemctl", "pm2", "mark"] {
            std::os::unix::fs::symlink(fixtures.join(tool), fakes.join("bin").join(tool)).unwrap();
        }
        let base = format!(
            "root = {:?}\nkill_grace = 1\njob_timeout = 120\nstep_timeout = 60\nhttp_timeout = 5\n",
            path.display().to_string()
        );
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
        let overridden: Vec<String> = extra.lines().map(key).collect();
        let mut config: String = base
            .lines()
            .filter(|l| !overridden.contains(&key(l)))
            .map(|l| format!("{l}\n"))
            .collect();
        config.push_str(extra);
        std::fs::write(path.join("config.toml"), config).unwrap();
        std::fs::write(path.join("etc/t8k-ports.conf"), "main=10000,20000\n").unwrap();
        Root {
            _dir: dir,
            path,
            fakes,
        }
    }

    /// Writes an operator script (e.g. `main.rhai`, `lib/common.rhai`).
    pub fn script(&self, name: &str, text: &str) -> &Self {
        let p = self.path.join("scripts").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    /// Drops a trigger file into the inbox.
    pub fn trigger(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path.join("state").join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// The engine binary with this root's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_t8k-engine"));
        let path = format!(
            "{}:{}",
            self.fakes.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.args(args)
            .env("PATH", path)
            .env("T8K_ENGINE_CONFIG", self.path.join("config.toml"))
            .env("FAKE_DIR", &self.fakes)
            .env("MARKS", self.marks_path())
            .env_remove("T8K_ROOT")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }

    /// Runs the engine to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run t8k-engine")
    }

    /// Starts the engine in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn t8k-engine")
    }

    /// Path of the marks file.
    pub fn marks_path(&self) -> PathBuf {
        self.path.join("marks")
    }

    /// Lines written by `mark`, in order.
    pub fn marks(&self) -> Vec<String> {
        std::fs::read_to_string(self.marks_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Names in `state/failed/` that are triggers (not reasons, nor the temporary file of a reason
    /// being written).
    pub fn failed(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path.join("state/failed"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // `.NAME.reason.PID.tmp` is a reason being written (write_durably), not a trigger.
                    .filter(|n| !n.ends_with(".reason") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The reason file of a set-aside trigger.
    pub fn reason(&self, name: &str) -> String {
        std::fs::read_to_string(
            self.path
                .join("state/failed")
                .join(format!("{name}.reason")),
        )
        .unwrap_or_else(|e| panic!("no reason for {name}: {e}; failed/ has {:?}", self.failed()))
    }

    /// Trigger files still in the inbox.
    pub fn inbox(&self) -> Vec<String> {
        list_triggers(&self.path.join("state"))
    }

    /// Trigger files claimed but unfinished.
    pub fn work(&self) -> Vec<String> {
        list_triggers(&self.path.join("state/.t8k-engine/work"))
    }

    /// Calls recorded by a fake (`systemctl` or `pm2`).
    pub fn calls(&self, tool: &str) -> Vec<String> {
        std::fs::read_to_string(self.fakes.join(format!("{tool}.calls")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The build log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path.join("log/build.log")).unwrap_or_default()
    }
}

fn list_triggers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("build-") && n.ends_with(".csv"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs another program with the engine's test environment (for wrappers such as script(1)).
pub trait OutputWith {
    /// Replaces the program, keeping the environment.
    fn output_with_program(&mut self, program: &str, args: &[&str]) -> Output;
}

impl OutputWith for Command {
    fn output_with_program(&mut self, program: &str, args: &[&str]) -> Output {
        let mut c = Command::new(program);
        c.args(args).stdin(Stdio::null());
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.output().expect("run the wrapper")
    }
}

/// Polls `cond` until it holds, failing the test with `what` after `limit` (at the caller's line).
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Standard error and output of a finished run, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs git in `dir`, panicking with its output on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare remote at `remote` with one commit, cloned to `clone`; returns a separate working copy that pushes to it.
pub fn git_repo(remote: &Path, clone: &Path, files: &[(&str, &str)]) -> PathBuf {
    let parent = remote.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    git(
        parent,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            remote.to_str().unwrap(),
        ],
    );
    let upstream = PathBuf::from(format!("{}.work", remote.display()));
    git(
        parent,
        &[
            "clone",
            "-q",
            remote.to_str().unwrap(),
            upstream.to_str().unwrap(),
        ],
    );
    git(&upstream, &["checkout", "-q", "-b", "main"]);
    commit(&upstream, files, "initial");
    std::fs::create_dir_all(clone.parent().unwrap()).unwrap();
    git(
        clone.parent().unwrap(),
        &[
            "clone",
            "-q",
            remote.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    upstream
}

/// Writes files in a working copy, commits and pushes; returns the new commit id.
pub fn commit(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, content) in files {
        let p = work.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"])
}

impl Root {
    /// Starts `t8k-engine watch` with its output in `<root>/daemon.out`; it is killed if the test fails.
    pub fn daemon(&self, envs: &[(&str, &str)]) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("daemon.out"))
            .unwrap();
        let mut cmd = self.cmd(&["watch"]);
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Daemon(cmd.spawn().expect("spawn t8k-engine watch"))
    }

    /// The daemon's output so far.
    pub fn daemon_out(&self) -> String {
        std::fs::read_to_string(self.path.join("daemon.out")).unwrap_or_default()
    }

    /// Waits until the daemon logs that it is watching.
    #[track_caller]
    pub fn wait_watching(&self) {
        wait_until(Duration::from_secs(20), "the daemon to watch", || {
            self.daemon_out().contains("watching ")
        });
    }
}

/// A daemon started by a test: killed when dropped, so a failing test leaves no engine behind.
pub struct Daemon(pub Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends a signal to a daemon and waits for its exit code.
pub fn stop(mut child: Daemon, signal: i32) -> Option<i32> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().unwrap().code()
}
