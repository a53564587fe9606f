//! `t8k-engine trigger`: drops a checked trigger into the inbox atomically and prints its path; with
//! `--wait` it follows the trigger to its end (or for at most `--timeout`) and exits with its result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Ctx;
use crate::error::{Exit, usage};
use crate::layout::Layout;
use crate::script::{self, Scripts, Settings};
use crate::trigger;

/// The trigger line the options describe.
#[derive(Clone, Copy)]
pub struct Line<'a> {
    /// `main`, `prod`, `multi` or `dedicated`.
    pub kind: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The site (dedicated only).
    pub site: Option<&'a str>,
    /// The script function.
    pub command: &'a str,
    /// Build everything even if nothing changed.
    pub force: bool,
}

impl Line<'_> {
    /// The job the options describe, validated as a trigger line.
    pub fn spec(&self) -> Result<trigger::JobSpec> {
        trigger::parse_line(&self.text(), 1)
            .map_err(|e| usage(format!("invalid trigger: {}", e.message)))
    }

    fn text(&self) -> String {
        let mut line = format!("type={},tenant={}", self.kind, self.tenant);
        if let Some(site) = self.site {
            line.push_str(&format!(",site={site}"));
        }
        line.push_str(&format!(",command={}", self.command));
        if self.force {
            line.push_str(",force=true");
        }
        line
    }
}

/// `--wait [--timeout]`: follow the dropped triggers, for at most `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// The most time to follow them; `None`: to their end.
    pub timeout: Option<Duration>,
}

/// Following from where the journal ended before the drop, so that none of the trigger's events is missed.
#[derive(Debug, Clone)]
pub struct Following {
    from: Option<crate::history::Cursor>,
    timeout: Option<Duration>,
}

impl Wait {
    /// Marks the journal's end: called before the trigger is dropped.
    pub fn start(wait: Option<Wait>, ctx: &Ctx) -> Option<Following> {
        wait.map(|w| Following {
            from: crate::ui::follow::journal_end(ctx.layout),
            timeout: w.timeout,
        })
    }
}

/// Drops the trigger; follows it with `wait`.
pub fn run(ctx: &Ctx, line: &Line, wait: Option<Wait>) -> Result<Exit> {
    let spec = line.spec()?;
    let from = Wait::start(wait, ctx);
    let path = drop_spec(ctx, &spec)?;
    // `sleep(ms)` here lets the engine run the whole job before the follower first reads the journal.
    crate::fault_point!("trigger.dropped");
    print_and_follow(ctx, &path, from)
}

/// Prints a dropped trigger's path; with `from`, follows it to its end: exit 0 when every job of it
/// succeeded, 124 when the timeout ran out first.
pub fn print_and_follow(ctx: &Ctx, path: &Path, from: Option<Following>) -> Result<Exit> {
    println!("{}", path.display());
    follow(ctx, &[path.to_path_buf()], from)
}

/// Drops one trigger per site (`sites`) or per tenant, in name order, so that they run in that order;
/// follows them all with `wait`.
pub fn run_all(ctx: &Ctx, line: &Line, sites: bool, wait: Option<Wait>) -> Result<Exit> {
    let (want, flag) = if sites {
        ("dedicated", "--all-sites")
    } else {
        ("multi", "--all-tenants")
    };
    if line.kind != want {
        return Err(usage(format!(
            "{flag} is for `trigger {want}`, not `trigger {}`",
            line.kind
        )));
    }
    let (names, skipped) = if sites {
        all_sites(ctx.layout)?
    } else {
        all_tenants(ctx.layout)?
    };
    for note in &skipped {
        eprintln!("{note}");
    }
    let what = if sites { "site" } else { "tenant" };
    if names.is_empty() {
        return Err(usage(format!(
            "{flag}: no {what} found under {}",
            if sites {
                ctx.layout.root.join("sites").display().to_string()
            } else {
                "the main backend's config directory".to_string()
            }
        )));
    }
    let specs = names
        .iter()
        .map(|name| {
            Line {
                site: sites.then_some(name.as_str()),
                tenant: if sites { line.tenant } else { name.as_str() },
                ..*line
            }
            .spec()
        })
        .collect::<Result<Vec<_>>>()?;
    // Checked once: every line has the same type and command.
    check(ctx, &specs[0])?;
    let from = Wait::start(wait, ctx);
    // One generator: ULIDs made in the same millisecond still increase, so the names sort in this order.
    let mut ids = ulid::Generator::new();
    let mut paths = Vec::new();
    for spec in &specs {
        let path = write_trigger(ctx, spec, &mut ids)?;
        crate::fault_point!("trigger.dropped");
        println!("{}", path.display());
        paths.push(path);
    }
    follow(ctx, &paths, from)
}

/// With `from`, follows each trigger in turn from the journal's end before the first drop; exits 0 when
/// every job of every one succeeded, 124 when the timeout (one for them all) ran out first.
fn follow(ctx: &Ctx, paths: &[PathBuf], from: Option<Following>) -> Result<Exit> {
    use crate::ui::follow::Followed;
    let Some(Following { from, timeout }) = from else {
        return Ok(Exit::Ok);
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut all_succeeded = true;
    for (i, path) in paths.iter().enumerate() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        match crate::ui::follow::follow(ctx.layout, name, from.clone(), deadline)? {
            Followed::Ended(ok) => all_succeeded &= ok,
            Followed::TimedOut(now) => {
                let rest = match paths.len() - i - 1 {
                    0 => String::new(),
                    n => format!(" ({n} more trigger(s) after it)"),
                };
                eprintln!(
                    "t8k-engine: --timeout {}s ran out: {now}{rest}. Nothing was cancelled: it goes on; `t8k-engine status` shows it, `t8k-engine history` its result",
                    timeout.unwrap_or_default().as_secs_f64()
                );
                return Ok(Exit::TimedOut);
            }
        }
    }
    Ok(Exit::ok_if(all_succeeded))
}

/// Drops one job as a trigger after checking that the script defines its command; returns its path.
pub fn drop_spec(ctx: &Ctx, spec: &trigger::JobSpec) -> Result<PathBuf> {
    check(ctx, spec)?;
    write_trigger(ctx, spec, &mut ulid::Generator::new())
}

/// The type's script must define the command, or the trigger would only be set aside.
fn check(ctx: &Ctx, spec: &trigger::JobSpec) -> Result<()> {
    script::check_command(
        &Scripts::new(&ctx.layout.scripts_dir),
        &Settings::from_config(ctx.config, ctx.layout),
        spec.kind,
        &spec.command,
    )
    .map_err(|e| usage(e.headline()))
}

/// Writes the trigger through a dot-file renamed into place, so no reader ever sees it half-written and no
/// file of that name is replaced.
fn write_trigger(ctx: &Ctx, spec: &trigger::JobSpec, ids: &mut ulid::Generator) -> Result<PathBuf> {
    let layout = ctx.layout;
    std::fs::create_dir_all(&layout.state)
        .with_context(|| format!("cannot create {}", layout.state.display()))?;
    let name = crate::queue::trigger_name_from(ids);
    let path = layout.state.join(&name);
    crate::fs::write_new_durably(&path, format!("{}\n", spec.to_line()).as_bytes())?;
    tracing::info!("trigger: wrote {} ({})", path.display(), spec.to_line());
    Ok(path)
}

/// The dedicated sites of the root: directories of `<root>/sites` whose name is a valid site and which
/// hold a backend checkout, in byte-wise order; and a note for each directory passed over.
fn all_sites(layout: &Layout) -> Result<(Vec<String>, Vec<String>)> {
    let dir = layout.root.join("sites");
    let mut names = Vec::new();
    let mut skipped = Vec::new();
    let listing = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()));
    for entry in listing?.flatten() {
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            skipped.push(format!("skipped {}: its name is not UTF-8", path.display()));
            continue;
        };
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        if let Err(e) = trigger::validate_value("site", &name) {
            skipped.push(format!("skipped {}: {}", path.display(), e));
        } else if !path.join("src/tractstack-go").is_dir() {
            skipped.push(format!(
                "skipped {}: no src/tractstack-go, so no site is installed there",
                path.display()
            ));
        } else {
            names.push(name);
        }
    }
    names.sort();
    skipped.sort();
    Ok((names, skipped))
}

/// The tenants the main backend reads, as tractstack-go finds them: `default`, and every other directory of
/// its data directory's `config/` holding an `env.json` (`config/t8k` is its tenant registry).
fn all_tenants(layout: &Layout) -> Result<(Vec<String>, Vec<String>)> {
    let (data, _) = crate::layout::data_dir(&layout.root, &layout.root.join("src/tractstack-go"));
    let config = data.join("config");
    let mut names = vec!["default".to_string()];
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(&config).into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == "default" || name == "t8k" || name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        if !entry.path().join("env.json").is_file() {
            skipped.push(format!(
                "skipped {}: no env.json, so it is no tenant",
                entry.path().display()
            ));
        } else if let Err(e) = trigger::validate_value("tenant", &name) {
            skipped.push(format!("skipped {}: {}", entry.path().display(), e));
        } else {
            names.push(name);
        }
    }
    names.sort();
    Ok((names, skipped))
}
