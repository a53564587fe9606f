//! Owns what the host functions need from the configuration, gathered once per engine so that the host
//! layer reads no configuration itself, and the one thing they share across an engine's jobs (the memo).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{BuildPriority, Config, ScopeManager, StepScope};
use crate::layout::Layout;

/// Settings the host functions need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default `run()` timeout.
    pub step_timeout: Duration,
    /// SIGTERM-to-SIGKILL delay for process groups.
    pub kill_grace: Duration,
    /// The `systemctl` program.
    pub systemctl: String,
    /// Run `systemctl` through `sudo -n`.
    pub sudo_systemctl: bool,
    /// The `pm2` program.
    pub pm2: String,
    /// Default `http_check` deadline.
    pub http_timeout: Duration,
    /// Run steps at low CPU and I/O priority unless a `run()` asks for `priority: "normal"`.
    pub low_priority: bool,
    /// Where release records live (engine-owned).
    pub releases_dir: PathBuf,
    /// How many previous releases `switch_in` keeps by default.
    pub keep_releases: usize,
    /// The artifact cache (`artifact_fetch`, `artifact_store`).
    pub artifacts: crate::artifacts::Cache,
    /// systemd properties for a `systemd-run --scope` around low-priority steps (empty: none).
    pub build_limits: Vec<String>,
    /// Which low-priority steps run in a scope of their own.
    pub step_scope: StepScope,
    /// The manager that holds the steps' scopes.
    pub scope_manager: ScopeManager,
    /// Set as `T8K_ENGINE_TRIGGER` in every child's environment, so that a restarted engine can find
    /// and stop what a dead one left running for this trigger.
    pub job_tag: Option<String>,
    /// Every step's environment on top of the engine's (`[env]` in the config: `PATH` additions and
    /// variables); a `run()`'s own `env` wins.
    pub env: Vec<(String, String)>,
    /// What scripts remembered (`remember`) for the later jobs of a round; every clone of these settings
    /// shares it, and the engine forgets it when its queue empties.
    pub memo: super::Memo,
}

impl Settings {
    /// The host-function settings of a configuration.
    pub fn from_config(config: &Config, layout: &Layout) -> Settings {
        Settings {
            step_timeout: config.step_timeout(),
            kill_grace: config.kill_grace(),
            systemctl: config.systemctl.clone(),
            sudo_systemctl: config.sudo_systemctl,
            pm2: config.pm2.clone(),
            http_timeout: config.http_timeout(),
            job_tag: None,
            low_priority: config.build_priority == BuildPriority::Low,
            releases_dir: layout.releases_dir.clone(),
            keep_releases: config.keep_releases,
            artifacts: crate::artifacts::Cache::new(
                layout.artifacts_dir.clone(),
                config.artifact_cache_max_bytes,
            ),
            build_limits: config.build_limits.clone(),
            step_scope: config.step_scope,
            scope_manager: config.scope_manager,
            env: config.step_env(),
            memo: super::Memo::new(),
        }
    }
}
