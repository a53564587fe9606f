//! Owns starting a step's process, through duct: the program found on the step's PATH, its arguments and
//! working directory, an environment built from scratch, stdin from /dev/null, stdout and stderr into
//! pipes the supervisor reads, and (in `before_spawn`) its own process group and its priority.

use std::io::PipeReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::reap::Leader;
use super::{RUN_TAG_VAR, SpawnError, Spec};

/// Variables describing the engine's own service-manager plumbing, which children must not inherit.
const STRIPPED: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// The base environment for children: ours minus service-manager plumbing, plus GIT_TERMINAL_PROMPT=0 and CI=true.
pub fn base_env() -> Vec<(String, String)> {
    // Non-UTF-8 entries are dropped rather than mangled into something the child never had.
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !STRIPPED.contains(&k.as_str()) && k != "GIT_TERMINAL_PROMPT" && k != "CI")
        .collect();
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    env.push(("CI".into(), "true".into()));
    env
}

/// Finds `program` on `path` the way execvp would, so that a miss is reported as NotFound; a name with a
/// `/` is returned as it is.
pub fn resolve(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    if program.is_empty() {
        return None;
    }
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    // Relative entries are skipped: they would resolve against whatever directory the engine happens to be in.
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
}

/// A started step: its leader and the read ends of its stdout and stderr.
pub(super) struct Spawned {
    pub leader: Leader,
    pub stdout: PipeReader,
    pub stderr: PipeReader,
}

/// Starts `spec` in a process group of its own, tagged `RUN_TAG_VAR=tag`.
pub(super) fn spawn(spec: &Spec, tag: &str) -> Result<Spawned, SpawnError> {
    let io_err = |source| SpawnError::Io {
        program: spec.program.clone(),
        source,
    };
    let base = base_env();
    let path_var = spec
        .env
        .iter()
        .rev()
        .chain(base.iter().rev())
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    // A relative path with a slash is taken from the working directory given, not left for exec to
    // resolve against whichever directory the engine runs in.
    let program = match &spec.cwd {
        Some(dir) if spec.program.contains('/') && !spec.program.starts_with('/') => {
            Some(dir.join(&spec.program))
        }
        _ => resolve(&spec.program, path_var.as_deref()),
    }
    .ok_or_else(|| SpawnError::NotFound(spec.program.clone()))?;
    // Checked here because spawn reports a missing cwd as ENOENT, which would read as "command not found".
    if let Some(dir) = &spec.cwd
        && !dir.is_dir()
    {
        let msg = format!("working directory {} does not exist", dir.display());
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            msg,
        )));
    }
    let (stdout, out_w) = std::io::pipe().map_err(io_err)?;
    let (stderr, err_w) = std::io::pipe().map_err(io_err)?;
    // Later entries win: the step's own environment over the base, the run's tag over both.
    let env = base
        .into_iter()
        .chain(spec.env.iter().cloned())
        .chain([(RUN_TAG_VAR.to_string(), tag.to_string())]);
    let mut expression = duct::cmd(program, &spec.args)
        .full_env(env)
        .stdin_null()
        .stdout_file(out_w)
        .stderr_file(err_w)
        .unchecked()
        .before_spawn(before_spawn(spec));
    if let Some(dir) = &spec.cwd {
        expression = expression.dir(dir);
    }
    let started = expression.start();
    // The expression holds the pipes' write ends: they must close here, or the readers never see EOF.
    drop(expression);
    let handle = started.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SpawnError::NotFound(spec.program.clone()),
        _ => io_err(e),
    })?;
    Ok(Spawned {
        leader: Leader::new(handle),
        stdout,
        stderr,
    })
}

/// What duct cannot say itself: argv[0] as written (a shell would pass it so, though we exec the resolved
/// path), a process group of the step's own, and low CPU and I/O priority for builds.
fn before_spawn(
    spec: &Spec,
) -> impl Fn(&mut std::process::Command) -> std::io::Result<()> + Send + Sync + 'static {
    let (argv0, low_priority) = (spec.program.clone(), spec.low_priority);
    move |cmd| {
        cmd.arg0(&argv0).process_group(0);
        if low_priority {
            // SAFETY: the closure runs in the child between fork and exec and only makes two
            // async-signal-safe system calls on itself.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                    // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, 7)); no libc wrapper.
                    libc::syscall(libc::SYS_ioprio_set, 1, 0, (2 << 13) | 7);
                    Ok(())
                });
            }
        }
        Ok(())
    }
}
