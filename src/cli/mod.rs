//! Owns the command line: the clap definition of every subcommand and option, and what each one needs
//! before it runs (the configuration, a root that looks like TractStack's, log files, the start-up
//! permission checks). The commands are in `commands`, one file each; exit codes and the rendering of
//! errors are `crate::error`'s.

pub mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{Config, Loaded};
use crate::error::{self, Exit, usage};
use crate::layout::Layout;
use commands::Ctx;

#[derive(Parser, Debug)]
#[command(
    name = "t8k-engine",
    version,
    about = "Build-and-deploy engine for TractStack servers: trigger files in, Rhai-scripted releases out"
)]
pub struct Cli {
    /// TractStack root (default /home/t8k)
    #[arg(long, global = true, env = "T8K_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Configuration file (default: T8K_ENGINE_CONFIG, the user's config dir, /etc/t8k-engine/config.toml)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output (repeat for less)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Drain the inbox once and exit (the replacement for t8k-concierge.sh)
    Run {
        /// Exit with code 75 instead of waiting when another engine holds the lock
        #[arg(long)]
        no_wait: bool,
    },
    /// Run as a daemon: process triggers as they arrive (systemd Type=notify)
    Watch,
    /// Run a Rhai snippet exactly as a job would
    Eval {
        /// The snippet (or use -f)
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        snippet: Option<String>,
        /// Read the snippet from a file
        #[arg(short, long, value_name = "FILE.rhai")]
        file: Option<PathBuf>,
        /// Bind `job` from a trigger line (e.g. 'type=dedicated,site=x') and load that type's script
        #[arg(long, value_name = "LINE")]
        job: Option<String>,
    },
    /// Compile every script (with imports), confirm each type defines build, find the tools the steps need
    Check,
    /// Drop a trigger file into the inbox atomically and print its path
    Trigger {
        /// main, prod, multi or dedicated
        r#type: String,
        /// Tenant
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Site (dedicated only)
        #[arg(long)]
        site: Option<String>,
        /// Dedicated only: one trigger for every site under <root>/sites, in name order
        #[arg(long, conflicts_with = "site")]
        all_sites: bool,
        /// Multi only: one trigger for every tenant the main backend reads (its data directory's
        /// config/), in name order; the first builds, the others find nothing changed and check their tenant
        #[arg(long, conflicts_with = "tenant")]
        all_tenants: bool,
        /// Command: a function of the type's script
        #[arg(long, default_value = "build")]
        command: String,
        /// Build everything even if nothing changed
        #[arg(long)]
        force: bool,
        /// Follow the trigger to its end and exit with its result (0 succeeded, 1 failed); with --fleet,
        /// on its host's records in the events stream (the user needs the viewer role too)
        #[arg(long)]
        wait: bool,
        /// With --wait: stop following after DURATION (e.g. 90s, 10m, 1h) and exit 124; the job goes on
        #[arg(long, requires = "wait", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Option<std::time::Duration>,
        /// Publish the job to the fleet instead: to the host the site map gives (see `fleet sites`)
        #[cfg(feature = "fleet")]
        #[arg(long, conflicts_with_all = ["all_sites", "all_tenants"])]
        fleet: bool,
        /// With --fleet: the host for a main or multi job (dedicated sites go where the site map says)
        #[cfg(feature = "fleet")]
        #[arg(long, requires = "fleet", value_name = "HOST")]
        host: Option<String>,
        /// With --fleet: the job id (a ULID), to publish a job again after an unconfirmed attempt; the
        /// fleet runs one job per id
        #[cfg(feature = "fleet")]
        #[arg(long, requires = "fleet", value_name = "ULID")]
        id: Option<String>,
    },
    /// Kept releases of each install (or TARGET's), newest first, the live one marked
    Releases {
        /// main, multi/TENANT (main's install) or dedicated/SITE
        target: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Put a kept release back (default: the previous one) through the queue, with the same switch,
    /// restart and health checks as a build; follows it and exits with its result
    Rollback {
        /// main, multi/TENANT (main's install) or dedicated/SITE
        target: String,
        /// The release to put back (a number from `releases`); default: the previous one
        #[arg(long, value_name = "RELEASE")]
        to: Option<String>,
        /// Drop the trigger and exit without following it
        #[arg(long)]
        no_wait: bool,
        /// Stop following after DURATION (e.g. 90s, 10m) and exit 124; the rollback goes on
        #[arg(long, conflicts_with = "no_wait", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Option<std::time::Duration>,
    },
    /// Put a set-aside trigger (state/failed/NAME, or the trigger of a job id) back into the inbox
    Retry {
        /// Name of the set-aside file, or a job id from `history`
        name: String,
    },
    /// List the functions scripts can call
    Api,
    /// Manage the operator's script copies
    Scripts {
        #[command(subcommand)]
        action: ScriptsAction,
    },
    /// Print the effective configuration
    Config,
    /// One screen: the engine, the running job and step, the queue, set-aside triggers, live releases
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Past jobs, newest first, with their steps' times, CPU and memory
    History {
        /// How many jobs
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Only jobs of this target (main, multi/TENANT, dedicated/SITE)
        #[arg(long)]
        target: Option<String>,
        /// Only jobs that did not succeed
        #[arg(long)]
        failed: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Stop the running job: its processes are killed and its trigger is set aside as cancelled
    Cancel,
    /// Print a job's output with its steps; --follow tails a running job
    Logs {
        /// A job id from `history` or `status`
        job_id: String,
        /// Keep printing while the job runs
        #[arg(short, long)]
        follow: bool,
    },
    /// Serve the status page, the JSON API, live events and git webhooks; never holds the lock or builds
    #[cfg(feature = "web")]
    Serve {
        /// Address to listen on (default: `listen` of [web], else 127.0.0.1:8787)
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff)
    Man,
    /// Run this host's fleet bridge (NATS JetStream jobs in, journal events and status out), or manage the fleet
    #[cfg(feature = "fleet")]
    Fleet(crate::fleet::cli::FleetArgs),
    /// Extract the Tailwind classes a built site uses into a safelist file
    Whitelist {
        /// The frontend's build output (dist/)
        dist: PathBuf,
        /// The safelist to write ({"safelist": [...]}, written atomically)
        out: PathBuf,
        /// Also scan this source directory (e.g. the backend's Go templates); repeatable
        #[arg(long, value_name = "DIR")]
        extra: Vec<PathBuf>,
        /// Print the figures as JSON
        #[arg(long)]
        stats: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScriptsAction {
    /// Write the built-in scripts into the scripts directory for editing (recording which built-in each came from)
    Init {
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
    /// Show your changes to each copy and the built-in's changes since it was made, and the merge proposal
    Diff {
        /// Scripts to compare, e.g. main.rhai lib/common.rhai (default: all shipped ones)
        names: Vec<String>,
    },
    /// Merge the built-in's changes into your copies (the old copy is kept as NAME.old; conflicts go to NAME.merged)
    Merge {
        /// Scripts to merge (default: all shipped ones)
        names: Vec<String>,
        /// Record the built-in as the base of copies you brought up to date by hand
        #[arg(long)]
        resolved: bool,
    },
}

/// What a command needs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Needs {
    /// The configuration and the layout (every command but the three that work on any directory).
    config: bool,
    /// A root that holds a TractStack layout: a wrong one must not look idle.
    root: bool,
    /// Log lines appended to the build log and the job's log.
    log_files: bool,
    /// Live progress on a terminal instead of log lines.
    interactive: bool,
    /// The permission checks and warnings of an engine that claims triggers.
    startup_checks: bool,
}

impl Command {
    fn needs(&self) -> Needs {
        let all = Needs {
            config: true,
            root: true,
            log_files: false,
            interactive: false,
            startup_checks: false,
        };
        match self {
            Command::Completions { .. } | Command::Man | Command::Whitelist { .. } => Needs {
                config: false,
                root: false,
                ..all
            },
            Command::Run { .. } => Needs {
                log_files: true,
                interactive: true,
                startup_checks: true,
                ..all
            },
            Command::Watch => Needs {
                log_files: true,
                startup_checks: true,
                ..all
            },
            Command::Eval { job, .. } => Needs {
                root: job.is_some(),
                log_files: true,
                interactive: true,
                ..all
            },
            // Fleet commands that only talk to NATS: an operator's or producer's machine has no root.
            #[cfg(feature = "fleet")]
            Command::Trigger { fleet: true, .. } => Needs { root: false, ..all },
            #[cfg(feature = "fleet")]
            Command::Fleet(args) if args.action.is_some() => Needs { root: false, ..all },
            // The bridge itself (`fleet` alone) writes the inbox.
            #[cfg(feature = "fleet")]
            Command::Fleet(_) => all,
            Command::Retry { .. } | Command::Trigger { .. } | Command::Rollback { .. } => Needs {
                log_files: true,
                ..all
            },
            Command::Config | Command::Api => Needs { root: false, ..all },
            Command::Check
            | Command::Scripts { .. }
            | Command::Status { .. }
            | Command::Releases { .. }
            | Command::History { .. }
            | Command::Cancel
            | Command::Logs { .. } => all,
            #[cfg(feature = "web")]
            Command::Serve { .. } => all,
        }
    }
}

impl Command {
    /// Whether the command only reads and prints: it may end at once when its reader goes away.
    fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Api
                | Command::Config
                | Command::Status { .. }
                | Command::History { .. }
                | Command::Logs { .. }
                | Command::Completions { .. }
                | Command::Man
        )
    }
}

/// Parses the command line and runs it; the one exit path of `t8k-engine`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.only_prints() {
        // `t8k-engine history | head` ends quietly, as any Unix filter does, instead of panicking on the
        // closed pipe. Only for commands that change nothing: an engine must never die of a reader gone.
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let exit = run(cli).unwrap_or_else(|e| {
        eprintln!("{}", error::render(&e));
        error::exit_of(&e)
    });
    exit.into()
}

fn run(cli: Cli) -> Result<Exit> {
    let verbosity = cli.verbose as i8 - cli.quiet as i8;
    let needs = cli.command.needs();
    if !needs.config {
        crate::logging::init(verbosity, None, false);
        return commands::without_config(cli.command);
    }
    let loaded = Config::load(cli.config.as_deref(), cli.root.as_deref())
        .map_err(|e| usage(format!("{e:#}")))?;
    #[cfg(feature = "fleet")]
    if let Some(table) = &loaded.config.fleet {
        // Checked at load as the rest of the configuration is, by the module that owns the section.
        crate::fleet::config::FleetConfig::from_table(table)
            .map_err(|e| usage(format!("{e:#}")))?;
    }
    #[cfg(feature = "web")]
    if let Some(table) = &loaded.config.web {
        crate::web::config::WebConfig::from_table(table).map_err(|e| usage(format!("{e:#}")))?;
    }
    let layout = Layout::new(&loaded.config);
    if needs.root
        && let Some(problem) = crate::preflight::root_problem(&layout)
    {
        return Err(usage(problem));
    }
    prepare(&loaded, &layout, needs, verbosity)?;
    let ctx = Ctx {
        config: &loaded.config,
        source: loaded.source.as_deref(),
        layout: &layout,
    };
    commands::dispatch(cli.command, &ctx)
}

/// Logging, and for an engine that claims triggers the permission checks (see SECURITY.md) and the
/// warnings about what surrounds it, once per start, before any trigger is claimed.
fn prepare(loaded: &Loaded, layout: &Layout, needs: Needs, verbosity: i8) -> Result<()> {
    let config = &loaded.config;
    let files = crate::logging::Files {
        log_file: &layout.log_file,
        jobs_dir: &layout.jobs_dir,
        job_log_max_bytes: config.job_log_max_bytes,
    };
    crate::logging::init(
        verbosity,
        needs.log_files.then_some(files),
        needs.interactive,
    );
    if needs.startup_checks {
        let findings =
            crate::perms::check(&layout.state, &layout.scripts_dir, loaded.source.as_deref());
        crate::perms::enforce(&findings).map_err(|e| usage(format!("{e:#}")))?;
        for warning in crate::preflight::startup_warnings(config, layout) {
            tracing::warn!("{warning}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(args: &[&str]) -> Needs {
        let mut all = vec!["t8k-engine"];
        all.extend(args);
        Cli::try_parse_from(all).unwrap().command.needs()
    }

    #[test]
    fn each_command_gets_what_it_needs_and_no_more() {
        let run = needs(&["run"]);
        assert!(run.root && run.log_files && run.interactive && run.startup_checks);
        let watch = needs(&["watch"]);
        assert!(watch.startup_checks && watch.log_files && !watch.interactive);
        assert!(!needs(&["eval", "1"]).root, "a job-less eval reads no root");
        assert!(needs(&["eval", "--job", "type=main", "1"]).root);
        for read_only in [
            &["status"][..],
            &["history"],
            &["logs", "X"],
            &["check"],
            &["cancel"],
            &["releases"],
        ] {
            let n = needs(read_only);
            assert!(n.root && !n.log_files && !n.startup_checks, "{read_only:?}");
        }
        for anywhere in [
            &["man"][..],
            &["completions", "bash"],
            &["whitelist", "a", "b"],
        ] {
            assert!(!needs(anywhere).config, "{anywhere:?}");
        }
        assert!(!needs(&["config"]).root && !needs(&["api"]).root);
        assert!(needs(&["trigger", "main"]).log_files && needs(&["retry", "x"]).log_files);
        assert!(
            needs(&["rollback", "main"]).log_files && !needs(&["rollback", "main"]).startup_checks
        );
        let releases = needs(&["releases", "--json"]);
        assert!(releases.root && !releases.log_files);
    }
}

/// A `--timeout`: a number of seconds or a duration with units (`90s`, `10m`, `1h30m`), more than zero.
fn parse_timeout(text: &str) -> std::result::Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: give seconds (90) or a number with a unit (90s, 10m, 1h30m)"
        )
    };
    let d = match text.trim().parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => {
            let d: jiff::SignedDuration = text.trim().parse().map_err(|_| bad())?;
            std::time::Duration::try_from(d).map_err(|_| bad())?
        }
    };
    if d.is_zero() {
        return Err(format!("`{text}`: the timeout must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod timeout_tests {
    use super::parse_timeout;
    use std::time::Duration;

    #[test]
    fn timeouts_read_seconds_and_units_and_refuse_the_rest() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "soon", "-5s", "0", "0s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
