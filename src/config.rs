//! Owns the engine's settings: where they come from, their defaults and their validation. It imports nothing
//! from the rest of the crate and acts on nothing: other modules read it (paths are resolved by `layout`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Default TractStack root when neither `--root`, `T8K_ROOT` nor the config file names one.
pub const DEFAULT_ROOT: &str = "/home/t8k";
/// System-wide config file, consulted last.
pub const SYSTEM_CONFIG: &str = "/etc/t8k-engine/config.toml";

/// Every setting of the engine, with defaults for the TractStack layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TractStack root; everything else resolves under it.
    pub root: PathBuf,
    /// Operator scripts that override the built-in ones (default `<root>/scripts`).
    pub scripts_dir: Option<PathBuf>,
    /// The inbox for trigger files (default `<root>/state`).
    pub state_dir: Option<PathBuf>,
    /// Where log lines are appended (default `<root>/log/build.log`).
    pub log_file: Option<PathBuf>,
    /// Port assignments (default `<root>/etc/t8k-ports.conf`).
    pub ports_file: Option<PathBuf>,
    /// Wall-clock limit for one job, in seconds.
    pub job_timeout: u64,
    /// Default limit for one `run()` call when the script gives none, in seconds.
    pub step_timeout: u64,
    /// Seconds between SIGTERM and SIGKILL when a process group is stopped.
    pub kill_grace: u64,
    /// Engine deaths tolerated on one trigger before it is set aside.
    pub max_attempts: u32,
    /// Largest trigger file accepted, in bytes.
    pub max_trigger_bytes: u64,
    /// Run `systemctl` through `sudo -n` (the engine runs as `t8k`, units belong to root).
    pub sudo_systemctl: bool,
    /// The `systemctl` program.
    pub systemctl: String,
    /// The `pm2` program.
    pub pm2: String,
    /// Default deadline of `http_check`, in seconds.
    pub http_timeout: u64,
    /// Seconds a trigger may stay incomplete (open for writing, no final newline) before it is set aside.
    pub stale_after: u64,
    /// How the daemon tells that a producer is still writing: `lease` (an F_SETLEASE probe, falling back
    /// to `settle` where leases are unavailable) or `settle` (unchanged for `settle_ms`).
    pub writer_check: WriterCheck,
    /// The quiet time `settle` waits for, in milliseconds.
    pub settle_ms: u64,
    /// Run identical pending jobs once, for the newest trigger.
    pub coalesce: bool,
    /// Seconds between full scans of the inbox when no event arrives.
    pub rescan_interval: u64,
    /// Releases of each install kept with their records and files for `rollback`, the live one included
    /// (the live and the previous one are kept whatever this says).
    pub keep_releases: usize,
    /// Size cap of the artifact cache (`state/.t8k-engine/artifacts/`), in bytes: least recently used
    /// entries that no release uses are evicted beyond it.
    pub artifact_cache_max_bytes: u64,
    /// `low` (nice 10, lowest best-effort I/O) or `normal`: the priority of build steps by default.
    pub build_priority: BuildPriority,
    /// systemd resource limits for low-priority steps, e.g. `["MemoryMax=2G", "CPUQuota=150%"]`: each such
    /// step runs inside `systemd-run --scope` with them, when systemd is running. Empty: no scope.
    pub build_limits: Vec<String>,
    /// Which low-priority steps run in a transient systemd scope of their own: `limits` (when
    /// `build_limits` is set), `always`, or `off`. A scope also stops, at the step's end, what left the
    /// step's process group and scrubbed its environment, which no other sweep can find.
    pub step_scope: StepScope,
    /// The systemd manager that holds the steps' scopes: `user` (the engine user's own manager: `loginctl
    /// enable-linger t8k`), `system` (needs root or a polkit rule), or `auto` (`system` for root, else `user`).
    pub scope_manager: ScopeManager,
    /// Largest per-job log (`log/jobs/<job-id>.log`) in bytes; the rest is cut.
    pub job_log_max_bytes: u64,
    /// How many per-job logs are kept (the newest).
    pub keep_job_logs: usize,
    /// Per-job logs older than this many days are deleted.
    pub keep_job_log_days: u64,
    /// Prometheus metrics written after every job (default `<root>/log/t8k-engine.prom`); point it into
    /// node_exporter's textfile collector directory.
    pub metrics_file: Option<PathBuf>,
    /// The status document for the CMS and the web page (default `<root>/log/status.json`), rewritten
    /// atomically on every change (see the README's schema).
    pub status_file: Option<PathBuf>,
    /// systemd's unit directory, read (never written) to warn when t8k-concierge.sh's units are still
    /// enabled: `<dir>/*.wants/t8k-build-watcher.path` and the unit files beside them.
    pub systemd_dir: PathBuf,
    /// The environment of every step, notification hook and `check`: a service does not read
    /// `~/.profile`, where TractStack's installer puts the directories of go, node, pnpm and pm2.
    pub env: StepEnv,
    /// The `[fleet]` section: this host's place in a fleet fed through NATS JetStream (read and checked by
    /// `src/fleet/config.rs`). Without it the engine starts no runtime and opens no connection.
    pub fleet: Option<toml::Table>,
    /// The `[web]` section: `t8k-engine serve`'s address, tokens and git webhooks (read and checked by
    /// `src/web/config.rs`).
    pub web: Option<toml::Table>,
}

/// How a producer still writing a trigger is detected (`writer_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriterCheck {
    /// An `F_SETLEASE` probe, falling back to `Settle` where leases are unavailable.
    Lease,
    /// Unchanged for `settle_ms`.
    Settle,
}

/// The default priority of build steps (`build_priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildPriority {
    /// nice 10 and the lowest best-effort I/O level, so that a build does not starve the site beside it.
    Low,
    /// The engine's own priority.
    Normal,
}

/// Which build steps run in a systemd scope of their own (`step_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepScope {
    /// Only when `build_limits` names limits to enforce.
    Limits,
    /// Every low-priority step, limits or not: its leftovers are stopped with the scope.
    Always,
    /// Never.
    Off,
}

impl StepScope {
    /// Whether a build step gets a scope, given whether `build_limits` names any limit.
    pub fn wanted(self, has_limits: bool) -> bool {
        match self {
            StepScope::Limits => has_limits,
            StepScope::Always => true,
            StepScope::Off => false,
        }
    }
}

/// The systemd manager that creates the steps' scopes (`scope_manager`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeManager {
    /// `system` when the engine runs as root, `user` otherwise.
    Auto,
    /// The system manager (`systemd-run --scope`): root, or a polkit rule for `manage-units`.
    System,
    /// The engine user's own manager (`systemd-run --user --scope`): needs lingering for a service user.
    User,
}

/// The `[env]` table: what steps get on top of the engine's own environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepEnv {
    /// Directories put in front of the engine's `PATH`, in this order (absolute paths).
    pub path: Vec<PathBuf>,
    /// Variables set for every step, e.g. `PM2_HOME = "/home/t8k/.pm2"`; a script's own `env` wins.
    pub vars: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            scripts_dir: None,
            state_dir: None,
            log_file: None,
            ports_file: None,
            job_timeout: 3600,
            step_timeout: 1800,
            kill_grace: 5,
            max_attempts: 3,
            max_trigger_bytes: 4096,
            sudo_systemctl: false,
            systemctl: "systemctl".into(),
            pm2: "pm2".into(),
            http_timeout: 30,
            stale_after: 60,
            writer_check: WriterCheck::Lease,
            settle_ms: 250,
            coalesce: true,
            rescan_interval: 30,
            keep_releases: 3,
            artifact_cache_max_bytes: 2 << 30,
            build_priority: BuildPriority::Low,
            build_limits: Vec::new(),
            step_scope: StepScope::Limits,
            scope_manager: ScopeManager::Auto,
            job_log_max_bytes: 4 << 20,
            keep_job_logs: 200,
            keep_job_log_days: 30,
            metrics_file: None,
            status_file: None,
            systemd_dir: PathBuf::from("/etc/systemd/system"),
            env: StepEnv::default(),
            fleet: None,
            web: None,
        }
    }
}

/// Where the effective configuration came from, for `t8k-engine config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings after defaults, file and overrides.
    pub config: Config,
    /// The file read, if any.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Finds and reads the config file (`--config`, `T8K_ENGINE_CONFIG`, the user's config dir,
    /// `/etc/t8k-engine/config.toml`), then applies the root override (`--root` or `T8K_ROOT`).
    pub fn load(explicit: Option<&Path>, root_override: Option<&Path>) -> Result<Loaded> {
        let from_env = std::env::var_os("T8K_ENGINE_CONFIG").map(PathBuf::from);
        let source = match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => Some(path),
            None => default_locations().into_iter().find(|p| p.is_file()),
        };
        let mut config = match &source {
            Some(path) => Self::read(path)?,
            None => Config::default(),
        };
        if let Some(root) = root_override {
            config.root = root.to_path_buf();
        }
        config.validate()?;
        Ok(Loaded { config, source })
    }

    /// Reads one TOML file; unknown keys are errors so that typos do not silently fall back to defaults.
    /// `/dev/null` (and an empty file) means the defaults; a directory, a FIFO or another device is refused
    /// rather than read (a FIFO without a writer would hang the engine).
    pub fn read(path: &Path) -> Result<Config> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let shown = path.display();
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cannot read config file {shown}: check the path given by --config or T8K_ENGINE_CONFIG"
            )
        })?;
        let ft = meta.file_type();
        if ft.is_char_device() && libc::major(meta.rdev()) == 1 && libc::minor(meta.rdev()) == 3 {
            return Ok(Config::default());
        }
        if ft.is_dir() {
            bail!(
                "config file {shown} is a directory: give the file itself (e.g. {}), or /dev/null for the defaults",
                path.join("config.toml").display()
            );
        }
        if !ft.is_file() {
            let kind = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            bail!(
                "config file {shown} is {kind}, not a regular file: give a regular file, or /dev/null for the defaults"
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {}: check the path given by --config or T8K_ENGINE_CONFIG",
                path.display()
            )
        })?;
        toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))
    }

    fn validate(&self) -> Result<()> {
        if !self.root.is_absolute() {
            bail!("root {} must be an absolute path", self.root.display());
        }
        for (name, value) in [
            ("job_timeout", self.job_timeout),
            ("step_timeout", self.step_timeout),
            ("http_timeout", self.http_timeout),
            ("max_trigger_bytes", self.max_trigger_bytes),
            ("stale_after", self.stale_after),
            ("rescan_interval", self.rescan_interval),
        ] {
            if value == 0 {
                bail!("config setting {name} must be greater than 0");
            }
        }
        if let Some(bad) = self.build_limits.iter().find(|p| {
            !p.split_once('=').is_some_and(|(k, v)| {
                !k.is_empty() && !v.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())
            })
        }) {
            bail!(
                "config setting build_limits: `{bad}` is not a systemd property like MemoryMax=2G"
            );
        }
        if self.keep_releases == 0 {
            bail!(
                "config setting keep_releases must be at least 1: a release needs its predecessor to roll back to"
            );
        }
        if self.max_attempts == 0 {
            bail!("config setting max_attempts must be at least 1");
        }
        self.validate_env()
    }

    fn validate_env(&self) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        for dir in &self.env.path {
            let bytes = dir.as_os_str().as_bytes();
            if !dir.is_absolute() || bytes.contains(&b':') || bytes.contains(&0) {
                bail!(
                    "config setting env.path: {:?} must be an absolute directory without `:` (a relative one would be searched from wherever the engine was started)",
                    dir.display().to_string()
                );
            }
        }
        for (name, value) in &self.env.vars {
            let good_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good_name {
                bail!(
                    "config setting env.vars: `{name}` is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
                );
            }
            if name == "PATH" {
                bail!(
                    "config setting env.vars: set PATH through env.path (directories put in front of the engine's PATH), not env.vars"
                );
            }
            if value.contains('\0') {
                bail!("config setting env.vars: the value of {name} contains a NUL byte");
            }
        }
        Ok(())
    }

    /// The `PATH` steps and `check` search: `env.path`, then the engine's own `PATH` (or the exec
    /// default when it has none).
    pub fn step_path(&self) -> String {
        let own = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        self.env
            .path
            .iter()
            .map(|d| d.display().to_string())
            .chain(std::iter::once(own))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// What steps get on top of the engine's environment: `PATH` when `env.path` adds to it, and `env.vars`.
    pub fn step_env(&self) -> Vec<(String, String)> {
        let path = (!self.env.path.is_empty()).then(|| ("PATH".to_string(), self.step_path()));
        path.into_iter()
            .chain(self.env.vars.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    /// The wall-clock limit of one job.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout)
    }

    /// The default limit of one `run()` call.
    pub fn step_timeout(&self) -> Duration {
        Duration::from_secs(self.step_timeout)
    }

    /// The time between SIGTERM and SIGKILL when a process group is stopped.
    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.kill_grace)
    }

    /// The default deadline of `http_check`.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout)
    }

    /// How long a trigger may stay incomplete before it is set aside.
    pub fn stale_after(&self) -> Duration {
        Duration::from_secs(self.stale_after)
    }

    /// The quiet time `settle` waits for.
    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }

    /// The time between full scans of the inbox when no event arrives.
    pub fn rescan_interval(&self) -> Duration {
        Duration::from_secs(self.rescan_interval)
    }

    /// How old a per-job log may grow before it is deleted.
    pub fn keep_job_log_age(&self) -> Duration {
        Duration::from_secs(self.keep_job_log_days.saturating_mul(86_400))
    }
}

fn default_locations() -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(dirs) = directories::ProjectDirs::from("", "", "t8k-engine") {
        places.push(dirs.config_dir().join("config.toml"));
    }
    places.push(PathBuf::from(SYSTEM_CONFIG));
    places
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "root = \"/srv\"\njob_timout = 5\n").unwrap();
        let err = format!("{:#}", Config::read(&path).unwrap_err());
        assert!(err.contains("c.toml"), "{err}");
        assert!(err.contains("job_timout"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid_and_has_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
        let example = Config::read(&path).unwrap();
        example.validate().unwrap();
        assert_eq!(rendered(&example), rendered(&Config::default()));
    }

    #[test]
    fn root_override_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "root = \"/srv/a\"\nkill_grace = 9\n").unwrap();
        let loaded = Config::load(Some(&path), Some(Path::new("/srv/b"))).unwrap();
        assert_eq!(loaded.config.root, PathBuf::from("/srv/b"));
        assert_eq!(loaded.config.kill_grace, 9);
        assert_eq!(loaded.source.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn build_limits_must_be_systemd_properties() {
        let ok = Config {
            build_limits: vec!["MemoryMax=2G".into(), "CPUQuota=150%".into()],
            ..Config::default()
        };
        assert!(ok.validate().is_ok());
        for bad in ["MemoryMax", "=2G", "Memory Max=2G", "MemoryMax="] {
            let cfg = Config {
                build_limits: vec![bad.into()],
                ..Config::default()
            };
            assert!(
                cfg.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("not a systemd property"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_step_environment_is_validated_and_put_in_front() {
        let cfg: Config = toml::from_str(
            "[env]\npath = [\"/opt/go/bin\", \"/opt/node/bin\"]\nvars = { PM2_HOME = \"/home/t8k/.pm2\" }\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let env = cfg.step_env();
        assert!(
            env[0].1.starts_with("/opt/go/bin:/opt/node/bin:"),
            "{env:?}"
        );
        assert_eq!(env[1], ("PM2_HOME".into(), "/home/t8k/.pm2".into()));
        assert!(Config::default().step_env().is_empty());
        for (bad, needle) in [
            ("[env]\npath = [\"go/bin\"]\n", "absolute"),
            ("[env]\nvars = { PATH = \"/x\" }\n", "through env.path"),
            ("[env]\nvars = { \"A-B\" = \"x\" }\n", "not a variable name"),
        ] {
            let cfg: Config = toml::from_str(bad).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        // The table renders after every plain setting, as TOML requires.
        assert!(cfg_renders(&cfg));
    }

    fn cfg_renders(cfg: &Config) -> bool {
        toml::to_string_pretty(cfg).is_ok()
    }

    fn rendered(cfg: &Config) -> String {
        toml::to_string_pretty(cfg).unwrap()
    }

    #[test]
    fn choices_are_checked_when_the_file_is_parsed() {
        let cfg: Config =
            toml::from_str("writer_check = \"settle\"\nbuild_priority = \"normal\"\n").unwrap();
        assert_eq!(
            (cfg.writer_check, cfg.build_priority),
            (WriterCheck::Settle, BuildPriority::Normal)
        );
        for (bad, needle) in [
            (
                "writer_check = \"leases\"\n",
                "unknown variant `leases`, expected `lease` or `settle`",
            ),
            (
                "build_priority = \"high\"\n",
                "unknown variant `high`, expected `low` or `normal`",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, bad).unwrap();
            let err = format!("{:#}", Config::read(&path).unwrap_err());
            assert!(err.contains("c.toml") && err.contains(needle), "{err}");
            assert!(err.contains("line 1"), "the line is named: {err}");
        }
    }

    #[test]
    fn relative_root_and_zero_timeouts_are_errors() {
        let loaded = Config::load(None, Some(Path::new("relative")));
        assert!(format!("{:#}", loaded.unwrap_err()).contains("absolute"));
        let cfg = Config {
            job_timeout: 0,
            ..Config::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("job_timeout")
        );
    }
}
