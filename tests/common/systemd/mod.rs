//! A real systemd user manager for tests: booted in a private PID and mount namespace with its own /run
//! and its own cgroup, driven with `systemctl --user` through nsenter, torn down with the test (see
//! ../shared/notes/real-systemd.md). Tests install units as files; units write their output to files,
//! since no journald runs there.
//!
//! Teardown does not depend on the test finishing: the namespace's PID 1 is a shell that waits on a pipe
//! only this process holds, so when the test process ends in any way (a panic, a kill) the pipe closes,
//! PID 1 exits and the kernel kills everything in the namespace. `Drop` also kills PID 1 at once.
//!
//! Use: `let Some(sd) = Systemd::boot() else { return };` (it says why it skips, and never skips in CI),
//! `sd.install("tractstack-go.service", text)` (a unit file, or a drop-in `NAME.d/x.conf`), then
//! `sd.ok(&["start", UNIT])`, `sd.show(UNIT, "MainPID")`.
//! Units run as the test's user with the manager's small environment (`UNIT_PATH`); give them
//! `StandardOutput=append:FILE` to read their output (anything else lands in `manager_log()`). Put
//! `sd.bin_dir()` first on the PATH of an engine, in a unit or started by the test, and its plain
//! `systemctl restart UNIT` reaches this manager. Pids systemd reports are the namespace's: check them with
//! `sd.alive(pid)`, read their files through `sd.inside("/proc/PID/...")`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Root, text, wait_until};

pub mod units;

/// The PATH systemd gives units by default; units that need more set `Environment=PATH=`.
pub const UNIT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Set in CI (`.ci/run`): a missing `unshare` or systemd fails the test instead of skipping it.
pub const REQUIRE_VAR: &str = "T8K_REQUIRE_SYSTEMD";

const MANAGERS: [&str; 2] = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// Why a real systemd cannot run here (a tool is missing), or `None` when it can.
pub fn unavailable() -> Option<String> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    let missing: Vec<&str> = ["unshare", "nsenter", "systemctl"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !missing.is_empty() {
        return Some(format!("{} not found on PATH", missing.join(", ")));
    }
    if !MANAGERS.iter().any(|m| Path::new(m).is_file()) {
        return Some(format!("no systemd manager at {}", MANAGERS.join(" or ")));
    }
    None
}

/// A cgroup hierarchy this process belongs to: where it is mounted and our place in it.
struct Hierarchy {
    mount: PathBuf,
    path: String,
    /// The hierarchy systemd tracks units with: name=systemd (hybrid, legacy) or the unified one.
    tracking: bool,
}

fn hierarchies() -> Vec<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts: Vec<(PathBuf, String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let options = r.nth(1).unwrap_or("").to_string();
            Some((PathBuf::from(mount), fstype, options))
        })
        .filter(|(_, fs, _)| fs == "cgroup" || fs == "cgroup2")
        .collect();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut found = Vec::new();
    let v2_tracks = !own.lines().any(|l| l.contains(":name=systemd:"));
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = if id == "0" && controllers.is_empty() {
            mounts.iter().find(|(_, fs, _)| fs == "cgroup2")
        } else {
            // cpuset needs cpus and mems set up before a process may join a child; systemd does not use it.
            if controllers.split(',').any(|c| c == "cpuset") {
                continue;
            }
            mounts.iter().find(|(_, fs, opts)| {
                fs == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| opts.split(',').any(|o| o == c))
            })
        };
        if let Some((mount, _, _)) = mount {
            found.push(Hierarchy {
                mount: mount.clone(),
                path: path.to_string(),
                tracking: if id == "0" {
                    v2_tracks
                } else {
                    controllers == "name=systemd"
                },
            });
        }
    }
    found
}

static BOOTED: AtomicUsize = AtomicUsize::new(0);

/// A systemd user manager in a namespace of its own; everything in it dies when this is dropped.
pub struct Systemd {
    unshare: Child,
    /// Held open while the namespace lives: its PID 1 exits when this pipe closes.
    keepalive: Option<ChildStdin>,
    /// The namespace's PID 1 as this process sees it, and a pidfd that cannot name another process.
    init: i32,
    init_fd: OwnedFd,
    dir: tempfile::TempDir,
    /// The cgroup directories made for this manager (its own, then the ones above it that were missing),
    /// removed with everything systemd made below them.
    cgroups: Vec<PathBuf>,
    runtime_dir: String,
}

impl Systemd {
    /// Boots a user manager, or returns `None` after saying why the test is skipped (a tool is missing).
    pub fn boot() -> Option<Systemd> {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var_os(REQUIRE_VAR).is_none(),
                "{REQUIRE_VAR} is set but a real systemd cannot run: {why}; run bash .ci/install.sh"
            );
            eprintln!(
                "skipped: a real systemd cannot run here: {why} (bash .ci/install.sh installs it)"
            );
            return None;
        }
        Some(Self::start())
    }

    fn start() -> Systemd {
        let dir = tempfile::Builder::new()
            .prefix("t8k-systemd-")
            .tempdir()
            .expect("temp dir");
        for d in ["config/systemd/user", "home", "bin"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        // Units without an output of their own write into the manager's log, next to its messages.
        std::fs::write(
            dir.path().join("config/systemd/user.conf"),
            "[Manager]\nLogColor=no\nDefaultStandardOutput=inherit\nDefaultStandardError=inherit\n",
        )
        .unwrap();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let runtime_dir = format!("/run/user/{uid}");
        let n = BOOTED.fetch_add(1, Ordering::Relaxed);
        let (cgroups, procs) = own_cgroup(n);
        let manager = MANAGERS.iter().find(|m| Path::new(m).is_file()).unwrap();
        // The manager logs to /dev/console, and only when it is a terminal: `script` gives it one (a pty
        // recorded into manager.log), mounted over /dev/console in the namespace alone.
        let script = r#"set -eu
dir=$1; shift
for procs in "$@"; do echo 0 > "$procs"; done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system "$XDG_RUNTIME_DIR"
chmod 0700 "$XDG_RUNTIME_DIR"
ulimit -c 0
export T8K_DIR="$dir"
script -qfec 'mount --bind "$(tty)" /dev/console && exec env -i PATH="$UNIT_PATH" \
    HOME="$T8K_DIR/home" LANG=C.UTF-8 XDG_RUNTIME_DIR="$XDG_RUNTIME_DIR" \
    XDG_CONFIG_HOME="$T8K_DIR/config" "$T8K_MANAGER" --user' \
    "$dir/manager.log" </dev/null >/dev/null 2>&1 &
read -r _ || true
"#;
        let mut unshare = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "bash",
                "-c",
                script,
                "t8k-systemd-init",
            ])
            .arg(dir.path())
            .args(&procs)
            .env("T8K_MANAGER", manager)
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("UNIT_PATH", UNIT_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("init.err")).unwrap())
            .spawn()
            .expect("spawn unshare");
        let keepalive = unshare.stdin.take();
        let init = find_init(&mut unshare, dir.path());
        let init_fd = pidfd(init).expect("pidfd_open of the namespace's PID 1");
        assert_eq!(
            find_init(&mut unshare, dir.path()),
            init,
            "the namespace's PID 1 changed"
        );
        write_wrapper(&dir.path().join("bin/systemctl"), init, &runtime_dir);
        let sd = Systemd {
            unshare,
            keepalive,
            init,
            init_fd,
            dir,
            cgroups,
            runtime_dir,
        };
        let socket = sd.inside(&format!("{}/systemd/private", sd.runtime_dir));
        wait_until(Duration::from_secs(30), "the user manager's socket", || {
            socket.exists() || sd.dead()
        });
        let mut state = String::new();
        wait_until(Duration::from_secs(30), "the user manager to run", || {
            assert!(!sd.dead(), "the namespace died:\n{}", sd.diagnostics());
            state = sd.systemctl(&["is-system-running"]).stdout_text();
            matches!(state.trim(), "running" | "degraded")
        });
        assert_eq!(
            state.trim(),
            "running",
            "manager #{n} is degraded:\n{}",
            sd.diagnostics()
        );
        let own = sd.ok(&["show", "-p", "ControlGroup", "--value"]);
        assert!(
            own.trim()
                .ends_with(&format!("/t8k-systemd-{}-{n}", std::process::id())),
            "the manager runs in {own}, not in the cgroup made for it"
        );
        sd
    }

    /// Whether the namespace's PID 1 is gone.
    fn dead(&self) -> bool {
        !super::alive(self.init)
    }

    /// The directory units are installed in (`$XDG_CONFIG_HOME/systemd/user`).
    pub fn unit_dir(&self) -> PathBuf {
        self.dir.path().join("config/systemd/user")
    }

    /// A directory holding a `systemctl` that is `systemctl --user` of this manager, inside the namespace
    /// and outside it: put it first on the PATH of a unit or of an engine the test runs.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Puts this manager's `systemctl` where the root has its fake one (`fakes/bin/`, first on the PATH of
    /// everything `root.cmd` runs), so that the engine's plain `systemctl` reaches this manager.
    pub fn replace_fake_systemctl(&self, root: &Root) {
        let fake = root.fakes.join("bin/systemctl");
        std::fs::remove_file(&fake).unwrap();
        std::os::unix::fs::symlink(self.bin_dir().join("systemctl"), fake).unwrap();
    }

    /// A path inside the namespace's mount namespace, as this process can read it (its /run, its /proc).
    pub fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.init))
    }

    /// Whether a process of the namespace (by its pid there, as systemd reports it) exists and is no zombie.
    pub fn alive(&self, ns_pid: u32) -> bool {
        let stat = self.inside(&format!("/proc/{ns_pid}/stat"));
        std::fs::read_to_string(stat).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    }

    /// Writes a unit file (or a drop-in, `NAME.d/FILE.conf`) and reloads the manager.
    pub fn install(&self, name: &str, text: &str) {
        let path = self.unit_dir().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        self.ok(&["daemon-reload"]);
    }

    /// A command run inside the namespace (nsenter), with the environment `systemctl --user` needs.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.init.to_string(),
            "--mount",
            "--pid",
            "--",
            program,
        ])
        .env_clear()
        .env("PATH", UNIT_PATH)
        .env("XDG_RUNTIME_DIR", &self.runtime_dir)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null());
        c
    }

    /// Runs `systemctl --user ARGS` inside the namespace.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.command("systemctl")
            .arg("--user")
            .args(args)
            .output()
            .expect("run systemctl in the namespace")
    }

    /// Runs `systemctl --user ARGS` and returns its output; fails the test when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl --user {}: {}\n{}",
            args.join(" "),
            text(&out),
            self.diagnostics()
        );
        out.stdout_text()
    }

    /// One property of a unit (`systemctl show -p PROP --value`).
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.ok(&["show", "-p", prop, "--value", unit])
            .trim()
            .to_string()
    }

    /// The manager's own log and the namespace's setup errors, for assertion messages.
    pub fn diagnostics(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- manager log\n{}\n--- init errors\n{}",
            read("manager.log"),
            read("init.err")
        )
    }

    /// The namespace's PID 1 as this process sees it.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// The cgroup directories made for this manager (removed with it).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// The pids (as this process sees them) of every process in a unit's cgroup.
    pub fn unit_pids(&self, unit: &str) -> Vec<i32> {
        let cgroup = self.show(unit, "ControlGroup");
        if cgroup.is_empty() {
            return Vec::new();
        }
        let tracking = hierarchies().into_iter().find(|h| h.tracking).unwrap();
        let procs = tracking
            .mount
            .join(cgroup.trim_start_matches('/'))
            .join("cgroup.procs");
        std::fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The manager's log so far.
    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // PID 1 dies, and with it everything in the namespace; the pipe closing would do it too.
        // SAFETY: a pidfd names this exact process even if its pid was reused; the call touches no memory.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.init_fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        drop(self.keepalive.take());
        let _ = self.unshare.wait();
        remove_cgroups(&self.cgroups);
    }
}

/// `systemctl` for code that runs plain `systemctl restart UNIT` (the engine's `restart_systemd`): it is
/// `systemctl --user` of this manager, directly inside the namespace (in a unit) and through nsenter
/// outside it (the test, or an engine the test started). A socket path through /proc/PID/root does not
/// do: the manager cannot authenticate a peer from another PID namespace.
fn write_wrapper(path: &Path, init: i32, runtime_dir: &str) {
    let mnt = std::fs::read_link(format!("/proc/{init}/ns/mnt")).expect("the namespace's mount ns");
    // By its full path: this wrapper comes first on PATH and must not run itself.
    let systemctl = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("systemctl"))
        .find(|p| p.is_file())
        .expect("systemctl on PATH");
    let script = format!(
        "#!/bin/sh\n# systemctl --user of one test's systemd (tests/common/systemd/).\n\
         if [ \"$(readlink /proc/self/ns/mnt)\" = \"{mnt}\" ]; then exec {ctl} --user \"$@\"; fi\n\
         exec nsenter -t {init} --mount --pid -- env XDG_RUNTIME_DIR={runtime_dir} {ctl} --user \"$@\"\n",
        mnt = mnt.display(),
        ctl = systemctl.display()
    );
    std::fs::write(path, script).unwrap();
    chmod(path, 0o755);
}

/// Text of a command's standard output.
pub trait StdoutText {
    /// Standard output as a string.
    fn stdout_text(&self) -> String;
}

impl StdoutText for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes a cgroup of its own in every hierarchy systemd uses, at the same path in each: managers of
/// concurrent tests would otherwise share `/app.slice`, and units would leave this process's memory
/// cgroup. Returns the directories to remove afterwards and the `cgroup.procs` files PID 1 joins.
fn own_cgroup(n: usize) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let found = hierarchies();
    let tracking = found.iter().find(|h| h.tracking);
    // Below the memory cgroup we are limited by, if there is one: systemd uses one path in every hierarchy.
    let base = found
        .iter()
        .find(|h| h.mount.ends_with("memory"))
        .or(tracking)
        .map_or("/".to_string(), |h| h.path.clone());
    let leaf = format!(
        "{}/t8k-systemd-{}-{}",
        base.trim_end_matches('/'),
        std::process::id(),
        n
    );
    let mut made = Vec::new();
    let mut procs = Vec::new();
    for h in &found {
        let target = h.mount.join(leaf.trim_start_matches('/'));
        let mut missing = Vec::new();
        let mut p = target.as_path();
        while !p.exists() {
            missing.push(p.to_path_buf());
            p = p.parent().unwrap();
        }
        // Tests boot managers side by side: another may create (or remove) a shared parent at the same time.
        let make = |d: &PathBuf| match std::fs::create_dir(d) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
        };
        let created = (0..50).any(|_| missing.iter().rev().all(make));
        // Deepest first, so that removal can go in order.
        made.extend(missing);
        if created {
            procs.push(target.join("cgroup.procs"));
        } else {
            assert!(
                !h.tracking,
                "cannot make a cgroup for systemd at {}",
                target.display()
            );
        }
    }
    (made, procs)
}

/// Removes the cgroups made for a manager, with everything systemd made below them, once their
/// processes are gone (a killed process leaves its cgroup a moment after it dies).
fn remove_cgroups(made: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for dir in made {
        let ours = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("t8k-systemd-"));
        if !ours {
            // A parent shared with the managers of other tests: removed only once it is empty.
            let _ = std::fs::remove_dir(dir);
            continue;
        }
        let mut tree: Vec<PathBuf> = walk_dirs(dir);
        tree.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in tree {
            while let Err(e) = std::fs::remove_dir(&d) {
                // A cgroup above ours that another manager uses stays; so does one still emptying, at worst.
                if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}

/// The host pid of the namespace's PID 1: `unshare --fork`'s only child.
fn find_init(unshare: &mut Child, dir: &Path) -> i32 {
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let mut init = 0;
    wait_until(Duration::from_secs(10), "the namespace's PID 1", || {
        if let Ok(Some(status)) = unshare.try_wait() {
            let err = std::fs::read_to_string(dir.join("init.err")).unwrap_or_default();
            panic!("unshare exited ({status}) before booting systemd: {err}");
        }
        init = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        init != 0
    });
    init
}

fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
