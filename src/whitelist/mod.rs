//! Tailwind whitelist extraction: finds the Tailwind classes a built site uses and writes them as
//! `{"safelist": [...]}`; it must not run builds, pick tenants or know about Rhai (callers do that).
//!
//! # Inputs
//! Every `*.html`, `*.js` and `*.mjs` file under `dist` (recursively, symlinked directories are not
//! followed), plus source files under each `extra` directory: `*.go` and `*.templ` (Go string literals),
//! `*.js`, `*.mjs`, `*.cjs`, `*.jsx`, `*.ts`, `*.tsx` (JS string and template literals) and `*.html`,
//! `*.htm`, `*.gohtml`, `*.tmpl` (as HTML). A file that cannot be read or is not UTF-8 is skipped with a
//! warning naming it. Files are read one at a time per worker, so memory follows the largest file.
//!
//! # Where candidates come from
//! - HTML: every token of every `class`/`className` attribute (all duplicates, entities decoded), and
//!   `<script>` bodies read as JavaScript (as HTML when the script type names `html` or `template`).
//! - JavaScript: the body of every string literal (`"`, `'`) and every chunk of every template literal,
//!   split at `${...}` holes (holes are scanned as code, so nested literals count too). This covers JSX
//!   `className`, Astro's `addAttribute(..., "class")`, `class:list` arrays, object-map keys and values
//!   given as strings, and markup kept in Astro's template literals. Comments and regular expressions are
//!   skipped. Escapes (`\"`, `\n`, `\u002F`) and HTML entities (`&amp;`, `&#39;`) are decoded first.
//! - Go: interpreted (`"..."`) and raw (`` `...` ``) string literals.
//!
//! A body is cut into candidates at whitespace and at bytes no class holds outside brackets (quotes,
//! `=`, `<`, `>`, braces, commas, `;`): inside `[...]`, and `(...)` after `-` or `/`, anything but
//! whitespace is kept. Leading dots and trailing dots or colons are dropped (`.hidden` in a selector,
//! `flex.` in prose). So `text-${tone}-500` gives `text-` and `-500`, which the shape test rejects.
//! Markup inside a literal (`<p class="...">`) has its class attribute values treated like HTML ones.
//!
//! Bare words (`flex`, `hidden`, `resize`) are ordinary words too, so outside class attributes they are
//! kept only from a class-like literal: one where at least half the candidates pass the shape test
//! (`"flex resize p-2"`, `'hidden'`), and not a lone word the code uses as a value: a `case` label, an
//! operand of `==`, `===`, `!=` or `!==`, or the event name of `addEventListener(...)`. Structured
//! candidates (with a variant, value, modifier, `!` or brackets) are kept from any literal.
//!
//! # The contract: what has the shape of a Tailwind class ([`is_tailwind_class`])
//! `[!] (variant:)* [!] [-] utility [/modifier] [!]`, at most 200 bytes:
//! - Important: one `!`, at the end (Tailwind 4) or at the start of the class or of the utility
//!   (Tailwind 3: `!p-4`, `md:!p-4`); never two.
//! - Variants, each ending in `:`, split outside brackets: the known state, pseudo-element and media names
//!   (`hover`, `focus-visible`, `first`, `odd`, `disabled`, `open`, `before`, `placeholder`, `dark`,
//!   `motion-safe`, `print`, `rtl`, `starting`, ...); breakpoints `xs`..`9xl` with optional `max-`/`min-`,
//!   and `min-[...]`/`max-[...]`; container queries `@sm`, `@max-md`, `@[400px]`; `*` and `**`;
//!   `group-X`/`peer-X`/`not-X`/`has-X`/`in-X` where X is a variant or `[...]`, with an optional `/name`;
//!   `aria-X`, `data-X`, `supports-X` where X is a lowercase word or `[...]`; `nth-N`, `nth-last-N`,
//!   `nth-of-type-N`, `nth-last-of-type-N`; arbitrary variants `[...]` that contain `&` or start with `@`.
//! - Arbitrary property: `[name:value]` where name is a custom property (`--gutter`) or a CSS property
//!   name (`mask-type`), optionally with a `/modifier`.
//! - Bare utilities: a fixed vocabulary of Tailwind's value-less utilities (`flex`, `border`, `rounded`,
//!   `shadow`, `transition`, `grow`, `container`, `sr-only`, `tabular-nums`, ...) and the `group`, `peer`
//!   and `dark` markers (which take no variants: `md:group` generates nothing). Any other bare word is
//!   rejected, which is what rejects JS keywords, prose and identifiers.
//! - Functional utilities: a known root (`bg`, `text`, `max-w`, `grid-cols`, `translate-x`, `mask`, ...,
//!   matched longest first), a `-`, then a value: dash-joined lowercase words and numbers (decimals
//!   `1.5`, percentages `10%`, a fraction `1/2`, sizes `2xl`), optionally ending in an arbitrary value
//!   `[...]` (balanced, no whitespace) or a variable shorthand `(--name)`/`(type:--name)`. Position and
//!   spacing roots (`top`, `inset-x`, `start`, `p`, `mt`, `gap`, `space-x`, `z`, `translate-y`, ...) take
//!   only numbers, fractions, `px`, `full`, `auto`, `reverse` or arbitrary values, so placement words
//!   like `top-left` are no classes.
//! - Negative: a leading `-` before a functional utility whose value ends in a number, fraction, `px`,
//!   `full` or an arbitrary value (`-mt-4`, `-translate-y-1/2`; not `-mx-auto`).
//! - Modifier: `/` then a number, a lowercase word, `[...]` or `(--name)` (`bg-red-500/80`, `text-lg/tight`).
//! - Rejected even when they fit the above: CSS property names (`font-size`, `stroke-linecap`,
//!   `text-align`), SVG attribute names (`accent-height`), Content-Security-Policy directives
//!   (`font-src`), HTTP header names (`content-type`, `cache-control`), CSS keyword values and transform
//!   axis names that start like a root (`border-box`, `space-between`, `row-reverse`, `translate-x`),
//!   unless Tailwind has a utility by that exact name (`flex-wrap`, `border-collapse`). Uppercase outside
//!   brackets, URLs (`https:` is no variant), paths (`/a/b`), file names (`.` only between digits) and
//!   plain numbers never fit.
//!
//! Known limits: classes built at run time (`bg-${color}-600`) cannot be found; custom utilities, theme
//! keys outside the grammar and variants defined in CSS (`@utility`, `@custom-variant`) are unknown; a
//! value the grammar allows but Tailwind does not define (`size-screen`) is kept; a lone bare word in a
//! plain assignment of runtime code (`u="blur"`) is kept. Markup templates nested more than 8 deep
//! (`<script type="text/html">` inside one another) are not read.

mod scan;
mod shape;
mod vocab;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use rustc_hash::FxHashSet;
use serde::Serialize;

use scan::{Lang, Piece};
pub use shape::is_tailwind_class;

/// What an extraction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Classes in the result.
    pub classes: usize,
    /// Files scanned.
    pub files: usize,
    /// Files skipped (unreadable or not UTF-8).
    pub skipped: usize,
    /// Bytes scanned.
    pub bytes: u64,
    /// Wall time of the extraction (and write) in milliseconds.
    pub elapsed_ms: u64,
    /// False when the output already had this exact content.
    pub written: bool,
}

/// Extracts the classes under `dist` (and the source files under `extra`) and writes `out` atomically.
pub fn extract_to_file(dist: &Path, out: &Path, extra: &[PathBuf]) -> Result<Stats> {
    extract_to_files(dist, &[out.to_path_buf()], extra).map(|(stats, _)| stats)
}

/// Extracts the classes once and writes the same safelist to every path in `outs` (one per tenant);
/// returns the stats and, per path, whether it was written (false: it already had this content).
pub fn extract_to_files(
    dist: &Path,
    outs: &[PathBuf],
    extra: &[PathBuf],
) -> Result<(Stats, Vec<bool>)> {
    let started = Instant::now();
    for out in outs {
        check_out_dir(out)?;
    }
    let (classes, mut stats) = extract(dist, extra)?;
    if classes.is_empty() {
        tracing::warn!(
            "no tailwind classes found under {}; the safelist will be empty",
            dist.display()
        );
    }
    let written = outs
        .iter()
        .map(|out| write_safelist(out, &classes))
        .collect::<Result<Vec<bool>>>()?;
    stats.written = written.iter().any(|w| *w);
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((stats, written))
}

/// Extracts the sorted, deduplicated class set (no writing).
pub fn extract(dist: &Path, extra: &[PathBuf]) -> Result<(BTreeSet<String>, Stats)> {
    let started = Instant::now();
    require_dir(
        dist,
        "dist directory",
        "build the frontend first or pass the right path",
    )?;
    for dir in extra {
        require_dir(
            dir,
            "extra source directory",
            "pass an existing directory or drop it",
        )?;
    }
    let roots = std::iter::once((dist, dist_lang as LangOf))
        .chain(extra.iter().map(|d| (d.as_path(), extra_lang as LangOf)));
    // Walking is fed straight to the workers, so listing overlaps reading and no file list is kept.
    let found = roots
        .flat_map(|(root, lang_of)| {
            walkdir::WalkDir::new(root)
                .follow_links(false)
                .into_iter()
                .filter_map(move |entry| job(root, lang_of, entry))
        })
        .par_bridge()
        .fold(Worker::default, |mut w, job| {
            match job {
                Job::File(path, lang) => w.file(&path, lang),
                Job::Unlisted(why) => w.skipped.push(why),
            }
            w
        })
        .reduce(Worker::default, Worker::merge);

    let mut skipped = found.skipped;
    // Warnings are raised here, on the caller's thread and in path order, not from the workers.
    skipped.sort();
    for why in &skipped {
        tracing::warn!("{why}");
    }
    let classes: BTreeSet<String> = found.classes.into_iter().collect();
    let stats = Stats {
        classes: classes.len(),
        files: found.files,
        skipped: skipped.len(),
        bytes: found.bytes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        written: false,
    };
    Ok((classes, stats))
}

fn require_dir(dir: &Path, what: &str, hint: &str) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{what} {} is not a directory; {hint}", dir.display()),
        Err(e) => bail!("{what} {} not found ({e}); {hint}", dir.display()),
    }
}

fn dist_lang(path: &Path) -> Option<Lang> {
    match path.extension()?.to_str()? {
        "html" => Some(Lang::Html),
        "js" | "mjs" => Some(Lang::Js),
        _ => None,
    }
}

fn extra_lang(path: &Path) -> Option<Lang> {
    match path.extension()?.to_str()? {
        "go" | "templ" => Some(Lang::Go),
        "js" | "mjs" | "cjs" | "jsx" | "ts" | "tsx" => Some(Lang::Js),
        "html" | "htm" | "gohtml" | "tmpl" => Some(Lang::Html),
        _ => None,
    }
}

/// Picks the file type to scan a path as, or `None` to leave it alone.
type LangOf = fn(&Path) -> Option<Lang>;

/// One walk result for the workers.
enum Job {
    /// A file to scan.
    File(PathBuf, Lang),
    /// An entry that could not be listed, and why.
    Unlisted(String),
}

/// Turns one walk entry under `root` into a job: a file `lang_of` accepts, or a listing error.
fn job(root: &Path, lang_of: LangOf, entry: walkdir::Result<walkdir::DirEntry>) -> Option<Job> {
    let entry = match entry {
        Ok(e) => e,
        Err(e) => {
            let at = e
                .path()
                .map_or_else(|| root.display().to_string(), |p| p.display().to_string());
            return Some(Job::Unlisted(format!(
                "skipping {at}: cannot list it ({e}); check its permissions"
            )));
        }
    };
    let ft = entry.file_type();
    // A symlink to a file is read; a symlink to a directory is not descended (walkdir reports it as a
    // symlink, not a directory, when links are not followed).
    let is_file =
        ft.is_file() || ft.is_symlink() && fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
    if !is_file {
        return None;
    }
    let lang = lang_of(entry.path())?;
    Some(Job::File(entry.into_path(), lang))
}

/// One share of the work (rayon folds files into several of these and merges them): classes and counters.
#[derive(Default)]
struct Worker {
    classes: FxHashSet<String>,
    files: usize,
    /// Why files were skipped, one line each.
    skipped: Vec<String>,
    bytes: u64,
}

/// Per-thread scratch kept across files: the read buffer, so at most one file per thread is in memory,
/// and the candidates that failed the shape test, so repeated prose and code words are judged once.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    failed: FxHashSet<String>,
}

/// Size at which the `failed` cache starts over, so unique junk cannot grow memory with the corpus.
const FAILED_CAP: usize = 32_768;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

impl Worker {
    fn file(&mut self, path: &Path, lang: Lang) {
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { buf, failed } = scratch;
            buf.clear();
            let read = File::open(path).and_then(|mut f| {
                // Exact capacity: a doubling read of the largest file would hold up to twice its size.
                let len = f.metadata().map_or(0, |m| m.len() as usize);
                buf.reserve_exact(len + 1);
                f.read_to_end(buf)
            });
            if let Err(e) = read {
                self.skipped.push(format!(
                    "skipping {}: cannot read it ({e}); check its permissions",
                    path.display()
                ));
                return;
            }
            let text = match std::str::from_utf8(buf) {
                Ok(text) => text,
                Err(e) => {
                    self.skipped.push(format!(
                        "skipping {}: not UTF-8 ({e}); re-save it as UTF-8 to have it scanned",
                        path.display()
                    ));
                    return;
                }
            };
            self.files += 1;
            self.bytes += text.len() as u64;
            let mut bare = Vec::new();
            scan::scan(text, lang, &mut |piece, kind| {
                self.piece(piece, kind, failed, &mut bare)
            });
        });
    }

    /// Judges the candidates of one piece of text and keeps the classes. `bare` is scratch space: where in
    /// `text` the bare words that passed lie, kept until the piece is known to be class-like.
    fn piece(
        &mut self,
        text: &str,
        kind: Piece,
        failed: &mut FxHashSet<String>,
        bare: &mut Vec<(usize, usize)>,
    ) {
        bare.clear();
        let (mut passed, mut total) = (0, 0);
        scan::candidates(text, &mut |tok| {
            total += 1;
            if is_bare(tok) {
                // Bare words need no cache: the test is one lookup in the bare-utility vocabulary.
                if is_tailwind_class(tok) {
                    // `tok` is a slice of `text`; keep its place, not the borrow.
                    bare.push((tok.as_ptr() as usize - text.as_ptr() as usize, tok.len()));
                    passed += 1;
                }
            } else if self.judge(tok, failed) {
                passed += 1;
            }
        });
        // A literal is a class list when most of its words are classes; otherwise (prose, event-name lists,
        // code strings) only structured tokens count, since bare words like `resize` are ordinary words there.
        let trust_bare = match kind {
            Piece::Class => true,
            Piece::Literal { value } => passed * 2 >= total && !(value && total == 1),
        };
        if trust_bare {
            for &(start, len) in bare.iter() {
                let tok = &text[start..start + len];
                if !self.classes.contains(tok) {
                    self.classes.insert(tok.to_owned());
                }
            }
        }
    }

    /// Tests a structured candidate, remembering failures; classes go straight into the result.
    fn judge(&mut self, tok: &str, failed: &mut FxHashSet<String>) -> bool {
        if self.classes.contains(tok) {
            return true;
        }
        if failed.contains(tok) {
            return false;
        }
        if is_tailwind_class(tok) {
            self.classes.insert(tok.to_owned());
            return true;
        }
        if failed.len() >= FAILED_CAP {
            failed.clear();
        }
        failed.insert(tok.to_owned());
        false
    }

    fn merge(self, other: Worker) -> Worker {
        let (mut big, small) = if self.classes.len() >= other.classes.len() {
            (self, other)
        } else {
            (other, self)
        };
        big.classes.extend(small.classes);
        big.files += small.files;
        big.skipped.extend(small.skipped);
        big.bytes += small.bytes;
        big
    }
}

/// A bare word (`flex`, `dark`): no variant, value, modifier, important marker or brackets.
fn is_bare(tok: &str) -> bool {
    tok.bytes().all(|b| b.is_ascii_lowercase())
}

/// The directory `out` goes into, which must exist: the caller decides which tenant directories do.
fn check_out_dir(out: &Path) -> Result<&Path> {
    if out.file_name().is_none() || out.is_dir() {
        bail!(
            "output path {} is not a file path; pass one such as config/default/tailwindWhitelist.json",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "output directory {} does not exist; create it (the tenant's config directory) first",
            parent.display()
        );
    }
    Ok(parent)
}

/// Writes {"safelist": [...]} with two-space indent via temp file + rename in the same dir (fsync file, rename,
/// fsync dir); leaves the file untouched when the content is unchanged; returns whether it wrote.
pub fn write_safelist(out: &Path, classes: &BTreeSet<String>) -> Result<bool> {
    let dir = check_out_dir(out)?;
    #[derive(Serialize)]
    struct Safelist<'a> {
        safelist: &'a BTreeSet<String>,
    }
    let mut json = serde_json::to_vec_pretty(&Safelist { safelist: classes })
        .context("serializing the safelist")?;
    json.push(b'\n');
    if fs::read(out).is_ok_and(|old| old == json) {
        return Ok(false);
    }

    let name = out.file_name().expect("checked above").to_string_lossy();
    // Unique per process and call, so concurrent writers never share a temp file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| {
                format!(
                    "cannot create {}; check the directory's permissions",
                    tmp.display()
                )
            })?;
        f.write_all(&json)
            .with_context(|| format!("cannot write {}; check free disk space", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot flush {} to disk", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, out)
            .with_context(|| format!("cannot replace {} with {}", out.display(), tmp.display()))?;
        // The rename is durable only once the directory entry is on disk.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot flush directory {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Entry points for the fuzz targets in `fuzz/` (the scanner is otherwise private); not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::BTreeSet;

    use rustc_hash::FxHashSet;

    pub use super::scan::{Lang, Piece, candidates, decode_entities, scan};

    /// The classes the real per-file pipeline (scanner, shape test, bare-word trust) keeps from one text.
    pub fn classes_in(text: &str, lang: Lang) -> BTreeSet<String> {
        let mut worker = super::Worker::default();
        let mut failed = FxHashSet::default();
        let mut bare = Vec::new();
        scan(text, lang, &mut |piece, kind| {
            worker.piece(piece, kind, &mut failed, &mut bare)
        });
        worker.classes.into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
