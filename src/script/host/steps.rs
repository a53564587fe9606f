//! Owns `step()` and `parallel()`: named, timed steps recorded for the history and the failure report,
//! and branches run on threads of their own with a cancel scope each, so that the first failure stops
//! the others. Each branch runs in a `branch` span whose `name` field log lines are labelled with.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, Map, NativeCallContext, Position};

use super::ctx::{Branch, JobCtx, current_branch, enter_branch, step_open};
use super::{Res, is_terminated};

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn(
        "step",
        move |nctx: NativeCallContext, name: &str, f: FnPtr| step(&c, &nctx, name, &f),
    );
    let c = ctx.clone();
    engine.register_fn("parallel", move |nctx: NativeCallContext, branches: Map| {
        parallel(&c, &nctx, branches)
    });
}

fn step(ctx: &JobCtx, nctx: &NativeCallContext, name: &str, f: &FnPtr) -> Res<Dynamic> {
    if name.trim().is_empty() || name.contains('\n') {
        return Err("step(): the step name must be a non-empty single line".into());
    }
    let idx = ctx.open_step(name);
    let empty = tracing::field::Empty;
    let span = tracing::info_span!("step", name = %name, outcome = empty, figures = empty);
    let _entered = span.enter();
    tracing::info!("step `{name}` started");
    let started = Instant::now();
    let result = {
        let _open = step_open(idx);
        f.call_within_context::<Dynamic>(nctx, ())
    };
    let cancelled = result.as_ref().is_err_and(|e| is_terminated(e));
    let record = ctx.close_step(idx, started.elapsed(), result.is_ok(), cancelled);
    let figures = record.figures();
    // A step stopped because a sibling failed (or the engine is stopping) did not fail itself.
    let outcome = match &result {
        Ok(_) => {
            tracing::info!("step `{name}` done ({figures})");
            ctx.forget_failures_from(idx);
            "done"
        }
        Err(_) if cancelled => {
            tracing::warn!("step `{name}` cancelled ({figures})");
            "cancelled"
        }
        Err(e) => {
            // The message itself is logged once, with its file and line, when the job fails.
            tracing::error!("step `{name}` failed ({figures})");
            ctx.fail_step(idx, e.to_string());
            "failed"
        }
    };
    // The same end as fields, for the progress display (recorded after the line, so it shows them once).
    span.record("outcome", outcome);
    span.record("figures", figures.as_str());
    result.map_err(|e| keep_position(e, format!("step `{name}`"), nctx.call_position()))
}

/// Rhai moves the position of a system error (a limit hit, the job stopped) to each enclosing call site
/// in turn, so one raised in a command function ends with none at all. Wrapped in a frame where a host
/// function sees it, it keeps the line of that call.
fn keep_position(e: Box<EvalAltResult>, what: String, pos: Position) -> Box<EvalAltResult> {
    if e.is_system_exception() {
        Box::new(EvalAltResult::ErrorInFunctionCall(
            what,
            String::new(),
            e,
            pos,
        ))
    } else {
        e
    }
}

/// The branches of one `parallel` call as closures, refusing anything else.
fn branch_fns(branches: Map) -> Res<Vec<(String, FnPtr)>> {
    branches
        .into_iter()
        .map(|(key, value)| match value.clone().try_cast::<FnPtr>() {
            Some(fp) => Ok((key.to_string(), fp)),
            None => Err(format!(
                "parallel(): branch `{key}` must be a function like `|| ...`, got {}",
                value.type_name()
            )
            .into()),
        })
        .collect()
}

/// The first failure of a `parallel` call: it cancels the other branches and is what the call throws.
struct First<'a> {
    slot: Mutex<Option<(String, Box<EvalAltResult>)>>,
    group: &'a crate::cancel::Cancel,
}

impl First<'_> {
    fn fail(&self, key: &str, err: Box<EvalAltResult>) {
        let mut slot = self.slot.lock().unwrap();
        if slot.is_none() {
            *slot = Some((key.to_string(), err));
            self.group
                .cancel(&format!("parallel branch `{key}` failed"));
        }
    }
}

fn parallel(ctx: &JobCtx, nctx: &NativeCallContext, branches: Map) -> Res<Map> {
    ctx.refuse_in_check("parallel")?;
    let fns = branch_fns(branches)?;
    let _slots = ctx.reserve_branches(fns.len())?;
    let parent = current_branch();
    let group = parent
        .cancel
        .clone()
        .unwrap_or_else(|| ctx.cancel.clone())
        .child();
    let first = First {
        slot: Mutex::new(None),
        group: &group,
    };
    let span = tracing::Span::current();
    let results: Vec<(String, Option<Dynamic>)> = std::thread::scope(|s| {
        let handles: Vec<_> = fns
            .iter()
            .map(|(key, fp)| {
                let (parent, first, span) = (&parent, &first, &span);
                let spawned = std::thread::Builder::new()
                    .name(format!("branch {key}"))
                    .stack_size(crate::script::SCRIPT_STACK)
                    .spawn_scoped(s, move || {
                        let _entered = span.enter();
                        let label = if parent.label.is_empty() {
                            key.clone()
                        } else {
                            format!("{}/{key}", parent.label)
                        };
                        let branch_span = tracing::info_span!("branch", name = %label);
                        let _in_branch = branch_span.enter();
                        enter_branch(Branch {
                            label,
                            cancel: Some(first.group.clone()),
                            steps: parent.steps.clone(),
                        });
                        match fp.call_within_context::<Dynamic>(nctx, ()) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                first.fail(key, e);
                                None
                            }
                        }
                    });
                (key, spawned)
            })
            .collect();
        handles
            .into_iter()
            .map(|(key, spawned)| {
                let value = match spawned {
                    Ok(h) => h.join().expect("parallel branch thread panicked"),
                    Err(e) => {
                        let err =
                            format!("parallel(): cannot start a thread for branch `{key}`: {e}");
                        first.fail(key, err.into());
                        None
                    }
                };
                (key.clone(), value)
            })
            .collect()
    });
    if let Some((key, err)) = first.slot.into_inner().unwrap() {
        return Err(Box::new(EvalAltResult::ErrorInFunctionCall(
            format!("parallel branch `{key}`"),
            String::new(),
            err,
            nctx.call_position(),
        )));
    }
    Ok(results
        .into_iter()
        .map(|(k, v)| (k.into(), v.unwrap_or(Dynamic::UNIT)))
        .collect())
}
