//! Owns the transient systemd scope a build step may run in: the `systemd-run --scope` wrapper with a unit
//! name of our own and the step's limits, stopping what is still in the scope when the step ends (a process
//! that left the step's group and scrubbed its environment, which no sweep can find), and what the manager
//! says of the scope. It knows nothing of Rhai or the queue, and runs `systemd-run` and `systemctl` as
//! argument lists, never through a shell.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::ScopeManager;

/// The longest a `systemctl show` or `reset-failed` may take: the manager answers in milliseconds.
const QUERY_LIMIT: Duration = Duration::from_secs(10);
/// How long a step killed by SIGKILL waits for the manager to settle its scope's result.
const SETTLE: Duration = Duration::from_secs(1);

/// One step's scope: its unit name, its manager and the limits it was started with.
#[derive(Debug, Clone)]
pub struct Scope {
    unit: String,
    user: bool,
    systemctl: String,
    limits: Vec<String>,
    grace: Duration,
}

/// What the end of a scope found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeEnd {
    /// Processes were still in the scope after the step's leader ended, and the scope was stopped.
    pub stopped: bool,
    /// How many tasks the scope still held then, where the manager counts them.
    pub left_tasks: Option<u64>,
    /// The manager says the kernel killed a process of the scope for its memory limit.
    pub oom_confirmed: bool,
}

/// Whether a manager of this kind is reachable from here, so that a scope can be asked of it.
pub fn available(manager: ScopeManager) -> bool {
    if !Path::new("/run/systemd/system").is_dir() && !is_user(manager) {
        return false;
    }
    if is_user(manager) {
        return Path::new(&runtime_dir()).join("systemd/private").exists();
    }
    true
}

/// Whether `manager` means the engine user's own manager here.
pub fn is_user(manager: ScopeManager) -> bool {
    match manager {
        ScopeManager::User => true,
        ScopeManager::System => false,
        ScopeManager::Auto => !rustix::process::geteuid().is_root(),
    }
}

/// The user manager's runtime directory: `XDG_RUNTIME_DIR`, else where logind puts it.
fn runtime_dir() -> String {
    std::env::var("XDG_RUNTIME_DIR")
        .ok()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| format!("/run/user/{}", rustix::process::geteuid().as_raw()))
}

/// The start of the unit names of one trigger's scopes: `t8k-step-` and a digest of its job tag, so that
/// an engine resuming the trigger finds what the dead one left in scopes, and nothing of another root.
fn prefix(job_tag: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(job_tag.as_bytes());
    let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("t8k-step-{short}-")
}

/// Stops every scope a trigger's steps were given (by its job tag) that is still there: what an engine
/// that died mid-step left in them. Returns whether any was stopped.
pub fn stop_job_scopes(
    job_tag: &str,
    manager: ScopeManager,
    systemctl: &str,
    grace: Duration,
) -> bool {
    let scope = Scope::new(job_tag, &[], manager, systemctl, grace);
    let pattern = format!("{}*.scope", prefix(job_tag));
    let listed = scope
        .systemctl(
            &["list-units", "--plain", "--no-legend", "--all", &pattern],
            QUERY_LIMIT,
        )
        .unwrap_or_default();
    if listed.trim().is_empty() {
        return false;
    }
    if let Err(e) = scope.systemctl(&["stop", &pattern], grace + QUERY_LIMIT) {
        tracing::warn!("cannot stop the scopes {pattern}: {e}");
    }
    let _ = scope.systemctl(&["reset-failed", &pattern], QUERY_LIMIT);
    true
}

impl Scope {
    /// A scope with a fresh unit name (`t8k-step-<tag digest>-<ulid>.scope`) for one run of a step's program
    /// of the trigger with `job_tag`.
    pub fn new(
        job_tag: &str,
        limits: &[String],
        manager: ScopeManager,
        systemctl: &str,
        grace: Duration,
    ) -> Scope {
        Scope {
            unit: format!(
                "{}{}.scope",
                prefix(job_tag),
                ulid::Ulid::new().to_string().to_ascii_lowercase()
            ),
            user: is_user(manager),
            systemctl: systemctl.to_string(),
            limits: limits.to_vec(),
            grace,
        }
    }

    /// The scope's unit name.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// The memory limit the scope enforces (`MemoryMax=…` or the older `MemoryLimit=…`), if any.
    pub fn memory_limit(&self) -> Option<&str> {
        self.limits
            .iter()
            .rev()
            .find(|p| p.starts_with("MemoryMax=") || p.starts_with("MemoryLimit="))
            .map(String::as_str)
    }

    /// The program and arguments that run `cmd args` in the scope. `systemd-run --scope` execs the
    /// command in its own process, so the process group, the kill on timeout and the rusage stay ours.
    pub fn wrap(&self, cmd: &str, args: Vec<String>) -> (String, Vec<String>) {
        let mut wrapped = Vec::with_capacity(args.len() + 8 + 2 * self.limits.len());
        if self.user {
            wrapped.push("--user".to_string());
        }
        wrapped.extend([
            "--scope".to_string(),
            "--quiet".to_string(),
            format!("--unit={}", self.unit),
            // `systemctl stop` of the scope escalates to SIGKILL after the engine's own grace.
            "-p".to_string(),
            format!("TimeoutStopSec={}ms", self.grace.as_millis().max(1)),
        ]);
        for p in &self.limits {
            wrapped.push("-p".to_string());
            wrapped.push(p.clone());
        }
        wrapped.push("--".to_string());
        wrapped.push(cmd.to_string());
        wrapped.extend(args);
        ("systemd-run".to_string(), wrapped)
    }

    /// The environment `systemd-run` and `systemctl` need to reach a user manager from a service, which
    /// has no login session: its runtime directory.
    pub fn env(&self) -> Vec<(String, String)> {
        if self.user && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            vec![("XDG_RUNTIME_DIR".to_string(), runtime_dir())]
        } else {
            Vec::new()
        }
    }

    /// Ends the scope once the step's leader has ended: stops what is still in it (waiting up to the
    /// grace, then SIGKILL by the manager), and, for a leader killed by SIGKILL, asks the manager whether
    /// that was the memory limit. The unit is then forgotten by the manager.
    pub fn finish(&self, leader_sigkilled: bool) -> ScopeEnd {
        let mut end = ScopeEnd::default();
        let props = self.show();
        // Active after its leader ended: something is left in it (or the manager has not yet seen it
        // empty, and stopping an empty scope costs nothing).
        if props.active == "active" {
            end.left_tasks = props.tasks;
            end.stopped = props.tasks != Some(0);
            let limit = self.grace + QUERY_LIMIT;
            if let Err(e) = self.systemctl(&["stop", &self.unit], limit) {
                tracing::warn!("cannot stop the step's scope {}: {e}", self.unit);
            }
        }
        if leader_sigkilled {
            let deadline = Instant::now() + SETTLE;
            let mut props = props;
            while props.result != "oom-kill"
                && matches!(props.active.as_str(), "active" | "deactivating")
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
                props = self.show();
            }
            end.oom_confirmed = props.result == "oom-kill";
        }
        // A scope that failed stays loaded until this; the unit name is never used again.
        let _ = self.systemctl(&["reset-failed", &self.unit], QUERY_LIMIT);
        end
    }

    fn show(&self) -> Props {
        let out = self
            .systemctl(
                &[
                    "show",
                    "-p",
                    "ActiveState",
                    "-p",
                    "Result",
                    "-p",
                    "TasksCurrent",
                    &self.unit,
                ],
                QUERY_LIMIT,
            )
            .unwrap_or_default();
        Props::parse(&out)
    }

    /// Runs `systemctl [--user] ARGS` with a deadline; its standard output, or why it failed.
    fn systemctl(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut cmd = Command::new(&self.systemctl);
        if self.user {
            cmd.arg("--user");
        }
        cmd.args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.systemctl))?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "`{} {}` did not answer within {}s",
                        self.systemctl,
                        args.join(" "),
                        limit.as_secs()
                    ));
                }
            }
        }
        // The output of `show` and `stop` is a few lines: it fits in the pipe while the command runs.
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// The properties of a scope that its end looks at.
#[derive(Debug, Default)]
struct Props {
    active: String,
    result: String,
    tasks: Option<u64>,
}

impl Props {
    fn parse(text: &str) -> Props {
        let mut p = Props::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("ActiveState", v)) => p.active = v.to_string(),
                Some(("Result", v)) => p.result = v.to_string(),
                // `[not set]` without task accounting, and u64::MAX for "unknown".
                Some(("TasksCurrent", v)) => {
                    p.tasks = v.parse().ok().filter(|n| *n != u64::MAX);
                }
                _ => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_names_the_unit_its_manager_grace_and_limits() {
        let limits = ["MemoryMax=2G".to_string(), "CPUQuota=150%".to_string()];
        let scope = Scope::new(
            "/srv/state/.t8k-engine/work/build-1.csv",
            &limits,
            ScopeManager::User,
            "systemctl",
            Duration::from_secs(5),
        );
        let (program, args) = scope.wrap("go", vec!["build".into(), "./cmd/tractstack-go".into()]);
        assert_eq!(program, "systemd-run");
        let unit = format!("--unit={}", scope.unit());
        assert_eq!(
            args,
            [
                "--user",
                "--scope",
                "--quiet",
                &unit,
                "-p",
                "TimeoutStopSec=5000ms",
                "-p",
                "MemoryMax=2G",
                "-p",
                "CPUQuota=150%",
                "--",
                "go",
                "build",
                "./cmd/tractstack-go"
            ]
        );
        assert!(scope.unit().starts_with("t8k-step-") && scope.unit().ends_with(".scope"));
        assert_eq!(scope.memory_limit(), Some("MemoryMax=2G"));
        let system = Scope::new("x", &[], ScopeManager::System, "systemctl", Duration::ZERO);
        assert_eq!(system.wrap("true", Vec::new()).1[0], "--scope");
        assert_eq!(system.memory_limit(), None);
        assert_ne!(
            system.unit(),
            scope.unit(),
            "every scope has a name of its own"
        );
        let again = Scope::new("x", &[], ScopeManager::System, "systemctl", Duration::ZERO);
        assert_eq!(
            system.unit()[..22],
            again.unit()[..22],
            "one trigger's scopes share a prefix"
        );
        assert_ne!(system.unit(), again.unit());
    }

    #[test]
    fn show_output_is_read_with_its_unknowns() {
        let p = Props::parse("ActiveState=active\nResult=oom-kill\nTasksCurrent=3\n");
        assert_eq!(
            (p.active.as_str(), p.result.as_str(), p.tasks),
            ("active", "oom-kill", Some(3))
        );
        assert_eq!(Props::parse("TasksCurrent=[not set]").tasks, None);
        assert_eq!(
            Props::parse("TasksCurrent=18446744073709551615").tasks,
            None
        );
    }
}
