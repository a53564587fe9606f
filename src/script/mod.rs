//! Owns running Rhai for the engine: one sandboxed engine per job, calling the command function of a type's
//! script, `eval` snippets and `check`; it never touches the state directory or decides a trigger's fate.

pub mod api;
pub mod copies;
mod host;
pub mod job;
pub mod report;
mod run;
mod sandbox;
mod settings;
pub mod sources;

pub use host::{Failure, JobCtx, Memo, StepEvent, StepHook};
pub use job::Job;
pub use report::Rendered;
pub use run::{Compiled, call_hook, check, check_command, eval, run_job, run_rollback};
pub use sandbox::{MAX_SCRIPT_MEMORY, SCRIPT_STACK, new_engine, on_script_thread};
pub use settings::Settings;
pub use sources::Scripts;

/// Why a job's script could not do its work.
#[derive(Debug, Clone)]
pub enum JobError {
    /// The script does not compile (`file:line:col: message`).
    Compile(String),
    /// The script defines no function for the trigger's command.
    NoCommand {
        /// The command asked for.
        command: String,
        /// The script's origin.
        origin: String,
        /// What it does define.
        available: Vec<String>,
    },
    /// The script failed or was stopped while running.
    Runtime(Rendered),
}

impl JobError {
    /// A failure the engine found around the script (a rollback it cannot do), as one message.
    pub fn plain(message: String) -> JobError {
        JobError::Runtime(Rendered {
            headline: message.clone(),
            details: message,
            terminated: false,
            rolled_back: false,
        })
    }

    /// One line for summaries.
    pub fn headline(&self) -> String {
        match self {
            JobError::Compile(msg) => format!("script does not compile: {msg}"),
            JobError::NoCommand {
                command, origin, ..
            } if command == crate::trigger::ROLLBACK => {
                format!(
                    "{origin} defines no `fn rollback(job, release)`, which command=rollback calls; copy it from the built-in script (`t8k-engine scripts diff`, `scripts merge`)"
                )
            }
            JobError::NoCommand {
                command,
                origin,
                available,
            } => format!(
                "{origin} defines no `fn {command}(job)` (commands it defines: {})",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
            JobError::Runtime(r) => r.headline.clone(),
        }
    }

    /// Whether the script rolled the release back before failing (see [`Rendered::rolled_back`]).
    pub fn rolled_back(&self) -> bool {
        matches!(self, JobError::Runtime(r) if r.rolled_back)
    }

    /// The full message with the call chain.
    pub fn details(&self) -> String {
        match self {
            JobError::Runtime(r) => r.details.clone(),
            other => other.headline(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::config::Config;
    use crate::layout::Layout;

    fn settings() -> Settings {
        let config = Config::default();
        Settings::from_config(&config, &Layout::new(&config))
    }

    #[test]
    fn the_api_table_matches_what_is_registered_and_the_readme() {
        let ctx = JobCtx::new(
            settings(),
            crate::cancel::Cancel::new(),
            std::time::Duration::from_secs(1),
            true,
        );
        let engine = new_engine(&Scripts::new(std::path::Path::new("/nonexistent")), &ctx);
        let registered: BTreeSet<String> = engine
            .gen_fn_signatures(false)
            .iter()
            .filter_map(|sig| sig.split('(').next())
            .map(|name| name.trim_start_matches("fn ").to_string())
            .filter(|name| {
                !name.starts_with("get$")
                    && !name.starts_with("set$")
                    && name != "to_string"
                    && name != "to_debug"
            })
            .collect();
        let documented: BTreeSet<String> = api::API.iter().map(|f| f.name.to_string()).collect();
        assert_eq!(
            registered, documented,
            "every host function is documented in api::API, and nothing else"
        );
        let readme = include_str!("../../README.md");
        for f in api::API {
            assert!(
                readme.contains(f.signature),
                "README.md lacks the signature `{}`",
                f.signature
            );
        }
        for (field, _) in job::FIELDS {
            assert!(
                readme.contains(&format!("`job.{field}`")),
                "README.md does not document job.{field}"
            );
        }
    }

    #[test]
    fn every_shipped_script_compiles_and_defines_build() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check(&Scripts::new(dir.path()), &settings()),
            Vec::<String>::new()
        );
    }
}
