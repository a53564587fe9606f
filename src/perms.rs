//! Owns the start-up permission checks of `run` and `watch`: who besides the engine's user can write the
//! inbox, the scripts and the config file; it reports and refuses, and never changes a mode or an owner.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One permission problem found on start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file or directory.
    pub path: PathBuf,
    /// Its permission bits (with the sticky bit).
    pub mode: u32,
    /// What is wrong and why it matters, naming the path and its mode.
    pub problem: String,
    /// The command that fixes it.
    pub fix: String,
    /// The engine refuses to start: every local user could change the code it runs.
    pub fatal: bool,
}

impl Finding {
    /// One line for the log: the problem and the fix.
    pub fn line(&self) -> String {
        format!("{}; fix: {}", self.problem, self.fix)
    }
}

/// The uid of the engine's own user.
fn engine_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// A user's name for messages, or `uid N` when it has none.
pub(crate) fn user_name(uid: u32) -> String {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory that lives until the call returns; getpwuid_r is reentrant.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() {
        // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        if let Ok(name) = name.to_str() {
            return name.to_string();
        }
    }
    format!("uid {uid}")
}

/// Checks the inbox, every directory and `.rhai` file under the scripts directory, and the config file.
/// Paths that do not exist are skipped: no scripts directory means the built-in scripts run.
pub fn check(state: &Path, scripts: &Path, config: Option<&Path>) -> Vec<Finding> {
    let me = engine_uid();
    let mut found = Vec::new();
    if let Ok(meta) = std::fs::metadata(state) {
        found.extend(inbox(state, meta.mode() & 0o7777));
    }
    let mut trusted: Vec<(PathBuf, &str)> = Vec::new();
    if scripts.is_dir() {
        for entry in walkdir::WalkDir::new(scripts)
            .max_depth(8)
            .sort_by_file_name()
            .into_iter()
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                trusted.push((path.to_path_buf(), "scripts directory"));
            } else if path.extension().is_some_and(|e| e == "rhai") {
                trusted.push((path.to_path_buf(), "script"));
            }
        }
    }
    if let Some(config) = config {
        trusted.push((config.to_path_buf(), "config file"));
    }
    for (path, what) in trusted {
        // Symlinks are followed: what matters is who can write what the engine reads. Modes matter for
        // regular files and directories only: a device such as /dev/null is world-writable by design,
        // holds no code, and no advice may ever be to change it.
        if let Ok(meta) = std::fs::metadata(&path)
            && (meta.is_file() || meta.is_dir())
        {
            found.extend(trusted_code(&path, what, &meta, me));
        }
    }
    found
}

/// A world-writable inbox lets every local user start builds; without the sticky bit they can also
/// rename or delete what others (and the engine, in `.t8k-engine/`) keep there. Group-writable is the
/// intended way to let producers drop triggers and is not reported.
fn inbox(path: &Path, mode: u32) -> Option<Finding> {
    if mode & 0o002 == 0 {
        return None;
    }
    let shown = path.display();
    let problem = if mode & 0o1000 == 0 {
        format!(
            "state directory {shown} is world-writable without the sticky bit (mode {mode:04o}): any local user can start builds and rename or delete the engine's own files in it"
        )
    } else {
        format!(
            "state directory {shown} is world-writable (mode {mode:04o}): any local user can start builds by dropping a trigger"
        )
    };
    Some(Finding {
        path: path.to_path_buf(),
        mode,
        problem,
        fix: format!(
            "`chmod o-w {shown}` (let producers write through a group instead: `chgrp GROUP {shown} && chmod g+ws {shown}`)"
        ),
        fatal: false,
    })
}

/// Scripts and the config file decide what the engine runs as its user (and, through sudo, what it
/// restarts): writable by every local user is refused, by a group or owned by another user is reported.
fn trusted_code(path: &Path, what: &str, meta: &std::fs::Metadata, me: u32) -> Vec<Finding> {
    let mode = meta.mode() & 0o7777;
    let shown = path.display();
    let mut found = Vec::new();
    if mode & 0o002 != 0 {
        found.push(Finding {
            path: path.to_path_buf(),
            mode,
            problem: format!(
                "{what} {shown} is writable by every local user (mode {mode:04o}): anyone could change the code the engine runs as {}",
                user_name(me)
            ),
            fix: format!("`chmod o-w {shown}`"),
            fatal: true,
        });
    } else if mode & 0o020 != 0 {
        found.push(Finding {
            path: path.to_path_buf(),
            mode,
            problem: format!(
                "{what} {shown} is writable by its group {} (mode {mode:04o}): every member can change the code the engine runs as {}",
                group_name(meta.gid()),
                user_name(me)
            ),
            fix: format!("`chmod g-w {shown}` unless that group is meant to edit it"),
            fatal: false,
        });
    }
    let owner = meta.uid();
    if owner != me && owner != 0 {
        found.push(Finding {
            path: path.to_path_buf(),
            mode,
            problem: format!(
                "{what} {shown} is owned by {}, not by the engine's user {}: that user can change the code the engine runs",
                user_name(owner),
                user_name(me)
            ),
            fix: format!("`chown {} {shown}`", user_name(me)),
            fatal: false,
        });
    }
    found
}

/// A group's name for messages, or `gid N` when it has none.
fn group_name(gid: u32) -> String {
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_name; getgrgid_r is reentrant.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() {
        // SAFETY: on success gr_name points at a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) };
        if let Ok(name) = name.to_str() {
            return name.to_string();
        }
    }
    format!("gid {gid}")
}

/// Logs every finding once (so that it reaches build.log too) and fails when one is fatal, naming the paths.
pub fn enforce(findings: &[Finding]) -> anyhow::Result<()> {
    for f in findings {
        if f.fatal {
            tracing::error!("{}", f.line());
        } else {
            tracing::warn!("{}", f.line());
        }
    }
    let fatal: Vec<String> = findings
        .iter()
        .filter(|f| f.fatal)
        .map(|f| format!("{} (mode {:04o})", f.path.display(), f.mode))
        .collect();
    if !fatal.is_empty() {
        anyhow::bail!(
            "refusing to start: every local user can write {}, which decide(s) what the engine runs; fix the mode as logged above, then start again (see SECURITY.md, file permissions)",
            fatal.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_world_writable_inboxes_are_reported_and_the_sticky_bit_changes_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        for mode in [0o755, 0o770, 0o2775] {
            chmod(&state, mode);
            assert!(
                check(&state, &dir.path().join("none"), None).is_empty(),
                "{mode:o}"
            );
        }
        chmod(&state, 0o777);
        let f = check(&state, &dir.path().join("none"), None);
        assert_eq!(f.len(), 1);
        assert!(!f[0].fatal);
        assert!(
            f[0].problem.contains("without the sticky bit (mode 0777)"),
            "{}",
            f[0].problem
        );
        assert!(f[0].fix.contains(&format!("chmod o-w {}", state.display())));
        chmod(&state, 0o1777);
        let f = check(&state, &dir.path().join("none"), None);
        assert!(
            f[0].problem.contains("world-writable (mode 1777)"),
            "{}",
            f[0].problem
        );
    }

    #[test]
    fn writable_scripts_and_config_are_found_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(scripts.join("lib")).unwrap();
        chmod(&scripts, 0o755);
        chmod(&scripts.join("lib"), 0o755);
        let main = scripts.join("main.rhai");
        let common = scripts.join("lib/common.rhai");
        let config = dir.path().join("config.toml");
        for p in [&main, &common, &config] {
            std::fs::write(p, "").unwrap();
            chmod(p, 0o644);
        }
        std::fs::write(scripts.join("notes.txt"), "").unwrap();
        chmod(&scripts.join("notes.txt"), 0o666);
        let state = dir.path().join("state");
        assert!(check(&state, &scripts, Some(&config)).is_empty());

        chmod(&common, 0o664);
        chmod(&config, 0o646);
        let f = check(&state, &scripts, Some(&config));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].path.as_path(), f[0].fatal), (common.as_path(), false));
        assert!(
            f[0].problem.contains("writable by its group"),
            "{}",
            f[0].problem
        );
        assert_eq!((f[1].path.as_path(), f[1].fatal), (config.as_path(), true));
        let err = enforce(&f).unwrap_err().to_string();
        assert!(
            err.contains("refusing to start")
                && err.contains(&format!("{} (mode 0646)", config.display())),
            "{err}"
        );
        assert!(
            !err.contains("common.rhai"),
            "warnings are not part of the refusal: {err}"
        );
        assert!(enforce(&f[..1]).is_ok());
    }
}
