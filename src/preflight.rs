//! Owns the read-only checks of what surrounds the engine: whether the root holds a TractStack layout,
//! which tools the steps' PATH finds, and what is left of t8k-concierge.sh; it reports, and never changes
//! or starts anything.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::layout::Layout;

/// What a TractStack root holds, any one of which says it is one (the installer creates them all).
const LAYOUT_MARKS: [&str; 6] = [
    "state",
    "src/tractstack-go",
    "t8k-go-server",
    "sites",
    "etc/t8k-ports.conf",
    "bin/tractstack-go",
];

/// Why the root cannot be the TractStack root the operator meant, with what to do; `None` when it looks right.
pub fn root_problem(layout: &Layout) -> Option<String> {
    let root = &layout.root;
    let how = "give the right one with --root DIR, T8K_ROOT or `root` in the config file (TractStack's installer uses /home/t8k)";
    match std::fs::metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "the TractStack root {} does not exist; {how}",
            root.display()
        )),
        Err(e) => Some(format!(
            "cannot read the TractStack root {}: {e}; run as the user that owns it (t8k), or {how}",
            root.display()
        )),
        Ok(meta) if !meta.is_dir() => Some(format!(
            "the TractStack root {} is not a directory; {how}",
            root.display()
        )),
        Ok(_) if layout.state.is_dir() || LAYOUT_MARKS.iter().any(|m| root.join(m).exists()) => {
            None
        }
        Ok(_) => Some(format!(
            "{} holds no TractStack layout (none of {}); if it is the wrong directory, {how}; on a new server run TractStack's installer first, or create {} for a root of your own",
            root.display(),
            LAYOUT_MARKS.join(", "),
            layout.state.display()
        )),
    }
}

/// One program the shipped scripts and host functions need.
#[derive(Debug, Clone)]
pub struct Tool {
    /// The name or path the engine runs it by.
    pub program: String,
    /// Where PATH found it, if it did.
    pub found: Option<PathBuf>,
    /// What it is needed for.
    pub needed_for: &'static str,
}

/// Looks up git, go, node, pnpm, pm2 and systemctl (and sudo when `sudo_systemctl`) on `path` as exec would.
pub fn tools(config: &Config, path: &str) -> Vec<Tool> {
    let mut wanted: Vec<(String, &'static str)> = vec![
        ("git".into(), "pulling both repositories"),
        ("go".into(), "building the backend"),
        ("node".into(), "running pnpm, pm2 and the frontend"),
        ("pnpm".into(), "installing and building the frontend"),
        (config.pm2.clone(), "reloading the frontend (pm2)"),
        (config.systemctl.clone(), "restarting the backend unit"),
    ];
    if config.sudo_systemctl {
        wanted.push(("sudo".into(), "systemctl through sudo (sudo_systemctl)"));
    }
    wanted
        .into_iter()
        .map(|(program, needed_for)| Tool {
            found: find(&program, path),
            program,
            needed_for,
        })
        .collect()
}

/// Where a step's `program` would be run from: the supervisor's own lookup, and for a path, only when it
/// is an executable file.
fn find(program: &str, path: &str) -> Option<PathBuf> {
    let found = crate::supervise::resolve(program, Some(path))?;
    let executable = found
        .metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    executable.then_some(found)
}

/// One line per missing tool, naming the PATH searched and where to add a directory.
pub fn missing_tools(config: &Config) -> Vec<String> {
    let path = config.step_path();
    tools(config, &path)
        .into_iter()
        .filter(|t| t.found.is_none())
        .map(|t| {
            format!(
                "missing tool: `{}` (needed for {}) is not in the steps' PATH={path}; add its directory to `path` under [env] in the config file, or to PATH in the service's EnvironmentFile (README: Replacing t8k-concierge.sh)",
                t.program, t.needed_for
            )
        })
        .collect()
}

/// What `run` and `watch` log when they start: leftovers of the concierge, tools the steps' PATH lacks (the
/// service's own environment, which is what matters) and script copies the built-in ones moved past.
pub fn startup_warnings(config: &Config, layout: &Layout) -> Vec<String> {
    let scripts = crate::script::Scripts::new(&layout.scripts_dir);
    concierge_leftovers(config, layout)
        .into_iter()
        .chain(missing_tools(config))
        .chain(crate::script::copies::warnings(&scripts))
        .chain(scope_warning(config))
        .collect()
}

/// What needs the operator although nothing failed, as `status` and the status document list it: `*.csv`
/// files no engine runs, leftovers of t8k-concierge.sh, script copies the built-in ones moved past.
pub fn standing_warnings(config: &Config, layout: &Layout) -> Vec<String> {
    crate::queue::strays(&layout.state)
        .unwrap_or_default()
        .into_iter()
        .map(|stray| stray.warning)
        .chain(concierge_leftovers(config, layout))
        .chain(crate::script::copies::warnings(
            &crate::script::Scripts::new(&layout.scripts_dir),
        ))
        .chain(crate::usage::cache_warnings(config))
        .collect()
}

/// A scope asked for (`step_scope`) that no manager here can hold: the steps then run without one.
fn scope_warning(config: &Config) -> Option<String> {
    let wanted = config.step_scope.wanted(!config.build_limits.is_empty());
    if !wanted || crate::scope::available(config.scope_manager) {
        return None;
    }
    let (manager, fix) = match crate::scope::is_user(config.scope_manager) {
        false => (
            "system",
            "run the engine as root, or use scope_manager = \"user\"",
        ),
        true => (
            "user",
            "keep the engine user's manager running with `loginctl enable-linger USER` (and set XDG_RUNTIME_DIR if it is not /run/user/UID)",
        ),
    };
    Some(format!(
        "step_scope/build_limits ask for a systemd scope per build step, but no {manager} systemd manager is reachable here, so build steps run without a scope or limits: {fix}"
    ))
}

/// The concierge's units, as TractStack's installer names them.
const CONCIERGE_UNITS: [&str; 2] = ["t8k-build-watcher.path", "t8k-build-watcher.service"];

/// Warnings about t8k-concierge.sh still able to run beside the engine: its units enabled (a symlink in
/// `<systemd_dir>/*.wants/` or `*.requires/`, readable without root or a running systemd) while their
/// service runs the concierge rather than t8k-engine, or the script still installed.
pub fn concierge_leftovers(config: &Config, layout: &Layout) -> Vec<String> {
    let dir = &config.systemd_dir;
    let mut warnings = Vec::new();
    let enabled: Vec<PathBuf> = CONCIERGE_UNITS
        .iter()
        .filter_map(|unit| enabled_link(dir, unit))
        .collect();
    if !enabled.is_empty() {
        // Our own path-unit model (examples/systemd) uses the same names with `t8k-engine run`.
        let exec = exec_start(dir, "t8k-build-watcher.service");
        let ours = exec.as_deref().is_some_and(|e| e.contains("t8k-engine"));
        if !ours {
            let runs = exec.map_or_else(
                || "its service file was not found there".to_string(),
                |e| format!("ExecStart={e}"),
            );
            warnings.push(format!(
                "t8k-concierge.sh's units are still enabled ({}; {runs}): its recursive `find` would run triggers out of state/failed/ and state/.t8k-engine/work/ beside this engine; disable them first: `sudo systemctl disable --now t8k-build-watcher.path && sudo systemctl disable t8k-build-watcher.service` (a build it is running finishes)",
                enabled
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let mut places = vec![layout.root.join("scripts"), layout.scripts_dir.clone()];
    places.dedup();
    for script in places.iter().map(|d| d.join("t8k-concierge.sh")) {
        if script.is_file() {
            warnings.push(format!(
                "t8k-concierge.sh is still installed at {}: once its units are disabled and t8k-engine has run a build, remove it (`rm {}`) so that nothing starts it again",
                script.display(),
                script.display()
            ));
        }
    }
    warnings
}

/// The `*.wants/UNIT` or `*.requires/UNIT` entry that enables `unit`, if any.
fn enabled_link(dir: &Path, unit: &str) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".wants") || name.ends_with(".requires")
        })
        .map(|e| e.path().join(unit))
        .filter(|link| std::fs::symlink_metadata(link).is_ok())
        .collect();
    entries.sort();
    entries.into_iter().next()
}

/// The effective `ExecStart=` of a unit in `dir`: the unit file, then its drop-ins in name order; an empty
/// assignment resets the list, as systemd reads it.
fn exec_start(dir: &Path, unit: &str) -> Option<String> {
    let main = std::fs::read_to_string(dir.join(unit)).ok()?;
    let mut dropins: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("{unit}.d")))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect()
        })
        .unwrap_or_default();
    dropins.sort();
    let mut exec = None;
    let texts = std::iter::once(main).chain(
        dropins
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok()),
    );
    for text in texts {
        for line in text.lines() {
            if let Some(value) = line.trim().strip_prefix("ExecStart=") {
                exec = (!value.trim().is_empty()).then(|| value.trim().to_string());
            }
        }
    }
    exec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &Path) -> Layout {
        crate::layout::of_root(root)
    }

    #[test]
    fn a_root_must_exist_and_hold_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(
            root_problem(&layout(&missing))
                .unwrap()
                .contains("does not exist")
        );
        assert!(
            root_problem(&layout(dir.path()))
                .unwrap()
                .contains("holds no TractStack layout")
        );
        std::fs::create_dir(dir.path().join("state")).unwrap();
        assert_eq!(root_problem(&layout(dir.path())), None);
    }

    #[test]
    fn exec_start_follows_dropins() {
        let dir = tempfile::tempdir().unwrap();
        let unit = "t8k-build-watcher.service";
        std::fs::write(
            dir.path().join(unit),
            "[Service]\nExecStart=/home/t8k/scripts/t8k-concierge.sh\n",
        )
        .unwrap();
        assert_eq!(
            exec_start(dir.path(), unit).as_deref(),
            Some("/home/t8k/scripts/t8k-concierge.sh")
        );
        std::fs::create_dir(dir.path().join(format!("{unit}.d"))).unwrap();
        std::fs::write(
            dir.path().join(format!("{unit}.d/10-engine.conf")),
            "[Service]\nExecStart=\nExecStart=/usr/local/bin/t8k-engine run\n",
        )
        .unwrap();
        assert_eq!(
            exec_start(dir.path(), unit).as_deref(),
            Some("/usr/local/bin/t8k-engine run")
        );
    }

    #[test]
    fn a_scope_no_manager_can_hold_is_warned_about_and_only_then() {
        use crate::config::{ScopeManager, StepScope};
        let config = |step_scope, limits: &[&str]| Config {
            step_scope,
            scope_manager: ScopeManager::System,
            build_limits: limits.iter().map(|l| l.to_string()).collect(),
            ..Config::default()
        };
        assert_eq!(
            scope_warning(&config(StepScope::Off, &["MemoryMax=1G"])),
            None
        );
        assert_eq!(scope_warning(&config(StepScope::Limits, &[])), None);
        let warned = scope_warning(&config(StepScope::Always, &[]));
        if crate::scope::available(ScopeManager::System) {
            assert_eq!(warned, None);
        } else {
            let w = warned.expect("a warning when no system manager runs");
            assert!(
                w.contains("no system systemd manager") && w.contains("scope_manager = \"user\""),
                "{w}"
            );
        }
    }
}
