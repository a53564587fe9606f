//! Owns the command line: parses arguments with clap, loads the configuration and dispatches to the
//! library; it maps outcomes to exit codes and keeps no logic of its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, Loaded};
use crate::drain::{Drainer, settings};
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::queue::{self, Queue};
use crate::script::{self, Job, JobCtx, Scripts};
use crate::supervise::Cancel;
use crate::trigger;

/// Exit code: every job succeeded, or nothing to do.
pub const EXIT_OK: u8 = 0;
/// Exit code: a job failed or a trigger was set aside.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `--no-wait` found another engine holding the lock (EX_TEMPFAIL).
pub const EXIT_LOCKED: u8 = 75;

#[derive(Parser, Debug)]
#[command(
    name = "t8k-engine",
    version,
    about = "Build-and-deploy engine for TractStack servers: trigger files in, Rhai-scripted releases out"
)]
struct Cli {
    /// TractStack root (default /home/t8k)
    #[arg(long, global = true, env = "T8K_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// Configuration file (default: T8K_ENGINE_CONFIG, the user's config dir, /etc/t8k-engine/config.toml)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less output (repeat for less)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
        /// Command: a function of the type's script
        #[arg(long, default_value = "build")]
        command: String,
        /// Build everything even if nothing changed
        #[arg(long)]
        force: bool,
        /// Follow the trigger to its end and exit with its result (0 succeeded, 1 failed)
        #[arg(long)]
        wait: bool,
        /// Publish the job to the fleet instead: to the host the site map gives (see `fleet sites`)
        #[cfg(feature = "fleet")]
        #[arg(long, conflicts_with = "wait")]
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
enum ScriptsAction {
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

/// An error that maps to the usage/configuration exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Parses the command line, runs it and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = cli.verbose as i8 - cli.quiet as i8;
    match dispatch(cli, verbosity) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = if e.is::<UsageError>() || crate::owndir::is_refused(&e) {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn load(cli: &Cli) -> Result<(Loaded, Layout)> {
    let loaded = Config::load(cli.config.as_deref(), cli.root.as_deref())
        .map_err(|e| usage(format!("{e:#}")))?;
    let layout = Layout::new(&loaded.config);
    Ok((loaded, layout))
}

fn dispatch(cli: Cli, verbosity: i8) -> Result<u8> {
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "t8k-engine",
                &mut std::io::stdout(),
            );
            return Ok(EXIT_OK);
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    // Works on any directory, so it needs no configuration.
    if let Command::Whitelist {
        dist,
        out,
        extra,
        stats,
    } = &cli.command
    {
        crate::logging::init(verbosity, None, 0, false);
        let s = crate::whitelist::extract_to_file(dist, out, extra)?;
        if *stats {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            let what = if s.written { "wrote" } else { "unchanged" };
            println!(
                "{what} {}: {} classes from {} files in {} ms",
                out.display(),
                s.classes,
                s.files,
                s.elapsed_ms
            );
        }
        return Ok(EXIT_OK);
    }
    let (loaded, layout) = load(&cli)?;
    let config = &loaded.config;
    // Everything but `config`, `api` and a job-less `eval` reads the root: a wrong one must not look idle.
    let reads_root = !matches!(
        cli.command,
        Command::Config | Command::Api | Command::Eval { job: None, .. }
    ) && !fleet_only(&cli.command);
    if reads_root && let Some(problem) = crate::preflight::root_problem(&layout) {
        return Err(usage(problem));
    }
    let logs_to_file = matches!(
        cli.command,
        Command::Run { .. }
            | Command::Watch
            | Command::Eval { .. }
            | Command::Retry { .. }
            | Command::Trigger { .. }
    ) && !fleet_only(&cli.command);
    let interactive = matches!(cli.command, Command::Run { .. } | Command::Eval { .. });
    crate::logging::init(
        verbosity,
        logs_to_file.then_some(layout.log_file.as_path()),
        config.job_log_max_bytes,
        interactive,
    );
    if matches!(cli.command, Command::Run { .. } | Command::Watch) {
        // Once per start, before any trigger is claimed: see SECURITY.md (file permissions).
        let findings =
            crate::perms::check(&layout.state, &layout.scripts_dir, loaded.source.as_deref());
        crate::perms::enforce(&findings).map_err(|e| usage(format!("{e:#}")))?;
        for warning in crate::preflight::startup_warnings(config, &layout) {
            tracing::warn!("{warning}");
        }
    }
    match cli.command {
        Command::Run { no_wait } => run(config, &layout, no_wait),
        Command::Watch => crate::daemon::watch(config, &layout),
        Command::Eval { snippet, file, job } => eval(config, &layout, snippet, file, job),
        Command::Check => check(config, &layout),
        #[cfg(feature = "fleet")]
        Command::Fleet(args) => crate::fleet::cli::run(args, config, &layout),
        #[cfg(feature = "fleet")]
        Command::Trigger {
            r#type,
            tenant,
            site,
            command,
            force,
            fleet: true,
            host,
            id,
            ..
        } => {
            let spec = trigger_spec(&r#type, &tenant, site.as_deref(), &command, force)?;
            crate::fleet::cli::trigger(
                config,
                &spec,
                host.as_deref(),
                id.as_deref(),
                std::time::Duration::from_secs(30),
            )
        }
        Command::Trigger {
            r#type,
            tenant,
            site,
            command,
            force,
            wait,
            ..
        } => {
            let path = drop_trigger(
                config,
                &layout,
                &r#type,
                &tenant,
                site.as_deref(),
                &command,
                force,
            )?;
            println!("{}", path.display());
            if wait {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                return follow(config, &layout, name);
            }
            Ok(EXIT_OK)
        }
        Command::Cancel => cancel(config, &layout),
        #[cfg(feature = "web")]
        Command::Serve { listen } => crate::web::serve(config, &layout, listen.as_deref()),
        Command::Logs { job_id, follow } => logs(&layout, &job_id, follow),
        Command::Retry { name } => {
            let queue = Queue::open(&layout, config.max_trigger_bytes)?;
            let name = set_aside_name(&layout, &name);
            let path = queue.retry(&name).map_err(|e| usage(format!("{e:#}")))?;
            tracing::info!("retry: {name} is back in the inbox as {}", path.display());
            println!("{}", path.display());
            Ok(EXIT_OK)
        }
        Command::Api => {
            print!("{}", script::api::render());
            Ok(EXIT_OK)
        }
        Command::Scripts {
            action: ScriptsAction::Init { force },
        } => {
            for (path, written) in Scripts::new(&layout.scripts_dir).write_defaults(force)? {
                if written {
                    println!("wrote {}", path.display());
                } else {
                    println!("kept {} (it exists; --force overwrites it)", path.display());
                }
            }
            Ok(EXIT_OK)
        }
        Command::Scripts {
            action: ScriptsAction::Diff { names },
        } => {
            let scripts = Scripts::new(&layout.scripts_dir);
            print!(
                "{}",
                script::copies::diff(&scripts, &names).map_err(|e| usage(format!("{e:#}")))?
            );
            Ok(EXIT_OK)
        }
        Command::Scripts {
            action: ScriptsAction::Merge { names, resolved },
        } => merge_scripts(config, &layout, &names, resolved),
        Command::Whitelist { .. } | Command::Completions { .. } | Command::Man => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::History {
            limit,
            target,
            failed,
            json,
        } => history(&layout, limit, target.as_deref(), failed, json),
        Command::Status { json } => {
            let status = crate::status::collect(config, &layout)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::status::render(&status));
            }
            Ok(EXIT_OK)
        }
        Command::Config => {
            match &loaded.source {
                Some(path) if path == Path::new("/dev/null") => {
                    println!("# from /dev/null: built-in defaults")
                }
                Some(path) => println!("# from {}", path.display()),
                None => println!("# no config file found: built-in defaults"),
            }
            print!("{}", config.to_toml());
            Ok(EXIT_OK)
        }
    }
}

/// `check`: compiles every script, finds the tools the steps need on their PATH (problems: exit 1), and
/// warns about copies the built-in scripts moved past and leftovers of the concierge.
fn check(config: &Config, layout: &Layout) -> Result<u8> {
    let scripts = Scripts::new(&layout.scripts_dir);
    let mut problems = script::check(&scripts, &settings(config));
    problems.extend(crate::preflight::missing_tools(config));
    for p in &problems {
        println!("{p}");
    }
    let warnings: Vec<String> = crate::preflight::concierge_leftovers(config, layout)
        .into_iter()
        .chain(script::copies::warnings(&scripts))
        .collect();
    // Warnings go to stderr: stdout holds the problems, one per line, for tools to read.
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if problems.is_empty() {
        println!(
            "ok: every script compiles and main, multi and dedicated define build ({}); the steps' PATH has {}",
            layout.scripts_dir.display(),
            crate::preflight::tools(config, &config.step_path())
                .iter()
                .map(|t| t.program.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "{} problem(s); fix them before the next trigger runs",
            problems.len()
        );
        Ok(EXIT_FAILED)
    }
}

/// `scripts merge`: reports each copy's outcome; exit 1 when a copy still needs the operator.
fn merge_scripts(config: &Config, layout: &Layout, names: &[String], resolved: bool) -> Result<u8> {
    use script::copies::Merged;
    let scripts = Scripts::new(&layout.scripts_dir);
    let done =
        script::copies::merge(&scripts, names, resolved).map_err(|e| usage(format!("{e:#}")))?;
    let mut code = EXIT_OK;
    for d in &done {
        match d {
            Merged::UpToDate(name) => println!("{name}: up to date"),
            Merged::Recorded(name) => {
                println!("{name}: recorded this binary's built-in as its base")
            }
            Merged::Written { path, old } => println!(
                "{}: merged your changes with the built-in's; the previous copy is {}",
                path.display(),
                old.display()
            ),
            Merged::Conflicts {
                path,
                proposal,
                count,
            } => {
                code = EXIT_FAILED;
                println!(
                    "{}: {count} conflict(s), left unchanged; resolve the <<<<<<< … >>>>>>> blocks in {}, move it over {}, then `t8k-engine scripts merge --resolved {}`",
                    path.display(),
                    proposal.display(),
                    path.display(),
                    path.strip_prefix(&layout.scripts_dir)
                        .unwrap_or(path)
                        .display()
                );
            }
            Merged::NoBase(name) => {
                code = EXIT_FAILED;
                println!(
                    "{name}: no recorded base to merge from; compare with `t8k-engine scripts diff {name}`, bring your copy up to date by hand, then `t8k-engine scripts merge --resolved {name}`"
                );
            }
        }
    }
    let problems = script::check(&scripts, &settings(config));
    for p in &problems {
        println!("{p}");
        code = EXIT_FAILED;
    }
    Ok(code)
}

/// First SIGINT/SIGTERM cancels the running job cleanly; a second one exits at once.
fn cancel_on_signals() -> Result<Cancel> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let cancel = Cancel::new();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let c = cancel.clone();
    std::thread::spawn(move || {
        for (n, sig) in signals.forever().enumerate() {
            if n == 0 {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                tracing::warn!(
                    "{name} received: stopping the running step (send it again to exit at once)"
                );
                c.cancel(&format!("engine stopping ({name})"));
            } else {
                std::process::exit(130);
            }
        }
    });
    Ok(cancel)
}

fn run(config: &Config, layout: &Layout, no_wait: bool) -> Result<u8> {
    let cancel = cancel_on_signals()?;
    let _lock = if no_wait {
        match EngineLock::try_acquire(&layout.engine_dir)? {
            Ok(lock) => lock,
            Err(holder) => {
                eprintln!(
                    "another t8k-engine ({holder}) is processing {}; it will pick up new triggers too, or run again later",
                    layout.state.display()
                );
                return Ok(EXIT_LOCKED);
            }
        }
    } else {
        EngineLock::acquire(&layout.engine_dir, |holder| {
            tracing::info!(
                "another t8k-engine ({holder}) holds the lock on {}; waiting for it",
                layout.state.display()
            )
        })?
    };
    let drainer = std::sync::Arc::new(Drainer::new(config, layout, cancel)?);
    let mut cancels = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
        .context("cannot install signal handlers")?;
    let d = drainer.clone();
    std::thread::spawn(move || {
        for _ in cancels.forever() {
            d.cancel_job("cancelled by `t8k-engine cancel`");
        }
    });
    let summary = drainer.drain()?;
    tracing::info!(
        "run finished: {} job(s) succeeded, {} failed, {} trigger(s) done, {} set aside{}",
        summary.jobs_ok,
        summary.jobs_failed,
        summary.files_done,
        summary.set_aside,
        if summary.interrupted {
            ", interrupted"
        } else {
            ""
        }
    );
    // The moment between the last look at the inbox and the exit, which a path unit must cover.
    crate::fault_point!("run.drained");
    Ok(
        if summary.jobs_failed > 0 || summary.set_aside > 0 || summary.interrupted {
            EXIT_FAILED
        } else {
            EXIT_OK
        },
    )
}

fn eval(
    config: &Config,
    layout: &Layout,
    snippet: Option<String>,
    file: Option<PathBuf>,
    job: Option<String>,
) -> Result<u8> {
    let (text, origin) = match (snippet, file) {
        (Some(s), _) => (s, "<eval>".to_string()),
        (None, Some(f)) => (
            std::fs::read_to_string(&f)
                .map_err(|e| usage(format!("cannot read {}: {e}", f.display())))?,
            f.display().to_string(),
        ),
        (None, None) => bail!(usage("give a snippet or -f FILE")),
    };
    let job = match job {
        None => None,
        Some(line) => {
            // `--job` accepts a line without `command`, since eval calls functions directly.
            let full = if line.split(',').any(|f| f.starts_with("command=")) {
                line.clone()
            } else {
                format!("{line},command=eval")
            };
            let spec = trigger::parse_line(&full, 1)
                .map_err(|e| usage(format!("--job '{line}': {}", e.message)))?;
            let target = layout.target(&spec).map_err(|e| usage(format!("{e:#}")))?;
            Some(Job {
                id: ulid::Ulid::new().to_string(),
                spec,
                trigger: "(eval)".into(),
                root: layout.root.display().to_string(),
                target,
            })
        }
    };
    let ctx = JobCtx::new(
        settings(config),
        cancel_on_signals()?,
        std::time::Duration::from_secs(config.job_timeout),
        false,
    );
    let scripts = Scripts::new(&layout.scripts_dir);
    match script::eval(&scripts, &ctx, &text, &origin, job) {
        Ok(value) => {
            if !value.is_unit() {
                println!("{value}");
            }
            Ok(EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: {}", e.details());
            Ok(EXIT_FAILED)
        }
    }
}

/// Fleet commands that only talk to NATS (an operator's or producer's machine has no TractStack root);
/// the bridge itself (`fleet` alone) writes the inbox, so it is not one of them.
#[cfg(feature = "fleet")]
fn fleet_only(command: &Command) -> bool {
    match command {
        Command::Fleet(args) => args.action.is_some(),
        Command::Trigger { fleet, .. } => *fleet,
        _ => false,
    }
}

#[cfg(not(feature = "fleet"))]
fn fleet_only(_: &Command) -> bool {
    false
}

/// The job `trigger`'s arguments describe, validated as a trigger line.
fn trigger_spec(
    kind: &str,
    tenant: &str,
    site: Option<&str>,
    command: &str,
    force: bool,
) -> Result<trigger::JobSpec> {
    let mut line = format!("type={kind},tenant={tenant}");
    if let Some(site) = site {
        line.push_str(&format!(",site={site}"));
    }
    line.push_str(&format!(",command={command}"));
    if force {
        line.push_str(",force=true");
    }
    trigger::parse_line(&line, 1).map_err(|e| usage(format!("invalid trigger: {}", e.message)))
}

/// Writes a trigger as a dot-file, then renames it into place, so no reader ever sees it half-written.
fn drop_trigger(
    config: &Config,
    layout: &Layout,
    kind: &str,
    tenant: &str,
    site: Option<&str>,
    command: &str,
    force: bool,
) -> Result<PathBuf> {
    let spec = trigger_spec(kind, tenant, site, command, force)?;
    script::check_command(
        &Scripts::new(&layout.scripts_dir),
        &settings(config),
        spec.kind,
        &spec.command,
    )
    .map_err(|e| usage(e.headline()))?;
    std::fs::create_dir_all(&layout.state)
        .with_context(|| format!("cannot create {}", layout.state.display()))?;
    let path = layout.state.join(queue::new_trigger_name());
    queue::write_new_durably(&path, format!("{}\n", spec.to_line()).as_bytes())?;
    tracing::info!("trigger: wrote {} ({})", path.display(), spec.to_line());
    Ok(path)
}

fn history(
    layout: &Layout,
    limit: usize,
    target: Option<&str>,
    failed: bool,
    json: bool,
) -> Result<u8> {
    let running = EngineLock::probe(&layout.engine_dir)?.is_some();
    let events = crate::drain::journal(layout).read();
    let (jobs, superseded) = crate::history::jobs(&events, running);
    let jobs: Vec<_> = jobs
        .into_iter()
        .filter(|j| target.is_none_or(|t| j.target == t))
        .filter(|j| !failed || !matches!(j.result.as_str(), "succeeded" | "running"))
        .take(limit)
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "jobs": jobs, "superseded": superseded })
            )?
        );
        return Ok(EXIT_OK);
    }
    if jobs.is_empty() {
        println!(
            "no jobs recorded in {}",
            layout.engine_dir.join("history").display()
        );
    }
    for j in &jobs {
        let result = match (j.result.as_str(), &j.failed_step) {
            ("failed", Some(step)) => format!("failed at step `{step}`"),
            ("rolled_back", Some(step)) => format!("rolled back (step `{step}`)"),
            ("rolled_back", None) => "rolled back".to_string(),
            ("interrupted_rerun", _) => "interrupted, re-run".to_string(),
            (other, _) => other.to_string(),
        };
        let took = j
            .duration_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        println!(
            "{}  {}  {:<16} {:<8} {:<28} {:>7}  {}:{}{}",
            j.job_id,
            j.started_at
                .get(..19)
                .unwrap_or(&j.started_at)
                .replace('T', " "),
            j.target,
            j.command,
            result,
            took,
            j.trigger,
            j.line,
            if j.attempt > 1 {
                format!(" (attempt {})", j.attempt)
            } else {
                String::new()
            }
        );
        if let Some(reason) = &j.reason
            && j.result != "succeeded"
        {
            println!("    {reason}");
        }
        let asked = [
            ("asked for by", &j.requested_by),
            ("cancelled by", &j.cancelled_by),
        ];
        for (what, who) in asked.iter().filter_map(|(w, b)| Some((w, b.as_ref()?))) {
            println!("    {what} {who} (t8k-engine serve)");
        }
        let steps: Vec<String> = j
            .steps
            .iter()
            .map(|s| {
                let state = if s.cancelled {
                    " cancelled"
                } else if s.ok == Some(false) {
                    " FAILED"
                } else {
                    ""
                };
                format!(
                    "{} {:.1}s (cpu {:.1}s, {} MiB){state}",
                    s.name,
                    s.wall_ms as f64 / 1000.0,
                    (s.user_cpu_ms + s.sys_cpu_ms) as f64 / 1000.0,
                    s.max_rss_kib / 1024
                )
            })
            .collect();
        if !steps.is_empty() {
            println!("    steps: {}", steps.join(", "));
        }
    }
    for s in superseded.iter().rev().take(5) {
        if let crate::history::Event::Superseded { trigger, by, at } = s {
            println!("superseded: {trigger} by {by} at {at}");
        }
    }
    Ok(EXIT_OK)
}

/// A job id from `history` names the trigger it ran from; anything else is a set-aside file name.
fn set_aside_name(layout: &Layout, name: &str) -> String {
    if layout.failed.join(name).exists() || name.len() != 26 {
        return name.to_string();
    }
    let (jobs, _) = crate::history::jobs(&crate::drain::journal(layout).read(), false);
    jobs.into_iter()
        .find(|j| j.job_id == name)
        .map_or_else(|| name.to_string(), |j| j.trigger)
}

fn cancel(config: &Config, layout: &Layout) -> Result<u8> {
    let Some(holder) = EngineLock::probe(&layout.engine_dir)? else {
        println!("no engine is running: nothing to cancel");
        return Ok(EXIT_OK);
    };
    let journal = crate::drain::journal(layout);
    let (jobs, _) = crate::history::jobs(&journal.read(), true);
    let Some(job) = jobs.into_iter().find(|j| j.result == "running") else {
        println!("the engine ({holder}) is running no job: nothing to cancel");
        return Ok(EXIT_OK);
    };
    let pid = holder
        .pid
        .context("the engine's pid is unknown (state/.t8k-engine/engine.pid): cannot signal it")?;
    // SAFETY: kill(2) with plain integers; SIGUSR1 asks the engine to cancel its running job.
    if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
        bail!(
            "cannot signal the engine (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    println!(
        "cancelling job {} ({} {}, {}:{})",
        job.job_id, job.target, job.command, job.trigger, job.line
    );
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(config.kill_grace + 30);
    while std::time::Instant::now() < deadline {
        let (jobs, _) = crate::history::jobs(&journal.read(), true);
        if let Some(done) = jobs
            .iter()
            .find(|j| j.job_id == job.job_id && j.result != "running")
        {
            println!(
                "job {} {}: its processes are stopped and {} is in {}",
                done.job_id,
                done.result,
                job.trigger,
                layout.failed.display()
            );
            return Ok(EXIT_OK);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!(
        "job {} did not stop within {}s; check `t8k-engine status`",
        job.job_id,
        config.kill_grace + 30
    )
}

/// Follows a trigger through the journal until it is done: prints its jobs and steps as they start
/// and exits 0 when every job succeeded, 1 otherwise.
fn follow(_config: &Config, layout: &Layout, mut name: String) -> Result<u8> {
    use crate::history::Event;
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    let journal = crate::drain::journal(layout);
    let job_logs = layout
        .log_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("jobs");
    let mut seen = journal.read().len();
    let mut mine: Vec<(String, Option<String>)> = Vec::new();
    let mut told_idle = false;
    // On a terminal each job is a spinner with its current step and output line; otherwise plain lines.
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let mut bars: std::collections::HashMap<String, (ProgressBar, String)> =
        std::collections::HashMap::new();
    let say = |text: String| {
        if tty {
            let _ = multi.println(text);
        } else {
            println!("{text}");
        }
    };
    loop {
        let events = journal.read();
        for event in events.iter().skip(seen) {
            match event {
                Event::JobStarted {
                    job_id,
                    trigger,
                    target,
                    command,
                    ..
                } if *trigger == name => {
                    if tty {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(ProgressStyle::with_template(
                            "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg:.dim}",
                        )?);
                        bar.set_prefix(format!("{target} {command}"));
                        bar.enable_steady_tick(std::time::Duration::from_millis(120));
                        bars.insert(job_id.clone(), (bar, String::new()));
                    }
                    say(format!("job {job_id} started: {target} {command}"));
                    mine.push((job_id.clone(), None));
                }
                Event::StepStarted {
                    job_id,
                    name: step,
                    branch,
                    ..
                } if mine.iter().any(|(id, _)| id == job_id) => {
                    let branch = if branch.is_empty() {
                        String::new()
                    } else {
                        format!(" [{branch}]")
                    };
                    match bars.get_mut(job_id) {
                        Some((bar, current)) => {
                            *current = format!("{step}{branch}");
                            bar.set_message(current.clone());
                        }
                        None => println!("  step {step}{branch}"),
                    }
                }
                Event::JobFinished {
                    job_id,
                    result,
                    reason,
                    duration_ms,
                    ..
                } => {
                    if let Some(slot) = mine.iter_mut().find(|(id, _)| id == job_id) {
                        let line = format!(
                            "job {job_id} {result} in {:.1}s",
                            *duration_ms as f64 / 1000.0
                        );
                        match bars.remove(job_id) {
                            Some((bar, _)) => {
                                let mark = if result == "succeeded" { "✓" } else { "✗" };
                                bar.set_style(ProgressStyle::with_template("{prefix} {wide_msg}")?);
                                bar.set_prefix(format!("{mark} {}", bar.prefix()));
                                bar.finish_with_message(line);
                            }
                            None => println!("{line}"),
                        }
                        if let Some(reason) = reason.as_ref().filter(|_| result != "succeeded") {
                            say(format!("  {reason}"));
                        }
                        slot.1 = Some(result.clone());
                    }
                }
                Event::Superseded { trigger, by, .. } if *trigger == name => {
                    say(format!("{trigger} was superseded by {by}: following it"));
                    name = by.clone();
                }
                _ => {}
            }
        }
        seen = events.len();
        // The current output line comes from the job's own log.
        for (job_id, (bar, step)) in &bars {
            let text = std::fs::read_to_string(crate::joblog::log_path(&job_logs, job_id))
                .unwrap_or_default();
            if let Some(last) = text.lines().last() {
                let last = last.split_once(' ').map_or(last, |(_, rest)| rest);
                bar.set_message(format!("{step}: {last}"));
            }
        }
        let pending = layout.state.join(&name).exists() || layout.work.join(&name).exists();
        if !pending && mine.iter().all(|(_, r)| r.is_some()) {
            let ok =
                !mine.is_empty() && mine.iter().all(|(_, r)| r.as_deref() == Some("succeeded"));
            if mine.is_empty() {
                let reason =
                    crate::status::read_small(&layout.failed, 1, &format!("{name}.reason"))
                        .unwrap_or_default();
                say(format!(
                    "{name} was set aside: {}",
                    reason.lines().next().unwrap_or("see state/failed/")
                ));
            }
            return Ok(if ok { EXIT_OK } else { EXIT_FAILED });
        }
        if !told_idle
            && layout.state.join(&name).exists()
            && EngineLock::probe(&layout.engine_dir)?.is_none()
        {
            say(format!(
                "waiting: no engine is running to pick {name} up (start `t8k-engine watch`)"
            ));
            told_idle = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn logs(layout: &Layout, job_id: &str, follow: bool) -> Result<u8> {
    // Job ids are ULIDs: checked before they become part of a path.
    if job_id.len() != 26
        || !job_id
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return Err(usage(format!(
            "`{job_id}` is not a job id; `t8k-engine history` lists them"
        )));
    }
    let dir = layout
        .log_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("jobs");
    let path = crate::joblog::log_path(&dir, job_id);
    let journal = crate::drain::journal(layout);
    let known = |id: &str| {
        crate::history::jobs(&journal.read(), true)
            .0
            .into_iter()
            .find(|j| j.job_id == id)
    };
    if !path.exists() {
        return Err(usage(match known(job_id) {
            Some(_) => format!(
                "job {job_id} has no log left in {} (older logs are pruned: keep_job_logs)",
                dir.display()
            ),
            None => format!("no job {job_id} in the history; `t8k-engine history` lists job ids"),
        }));
    }
    let mut offset = 0u64;
    loop {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if (bytes.len() as u64) > offset {
            use std::io::Write;
            std::io::stdout().write_all(&bytes[offset as usize..])?;
            offset = bytes.len() as u64;
        }
        let running = known(job_id).is_some_and(|j| j.result == "running")
            && EngineLock::probe(&layout.engine_dir)?.is_some();
        if !follow || !running {
            // One more read after the job ended catches its last lines.
            let bytes = std::fs::read(&path)?;
            if (bytes.len() as u64) > offset {
                use std::io::Write;
                std::io::stdout().write_all(&bytes[offset as usize..])?;
            }
            return Ok(EXIT_OK);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
