//! Owns what runs a script for the engine: compiling a type's entry script once for a trigger file
//! (`Compiled`), checking that it defines a command, running the command for a job, calling its
//! notification hooks, `eval` snippets and `check` of every script; it never touches the state directory
//! or decides a trigger's fate.

use std::sync::Arc;

use rhai::{AST, Dynamic, Engine, Scope};

use super::sandbox::thread_error;
use super::sources::Source;
use super::{Job, JobCtx, JobError, Scripts, Settings, new_engine, on_script_thread, report};
use crate::cancel::Cancel;
use crate::trigger::Kind;

/// How long a notification hook may take.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A type's entry script, compiled once for a trigger file: its jobs are checked, run and given their
/// notification hooks from this one AST. `import`s resolve when the script runs, so an edited module
/// applies from the next job and an edited entry script from the next trigger file.
#[derive(Clone)]
pub struct Compiled {
    ast: Arc<AST>,
    source: Arc<Source>,
}

impl Compiled {
    /// Compiles the entry script of `kind` (the operator's copy, else the built-in one).
    pub fn new(scripts: &Scripts, settings: &Settings, kind: Kind) -> Result<Compiled, JobError> {
        let engine = dry_engine(scripts, settings);
        let (ast, source) = compile_entry(&engine, scripts, kind)?;
        Ok(Compiled {
            ast: Arc::new(ast),
            source: Arc::new(source),
        })
    }

    /// Confirms the script defines `command`, without running anything (`rollback`: `fn rollback(job,
    /// release)`).
    pub fn check_command(&self, command: &str) -> Result<(), JobError> {
        let available = commands(&self.ast);
        let defined = if command == crate::trigger::ROLLBACK {
            self.defines(command, 2)
        } else {
            available.iter().any(|c| c == command)
        };
        if defined {
            Ok(())
        } else {
            Err(JobError::NoCommand {
                command: command.to_string(),
                origin: self.source.origin.clone(),
                available,
            })
        }
    }

    fn defines(&self, function: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == function && f.params.len() == arity)
    }
}

/// An engine for compiling and checking: host functions that act refuse to run.
fn dry_engine(scripts: &Scripts, settings: &Settings) -> Engine {
    let ctx = JobCtx::new(
        settings.clone(),
        Cancel::new(),
        std::time::Duration::from_secs(60),
        true,
    );
    new_engine(scripts, &ctx)
}

/// Compiles the entry script of a type; returns the AST and its source.
fn compile_entry(
    engine: &Engine,
    scripts: &Scripts,
    kind: Kind,
) -> Result<(AST, Source), JobError> {
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
    Ok((ast, source))
}

/// The commands (one-parameter public functions) a script defines.
fn commands(ast: &AST) -> Vec<String> {
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

/// Compiles a type's script and confirms it defines `command` (for a trigger about to be written).
pub fn check_command(
    scripts: &Scripts,
    settings: &Settings,
    kind: Kind,
    command: &str,
) -> Result<(), JobError> {
    Compiled::new(scripts, settings, kind)?.check_command(command)
}

/// Runs `f` on a script thread; a failure of the thread itself becomes an error of `origin`.
fn on_thread<T: Send>(
    origin: &str,
    f: impl FnOnce() -> Result<T, JobError> + Send,
) -> Result<T, JobError> {
    on_script_thread(f).unwrap_or_else(|e| Err(thread_error(origin, e)))
}

/// Runs the job's command function from its type's compiled script. What it returns is dropped on the
/// script's thread: it may be nested deeper than another thread's stack could take.
pub fn run_job(
    scripts: &Scripts,
    ctx: &Arc<JobCtx>,
    script: &Compiled,
    job: Job,
) -> Result<(), JobError> {
    let origin = script.source.origin.clone();
    on_thread(&origin, || {
        let engine = new_engine(scripts, ctx);
        let command = job.spec.command.clone();
        script.check_command(&command)?;
        engine
            .call_fn::<Dynamic>(&mut Scope::new(), &script.ast, &command, (job,))
            .map(drop)
            .map_err(|e| {
                let mut rendered = report::runtime_error(&origin, &e);
                report::locate_in_fn(&mut rendered, &origin, &script.source.text, &command);
                JobError::Runtime(rendered)
            })
    })
}

/// Runs a rollback job: the script's `fn rollback(job, release)` with the release to put back (its record).
pub fn run_rollback(
    scripts: &Scripts,
    ctx: &Arc<JobCtx>,
    script: &Compiled,
    job: Job,
    release: Dynamic,
) -> Result<(), JobError> {
    let origin = script.source.origin.clone();
    on_thread(&origin, || {
        let engine = new_engine(scripts, ctx);
        script.check_command(crate::trigger::ROLLBACK)?;
        engine
            .call_fn::<Dynamic>(
                &mut Scope::new(),
                &script.ast,
                crate::trigger::ROLLBACK,
                (job, release),
            )
            .map(drop)
            .map_err(|e| {
                let mut rendered = report::runtime_error(&origin, &e);
                report::locate_in_fn(
                    &mut rendered,
                    &origin,
                    &script.source.text,
                    crate::trigger::ROLLBACK,
                );
                JobError::Runtime(rendered)
            })
    })
}

/// Calls a notification hook (`on_failure`, `on_success`, `on_recovery`) of the job's type script if it
/// defines one; `Ok(false)` when it does not. The hook gets its own short deadline.
pub fn call_hook(
    scripts: &Scripts,
    settings: &Settings,
    script: &Compiled,
    job: &Job,
    hook: &str,
    args: Vec<Dynamic>,
) -> Result<bool, JobError> {
    let origin = &script.source.origin;
    if !script.defines(hook, args.len() + 1) {
        return Ok(false);
    }
    on_thread(origin, || {
        let ctx = JobCtx::new(settings.clone(), Cancel::new(), HOOK_TIMEOUT, false);
        let engine = new_engine(scripts, &ctx);
        let mut all = vec![Dynamic::from(job.clone())];
        all.extend(args);
        engine
            .call_fn::<Dynamic>(&mut Scope::new(), &script.ast, hook, all)
            .map(|_| true)
            .map_err(|e| JobError::Runtime(report::runtime_error(origin, &e)))
    })
}

/// Runs a snippet as top-level code; with a job, `job` is bound and the type's script functions are callable.
pub fn eval(
    scripts: &Scripts,
    ctx: &Arc<JobCtx>,
    snippet: &str,
    origin: &str,
    job: Option<Job>,
) -> Result<Dynamic, JobError> {
    on_thread(origin, || {
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
    })
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
