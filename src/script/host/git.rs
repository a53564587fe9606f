//! Owns the git helpers: what is checked out, what changed, and a digest of local edits; each runs one
//! quiet `git` query in the repository through `run_program`, and none changes the repository.

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, Map};
use serde::Serialize;

use super::ctx::JobCtx;
use super::options::{Opts, RunOptions};
use super::process::run_program;
use super::{Res, to_map};

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    const CHANGED: [&str; 3] = ["status", "--porcelain", "--untracked-files=no"];
    let c = ctx.clone();
    engine.register_fn("git_is_clean", move |dir: &str| -> Res<bool> {
        Ok(git_query(&c, "git_is_clean", dir, &CHANGED)?
            .trim()
            .is_empty())
    });
    let c = ctx.clone();
    engine.register_fn("git_head", move |dir: &str| -> Res<String> {
        let out = git_query(&c, "git_head", dir, &["rev-parse", "HEAD"])?;
        Ok(out.trim().to_string())
    });
    let c = ctx.clone();
    engine.register_fn("git_changes", move |dir: &str| -> Res<Array> {
        let out = git_query(&c, "git_changes", dir, &CHANGED)?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Dynamic::from(l.to_string()))
            .collect())
    });
    let c = ctx.clone();
    engine.register_fn("git_local_changes", move |dir: &str| {
        git_local_changes(&c, dir, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("git_local_changes", move |dir: &str, opts: Map| {
        git_local_changes(&c, dir, &opts)
    });
}

/// The output of `git ARGS` in `dir`; throws when git fails.
fn git_query(ctx: &JobCtx, f: &str, dir: &str, args: &[&str]) -> Res<String> {
    ctx.refuse_in_check(f)?;
    if !std::path::Path::new(dir).is_dir() {
        return Err(format!("{f}(): {dir} does not exist").into());
    }
    let args = args.iter().map(|a| a.to_string()).collect();
    Ok(run_program(ctx, "git", args, RunOptions::query().in_dir(dir))?.stdout)
}

/// What `git_local_changes` returns.
#[derive(Serialize)]
struct LocalChanges {
    digest: String,
    files: Vec<String>,
}

/// What differs in a work tree from its HEAD commit: changed tracked files and untracked files that
/// `.gitignore` does not cover, minus the top-level names in `exclude` (a name also covers `NAME.*`, so
/// `dist` covers `dist.new` and `dist.prev`). Returns `#{digest, files}`: a SHA-256 over each path and the
/// SHA-256 of its content (or its deletion), the same for the same edits, and the paths.
fn git_local_changes(ctx: &JobCtx, dir: &str, opts: &Map) -> Res<Map> {
    use sha2::Digest;
    let o = Opts::new("git_local_changes", opts, &["exclude"])?;
    let exclude = o.strings("exclude", "an array of top-level names")?;
    let excluded = |path: &str| {
        let first = path.split('/').next().unwrap_or(path);
        exclude.iter().any(|x| {
            first == x
                || first
                    .strip_prefix(x.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    };
    let list = |args: &[&str]| -> Res<Vec<String>> {
        let out = git_query(ctx, "git_local_changes", dir, args)?;
        // Output is captured by lines: the NUL-separated list comes back with a newline at its end.
        Ok(out
            .strip_suffix('\n')
            .unwrap_or(&out)
            .split('\0')
            .filter(|p| !p.is_empty() && !excluded(p))
            .map(str::to_string)
            .collect())
    };
    let mut files = list(&["diff", "HEAD", "--name-only", "--no-renames", "-z"])?;
    files.extend(list(&["ls-files", "--others", "--exclude-standard", "-z"])?);
    files.sort();
    files.dedup();
    let mut digest = sha2::Sha256::new();
    for rel in &files {
        digest.update(rel.as_bytes());
        digest.update([0]);
        digest.update(content_id(&std::path::Path::new(dir).join(rel))?.as_bytes());
        digest.update([0]);
    }
    to_map(&LocalChanges {
        digest: format!("{:x}", digest.finalize()),
        files,
    })
}

/// What a changed path holds, for the digest: its content's SHA-256, its link target, or what it is.
fn content_id(path: &std::path::Path) -> Res<String> {
    use sha2::Digest;
    Ok(match std::fs::symlink_metadata(path) {
        Err(_) => "deleted".to_string(),
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(path)
            .map(|t| format!("symlink {}", t.display()))
            .unwrap_or_default(),
        Ok(m) if m.is_file() => {
            let unreadable =
                |e| format!("git_local_changes(): cannot read {}: {e}", path.display());
            let mut h = sha2::Sha256::new();
            let mut f = std::fs::File::open(path).map_err(unreadable)?;
            std::io::copy(&mut f, &mut h).map_err(unreadable)?;
            format!("{:x}", h.finalize())
        }
        Ok(_) => "other".to_string(),
    })
}
