//! Owns the fleet's commands: `t8k-engine fleet [init|sites|status|history|server-config]` and the
//! `--fleet` side of `trigger`; it parses arguments, runs each in the fleet's runtime and prints, keeping no
//! logic of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::config::FleetConfig;
use crate::config::Config;
use crate::error::Exit;
use crate::history::JobResult;
use crate::layout::Layout;
use crate::trigger::JobSpec;

/// `t8k-engine fleet`: without a subcommand, runs this host's bridge.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = false)]
pub struct FleetArgs {
    /// Connect as this NATS user instead of the configured one (e.g. admin)
    #[arg(long, global = true, value_name = "USER")]
    pub user: Option<String>,
    /// The password file of --user (one line, mode 0600)
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// What to do (default: run this host's bridge)
    #[command(subcommand)]
    pub action: Option<FleetAction>,
}

/// The fleet's subcommands.
#[derive(Subcommand, Debug)]
pub enum FleetAction {
    /// Create or update the streams, buckets and host consumers (admin credentials; idempotent)
    Init {
        /// A host to add (its consumer); repeat for each host
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Seconds a handed-out job may stay unacknowledged before it is delivered again
        #[arg(long, default_value_t = 30)]
        ack_wait: u64,
        /// Deliveries of one job before its bridge sets it aside
        #[arg(long, default_value_t = 10)]
        max_deliver: i64,
        /// Seconds during which a re-published job id is dropped as a duplicate by the server
        #[arg(long, default_value_t = 600)]
        duplicate_window: u64,
        /// Jobs the stream holds at most (more are refused, never dropped)
        #[arg(long, default_value_t = 100_000)]
        max_jobs: i64,
    },
    /// The site map: which host serves each dedicated site
    Sites {
        #[command(subcommand)]
        action: SitesAction,
    },
    /// Every host: its engine, running job, queue, last failures, and how old its report is
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Past jobs of every host, newest first, from the events stream
    History(HistoryArgs),
    /// Write a nats-server configuration (accounts, one user per host, permissions) and a password file per user
    ServerConfig(ServerConfigArgs),
}

/// `fleet history …`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// How many jobs
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: usize,
    /// Only this host
    #[arg(long)]
    host: Option<String>,
    /// Only jobs of this target (main, multi/TENANT, dedicated/SITE)
    #[arg(long)]
    target: Option<String>,
    /// Only jobs that did not succeed
    #[arg(long)]
    failed: bool,
    /// How far back, e.g. 30m, 12h, 7d
    #[arg(long, default_value = "7d")]
    since: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `fleet server-config …`.
#[derive(Args, Debug)]
pub struct ServerConfigArgs {
    /// Directory to write nats-server.conf and USER.password into (must not hold them yet)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A host (its user has the host role); repeat for each host
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// A producer user (queues jobs); repeatable
    #[arg(long = "producer", value_name = "USER")]
    producers: Vec<String>,
    /// A host whose bridge also forwards an outbox (its user gets the producer role too); repeatable
    #[arg(long = "producer-host", value_name = "HOST")]
    producer_hosts: Vec<String>,
    /// A viewer user (fleet status and history); repeatable
    #[arg(long = "viewer", value_name = "USER")]
    viewers: Vec<String>,
    /// The administrator user
    #[arg(long, default_value = "admin")]
    admin: String,
    /// The client listener
    #[arg(long, default_value = "0.0.0.0:4222")]
    listen: String,
    /// JetStream's store directory
    #[arg(long, default_value = "/var/lib/nats/jetstream")]
    store_dir: PathBuf,
    /// The server's TLS certificate (PEM); with --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's TLS key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A CA for client certificates: clients must then present one (verify: true)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

/// `fleet sites …`.
#[derive(Subcommand, Debug)]
pub enum SitesAction {
    /// Point a site at a host (admin credentials)
    Set {
        /// The site
        site: String,
        /// The host that serves it
        host: String,
    },
    /// List every site with its host
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Take a site out of the map (admin credentials)
    Rm {
        /// The site
        site: String,
    },
}

/// Runs `t8k-engine fleet …`.
pub fn run(args: FleetArgs, config: &Config, layout: &Layout) -> Result<Exit> {
    if let Some(FleetAction::ServerConfig(sc)) = args.action {
        return server_config(sc);
    }
    let fleet = FleetConfig::of(config)?;
    let fleet =
        super::connect::as_user(&fleet, args.user.as_deref(), args.password_file.as_deref())?;
    let Some(action) = args.action else {
        if args.user.is_some() {
            bail!("the bridge runs as this host's configured user: leave out --user");
        }
        return super::bridge::run(config, layout);
    };
    super::connect::runtime()?.block_on(async move {
        let client = super::connect::connect(&fleet, false).await?;
        let js = async_nats::jetstream::new(client.clone());
        let code = command(action, &js).await;
        let _ = client.flush().await;
        code.map_err(super::connect::with_violation)
    })
}

async fn command(action: FleetAction, js: &async_nats::jetstream::Context) -> Result<Exit> {
    match action {
        FleetAction::Init {
            hosts,
            ack_wait,
            max_deliver,
            duplicate_window,
            max_jobs,
        } => {
            let plan = super::setup::Plan {
                hosts,
                ack_wait: Duration::from_secs(ack_wait),
                max_deliver,
                duplicate_window: Duration::from_secs(duplicate_window),
                max_jobs,
                ..Default::default()
            };
            for line in super::setup::init(js, &plan).await? {
                println!("{line}");
            }
        }
        FleetAction::Sites { action } => sites(js, action).await?,
        FleetAction::Status { json } => status(js, json).await?,
        FleetAction::History(args) => history(js, args).await?,
        FleetAction::ServerConfig(_) => unreachable!("handled before connecting"),
    }
    Ok(Exit::Ok)
}

/// `fleet sites set|list|rm`.
async fn sites(js: &async_nats::jetstream::Context, action: SitesAction) -> Result<()> {
    match action {
        SitesAction::Set { site, host } => match super::sites::set(js, &site, &host).await? {
            Some(before) if before == host => println!("{site}: already on {host}"),
            Some(before) => println!(
                "{site}: moved from {before} to {host} (jobs already queued for {before} are set aside there)"
            ),
            None => println!("{site}: on {host}"),
        },
        SitesAction::List { json } => {
            let sites = super::sites::list(js).await?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> =
                    sites.into_iter().map(|(s, h)| (s, h.into())).collect();
                println!("{}", serde_json::Value::Object(map));
            } else if sites.is_empty() {
                println!("no site in the map: `t8k-engine fleet sites set SITE HOST`");
            } else {
                for (site, host) in sites {
                    println!("{site}\t{host}");
                }
            }
        }
        SitesAction::Rm { site } => match super::sites::remove(js, &site).await? {
            Some(host) => println!("{site}: removed (was on {host})"),
            None => println!("{site}: not in the map"),
        },
    }
    Ok(())
}

/// `fleet status [--json]`.
async fn status(js: &async_nats::jetstream::Context, json: bool) -> Result<()> {
    let hosts = super::view::hosts(js).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "generated_at": jiff::Timestamp::now().to_string(),
                "hosts": hosts,
            }))?
        );
    } else {
        print!("{}", super::view::render(&hosts));
    }
    Ok(())
}

/// `fleet history …`: the chosen jobs as JSON or one line each (with the reason of those that failed).
async fn history(js: &async_nats::jetstream::Context, args: HistoryArgs) -> Result<()> {
    let since = parse_age(&args.since)?;
    let records = super::view::records(js, args.host.as_deref(), since).await?;
    let jobs: Vec<_> = super::view::jobs(&records)
        .into_iter()
        .filter(|j| args.target.as_ref().is_none_or(|t| &j.job.target == t))
        .filter(|j| {
            !args.failed || !matches!(j.job.result, JobResult::Succeeded | JobResult::Running)
        })
        .take(args.limit)
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs in the events stream for that choice");
    }
    for j in &jobs {
        let took = j
            .job
            .duration_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        println!(
            "{:<12} {}  {}  {:<18} {:<8} {:<12} {:>7}  {}",
            j.host,
            j.job.job_id,
            j.job
                .started_at
                .get(..19)
                .unwrap_or(&j.job.started_at)
                .replace('T', " "),
            j.job.target,
            j.job.command,
            j.job.result,
            took,
            j.job.trigger
        );
        if let Some(reason) = j
            .job
            .reason
            .as_ref()
            .filter(|_| j.job.result != JobResult::Succeeded)
        {
            println!("    {reason}");
        }
    }
    Ok(())
}

/// `30m`, `12h`, `7d` or plain seconds.
fn parse_age(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("--since `{text}`: expected e.g. 30m, 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("--since `{text}`: the unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

/// `trigger … --fleet`: publishes the job to the host that serves it and prints where it went; with `wait`
/// (`Some(timeout)`) follows it on that host's events to its end, or for at most the timeout (exit 124).
pub fn trigger(
    config: &Config,
    spec: &JobSpec,
    host: Option<&str>,
    id: Option<&str>,
    patience: Duration,
    wait: Option<Option<Duration>>,
) -> Result<Exit> {
    let fleet = FleetConfig::of(config)?;
    let id = match id {
        Some(text) => super::names::parse_job_id(text).with_context(|| {
            format!(
                "--id `{text}` is not a job id: give the ULID an earlier `trigger --fleet` printed"
            )
        })?,
        None => ulid::Ulid::new(),
    };
    super::connect::runtime()?.block_on(async move {
        let client = super::connect::connect(&fleet, false).await?;
        let js = async_nats::jetstream::new(client.clone());
        let host = super::producer::route(&js, spec, host)
            .await
            .map_err(super::connect::with_violation)?;
        let follower = match wait {
            Some(_) => Some(super::wait::Follower::open(&js, &host, id, spec.target_name()).await?),
            None => None,
        };
        let queued = super::producer::publish(&js, &host, spec, &id, patience).await?;
        if queued.duplicate {
            println!(
                "job {id} was already queued for host {host} (stream seq {}): this publish was dropped as a duplicate",
                queued.seq
            );
        } else {
            println!("job {id} queued for host {host} (stream seq {})", queued.seq);
        }
        let _ = client.flush().await;
        let Some(f) = follower else {
            return Ok(Exit::Ok);
        };
        let ended = match wait.flatten() {
            Some(limit) => tokio::time::timeout(limit, f.follow()).await,
            None => Ok(f.follow().await),
        };
        match ended {
            Ok(end) => Ok(Exit::ok_if(
                end? == super::wait::End::Ran(JobResult::Succeeded),
            )),
            Err(_) => {
                eprintln!(
                    "t8k-engine: --timeout {}s ran out before job {id} ended on host {host}. Nothing was cancelled: it goes on; `t8k-engine fleet history --host {host}` shows it, and `trigger --fleet --wait --id {id}` follows it again without queuing it twice",
                    wait.flatten().unwrap_or_default().as_secs_f64()
                );
                Ok(Exit::TimedOut)
            }
        }
    })
}

/// `fleet server-config …`: the server's configuration and one password file per user, written new.
fn server_config(args: ServerConfigArgs) -> Result<Exit> {
    use super::server_conf::{Plan, Tls, render};
    let users = users(&args)?;
    let plan = Plan {
        listen: args.listen,
        store_dir: args.store_dir,
        users: users.clone(),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert_file, key_file)| Tls {
                cert_file,
                key_file,
                ca_file: args.tls_ca,
            }),
    };
    let out = args.out;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    write_new(&out.join("nats-server.conf"), &render(&plan))?;
    for u in &users {
        write_new(
            &out.join(format!("{}.password", u.name)),
            &format!("{}\n", u.password),
        )?;
    }
    println!(
        "wrote {} and one password file per user ({}); install nats-server.conf on the server, copy each host's HOST.password to that host as /etc/t8k-engine/fleet.password (mode 0600, owner t8k), and keep admin.password off the hosts",
        out.join("nats-server.conf").display(),
        users
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if plan.tls.is_none() {
        eprintln!(
            "warning: no --tls-cert: passwords and jobs cross the network in clear text; use TLS beyond one machine"
        );
    }
    Ok(Exit::Ok)
}

/// The users `server-config` was asked for, each with a fresh password and its roles (a name given twice,
/// as a host and a producer, is one user with both).
fn users(args: &ServerConfigArgs) -> Result<Vec<super::server_conf::User>> {
    use super::server_conf::{Role, User, password};
    if args.hosts.is_empty() {
        bail!("give at least one --host: each host's bridge gets its own user");
    }
    let mut users: Vec<User> = Vec::new();
    let mut add = |name: &str, role: Role| -> Result<()> {
        super::config::check_name("user", name)?;
        match users.iter_mut().find(|u| u.name == name) {
            Some(u) => u.roles.push(role),
            None => users.push(User {
                name: name.to_string(),
                password: password().context("cannot read random bytes for a password")?,
                roles: vec![role],
            }),
        }
        Ok(())
    };
    add(&args.admin, Role::Admin)?;
    for h in &args.hosts {
        add(h, Role::Host(h.clone()))?;
    }
    for h in &args.producer_hosts {
        if !args.hosts.contains(h) {
            bail!("--producer-host {h} is not one of the --host names");
        }
        add(h, Role::Producer)?;
    }
    for p in &args.producers {
        add(p, Role::Producer)?;
    }
    for v in &args.viewers {
        add(v, Role::Viewer)?;
    }
    Ok(users)
}

/// Writes a secret file, mode 0600, refusing to replace one.
fn write_new(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
