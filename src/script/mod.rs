//! Owns running Rhai for the engine: one sandboxed engine per job, calling the command function of a type's
//! script, `eval` snippets and `check`; it never touches the state directory or decides a trigger's fate.

pub mod api;
pub mod copies;
mod host;
pub mod job;
pub mod report;
pub mod sources;

use std::sync::{Arc, OnceLock};

use rhai::packages::{Package, StandardPackage};
use rhai::{AST, Dynamic, Engine, Scope};

pub use host::{Failure, JOB_TAG_VAR, JobCtx, Settings, StepHook, StepRecord};
pub use job::Job;
pub use report::Rendered;
pub use sources::Scripts;

use crate::trigger::Kind;

static PACKAGE: OnceLock<StandardPackage> = OnceLock::new();

/// How much a script may grow the engine's resident memory. Rhai's size limits do not see values that
/// closures capture, values stored by index assignment, or one large string in each of many variables;
/// this backstop does, before the machine runs out of memory.
pub const MAX_SCRIPT_MEMORY: u64 = 128 << 20;

/// Stack of the threads that run scripts (a job's and each `parallel` branch's). Cloning, printing and
/// dropping a value recurse once per level of nesting, and the levels a script can build are bounded
/// only by MAX_SCRIPT_MEMORY when it chains closures (`f = || g` in a loop). Measured: a level holds
/// about 170 bytes of heap and takes about 250 bytes of stack to drop in a release build (500 in a
/// debug one), so a chain grown to the memory limit needs 190 MiB (380 MiB). The 2 MiB of a default
/// thread (8 MiB on the main one) overflowed at a few thousand levels, and a stack overflow aborts the
/// whole engine. It is address space, touched only as deep as a script goes.
pub const SCRIPT_STACK: usize = 4 * MAX_SCRIPT_MEMORY as usize;

/// Builds a sandboxed engine whose host functions act for one job.
pub fn new_engine(scripts: &Scripts, ctx: &Arc<JobCtx>) -> Engine {
    let mut e = Engine::new_raw();
    // Building the standard package costs ~170 µs; sharing one makes an engine per job nearly free.
    PACKAGE
        .get_or_init(StandardPackage::new)
        .register_into_engine(&mut e);
    e.set_max_strings_interned(1024);
    e.disable_symbol("eval");
    e.set_module_resolver(sources::Resolver::new(scripts.clone()));
    e.set_strict_variables(true);
    e.set_fail_on_invalid_map_property(true);
    // Backstops only: the job's wall-clock deadline is the real limit.
    e.set_max_operations(500_000_000);
    e.set_max_call_levels(48);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(4 << 20);
    e.set_max_array_size(10_000);
    e.set_max_map_size(10_000);
    e.set_max_variables(1_000);
    e.set_max_functions(500);
    e.set_max_modules(32);
    let c = ctx.clone();
    let memory = MemoryWatch::new();
    e.on_progress(move |ops| {
        if ops % 256 == 0 {
            c.stop_reason()
                .or_else(|| memory.check())
                .map(Dynamic::from)
        } else {
            None
        }
    });
    e.on_print(|s| tracing::info!(target: "t8k::script", "{s}"));
    e.on_debug(|s, _, _| tracing::debug!(target: "t8k::script", "{s}"));
    e.build_type::<Job>();
    host::register(&mut e, ctx);
    e
}

/// Watches the engine's resident memory while a script runs (see MAX_SCRIPT_MEMORY).
struct MemoryWatch {
    base: u64,
    started: std::time::Instant,
    /// Milliseconds after `started` of the next look: reading /proc costs microseconds, operations nanoseconds.
    next: std::sync::atomic::AtomicU64,
}

impl MemoryWatch {
    fn new() -> Self {
        MemoryWatch {
            base: resident_bytes().unwrap_or(0),
            started: std::time::Instant::now(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Why the script must stop, when it has grown the engine by more than its share.
    fn check(&self) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.next.load(Relaxed) {
            return None;
        }
        self.next.store(now + 5, Relaxed);
        let grown = resident_bytes()?.saturating_sub(self.base);
        (grown > MAX_SCRIPT_MEMORY).then(|| {
            format!(
                "the script grew the engine's memory by {} MiB, over its limit of {} MiB: something keeps growing (an array, a map, closures made in a loop); fix the script",
                grown >> 20,
                MAX_SCRIPT_MEMORY >> 20
            )
        })
    }
}

/// The engine's resident set size (`/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Runs `f` on a thread with SCRIPT_STACK, inside the caller's tracing span. A panic in a host function
/// becomes an error of the job instead of taking the engine down.
pub fn on_script_thread<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("script".into())
            .stack_size(SCRIPT_STACK)
            .spawn_scoped(s, move || {
                let _entered = span.enter();
                f()
            })
            .map_err(|e| format!("cannot start a thread to run the script: {e}"))?;
        thread.join().map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("the engine panicked while running the script ({what}); this is a bug in t8k-engine, please report it")
        })
    })
}

/// A failure of the thread that runs a script, as a job error.
fn thread_error(origin: &str, message: String) -> JobError {
    JobError::Runtime(Rendered {
        headline: format!("{origin}: {message}"),
        details: format!("{origin}: {message}"),
        terminated: false,
    })
}

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
    /// One line for summaries.
    pub fn headline(&self) -> String {
        match self {
            JobError::Compile(msg) => format!("script does not compile: {msg}"),
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

    /// The full message with the call chain.
    pub fn details(&self) -> String {
        match self {
            JobError::Runtime(r) => r.details.clone(),
            other => other.headline(),
        }
    }
}

/// An engine for compiling and checking: host functions that act refuse to run.
fn dry_engine(scripts: &Scripts, settings: &Settings) -> Engine {
    let ctx = JobCtx::new(
        settings.clone(),
        crate::supervise::Cancel::new(),
        std::time::Duration::from_secs(60),
        true,
    );
    new_engine(scripts, &ctx)
}

/// Compiles the entry script of a type; returns the AST and the script's origin.
pub fn compile_entry(
    engine: &Engine,
    scripts: &Scripts,
    kind: Kind,
) -> Result<(AST, String), JobError> {
    let rel = format!("{kind}.rhai");
    let source = scripts
        .load(&rel)
        .map_err(|e| JobError::Compile(format!("{e:#}")))?
        .ok_or_else(|| {
            JobError::Compile(format!(
                "no script {rel} in {} and no built-in one",
                scripts.dir().display()
            ))
        })?;
    let mut ast = engine
        .compile(&source.text)
        .map_err(|e| JobError::Compile(report::parse_error(&source.origin, &e)))?;
    ast.set_source(source.origin.clone());
    Ok((ast, source.origin))
}

/// The commands (one-parameter public functions) a script defines.
pub fn commands(ast: &AST) -> Vec<String> {
    let mut names: Vec<String> = ast
        .iter_functions()
        .filter(|f| {
            f.params.len() == 1
                && !f.name.starts_with("anon$")
                && f.access != rhai::FnAccess::Private
        })
        .map(|f| f.name.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Compiles a type's script and confirms it defines `command`, without running anything.
pub fn check_command(
    scripts: &Scripts,
    settings: &Settings,
    kind: Kind,
    command: &str,
) -> Result<(), JobError> {
    let engine = dry_engine(scripts, settings);
    let (ast, origin) = compile_entry(&engine, scripts, kind)?;
    let available = commands(&ast);
    if available.iter().any(|c| c == command) {
        Ok(())
    } else {
        Err(JobError::NoCommand {
            command: command.to_string(),
            origin,
            available,
        })
    }
}

/// Runs the job's command function from its type's script. What it returns is dropped on the script's
/// thread: it may be nested deeper than another thread's stack could take.
pub fn run_job(scripts: &Scripts, ctx: &Arc<JobCtx>, job: Job) -> Result<(), JobError> {
    let origin = format!("{}.rhai", job.spec.kind);
    on_script_thread(|| run_job_here(scripts, ctx, job).map(drop))
        .unwrap_or_else(|e| Err(thread_error(&origin, e)))
}

fn run_job_here(scripts: &Scripts, ctx: &Arc<JobCtx>, job: Job) -> Result<Dynamic, JobError> {
    let engine = new_engine(scripts, ctx);
    let (ast, origin) = compile_entry(&engine, scripts, job.spec.kind)?;
    let command = job.spec.command.clone();
    let job_kind = job.spec.kind;
    let available = commands(&ast);
    if !available.contains(&command) {
        return Err(JobError::NoCommand {
            command,
            origin,
            available,
        });
    }
    engine
        .call_fn::<Dynamic>(&mut Scope::new(), &ast, &command, (job,))
        .map_err(|e| {
            let mut rendered = report::runtime_error(&origin, &e);
            if let Ok(Some(source)) = scripts.load(&format!("{job_kind}.rhai")) {
                report::locate_in_fn(&mut rendered, &origin, &source.text, &command);
            }
            JobError::Runtime(rendered)
        })
}

/// Calls a notification hook (`on_failure`, `on_success`, `on_recovery`) of the job's type script if it
/// defines one; `Ok(false)` when it does not. The hook gets its own short deadline.
pub fn call_hook(
    scripts: &Scripts,
    settings: &Settings,
    job: &Job,
    hook: &str,
    args: Vec<Dynamic>,
) -> Result<bool, JobError> {
    let origin = format!("{}.rhai", job.spec.kind);
    on_script_thread(|| call_hook_here(scripts, settings, job, hook, args))
        .unwrap_or_else(|e| Err(thread_error(&origin, e)))
}

fn call_hook_here(
    scripts: &Scripts,
    settings: &Settings,
    job: &Job,
    hook: &str,
    args: Vec<Dynamic>,
) -> Result<bool, JobError> {
    let ctx = JobCtx::new(
        settings.clone(),
        crate::supervise::Cancel::new(),
        std::time::Duration::from_secs(120),
        false,
    );
    let engine = new_engine(scripts, &ctx);
    let (ast, origin) = compile_entry(&engine, scripts, job.spec.kind)?;
    let arity = args.len() + 1;
    if !ast
        .iter_functions()
        .any(|f| f.name == hook && f.params.len() == arity)
    {
        return Ok(false);
    }
    let mut all = vec![Dynamic::from(job.clone())];
    all.extend(args);
    engine
        .call_fn::<Dynamic>(&mut Scope::new(), &ast, hook, all)
        .map(|_| true)
        .map_err(|e| JobError::Runtime(report::runtime_error(&origin, &e)))
}

/// Runs a snippet as top-level code; with a job, `job` is bound and the type's script functions are callable.
pub fn eval(
    scripts: &Scripts,
    ctx: &Arc<JobCtx>,
    snippet: &str,
    origin: &str,
    job: Option<Job>,
) -> Result<Dynamic, JobError> {
    on_script_thread(|| eval_here(scripts, ctx, snippet, origin, job))
        .unwrap_or_else(|e| Err(thread_error(origin, e)))
}

fn eval_here(
    scripts: &Scripts,
    ctx: &Arc<JobCtx>,
    snippet: &str,
    origin: &str,
    job: Option<Job>,
) -> Result<Dynamic, JobError> {
    let engine = new_engine(scripts, ctx);
    let mut scope = Scope::new();
    let kind = job.as_ref().map(|j| j.spec.kind);
    if let Some(job) = job {
        scope.push_constant("job", job);
    }
    let mut ast = engine
        .compile_with_scope(&scope, snippet)
        .map_err(|e| JobError::Compile(report::parse_error(origin, &e)))?;
    if let Some(kind) = kind {
        let (script, _) = compile_entry(&engine, scripts, kind)?;
        ast = script.merge(&ast);
    }
    ast.set_source(origin.to_string());
    engine
        .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
        .map_err(|e| JobError::Runtime(report::runtime_error(origin, &e)))
}

/// Compiles every script in effect (with imports) and confirms each type defines `build`; returns the problems.
pub fn check(scripts: &Scripts, settings: &Settings) -> Vec<String> {
    let engine = dry_engine(scripts, settings);
    let mut problems = Vec::new();
    for name in scripts.names() {
        let source = match scripts.load(&name) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                problems.push(format!("{}: {e:#}", scripts.dir().join(&name).display()));
                continue;
            }
        };
        let ast = match engine.compile(&source.text) {
            Ok(ast) => ast,
            Err(e) => {
                problems.push(report::parse_error(&source.origin, &e));
                continue;
            }
        };
        let is_entry = Kind::ALL.iter().any(|k| name == format!("{k}.rhai"));
        if !is_entry {
            continue;
        }
        if !commands(&ast).iter().any(|c| c == "build") {
            problems.push(format!(
                "{}: defines no `fn build(job)`; every type's script needs one",
                source.origin
            ));
        }
        if let Err(e) = engine.compile_into_self_contained(&Scope::new(), &source.text) {
            let rendered = report::runtime_error(&source.origin, &e);
            problems.push(locate_import(
                &source.text,
                &source.origin,
                &rendered.headline,
            ));
        }
    }
    problems
}

/// Import errors carry no position; point at the `import` line that names the missing module.
fn locate_import(text: &str, origin: &str, headline: &str) -> String {
    let has_position = headline
        .strip_prefix(origin)
        .and_then(|r| r.strip_prefix(':'))
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
    if !has_position {
        for (i, line) in text.lines().enumerate() {
            if let Some(col) = line.find("import ")
                && headline.contains(
                    line[col + 7..]
                        .trim()
                        .trim_end_matches(';')
                        .split(" as ")
                        .next()
                        .unwrap_or("")
                        .trim_matches('"'),
                )
            {
                let message = headline
                    .strip_prefix(&format!("{origin}: "))
                    .unwrap_or(headline);
                return format!("{origin}:{}:{}: {message}", i + 1, col + 1);
            }
        }
    }
    headline.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn settings() -> Settings {
        crate::drain::settings(&crate::config::Config::default())
    }

    #[test]
    fn the_api_table_matches_what_is_registered_and_the_readme() {
        let ctx = JobCtx::new(
            settings(),
            crate::supervise::Cancel::new(),
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
