//! Unit tests of the whitelist module: the shape contract rule by rule, the scanners on tricky inputs,
//! and file handling (walking, skipping, errors, atomic writes); they need no network or corpus.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::fuzzing::classes_in;
use super::scan::Lang;
use super::*;

fn accepts(tokens: &[&str]) {
    for t in tokens {
        assert!(is_tailwind_class(t), "{t} should be a class");
    }
}

fn rejects(tokens: &[&str]) {
    for t in tokens {
        assert!(!is_tailwind_class(t), "{t} should not be a class");
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn write(dir: &Path, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    path
}

// ---- the shape contract ----

#[test]
fn variants_known_functional_and_arbitrary() {
    accepts(&[
        "md:flex",
        "hover:bg-red-500",
        "dark:md:hover:text-white",
        "group-hover:underline",
        "peer-checked:bg-blue-500",
        "aria-expanded:rotate-180",
        "data-[state=open]:block",
        "data-active:flex",
        "supports-[display:grid]:grid",
        "*:p-2",
        "**:p-2",
        "@md:flex",
        "@max-md:hidden",
        "@[400px]:grid",
        "[&>svg]:p-10",
        "[@supports(display:grid)]:grid",
        "group-hover/item:flex",
        "max-md:items-center",
        "min-[400px]:flex",
        "nth-3:p-1",
        "not-first:mt-2",
        "has-[img]:p-0",
        "group-focus-within:ring-2",
        "motion-safe:animate-spin",
        "2xl:leading-tight",
        "placeholder:text-gray-400",
        "before:content-['']",
        "print:hidden",
    ]);
    rejects(&[
        "foo:flex",
        "https:flex",
        "astro:load",
        "[data-x]:flex",
        "md:",
        ":flex",
        "hover::flex",
        "node:fs",
    ]);
}

#[test]
fn negatives_need_a_numeric_value() {
    accepts(&[
        "-translate-y-1/2",
        "-mt-4",
        "-z-10",
        "-mx-px",
        "-translate-x-full",
        "md:-rotate-45",
        "-top-[3px]",
    ]);
    rejects(&["-flex", "-mx-auto", "--brand", "-webkit-box", "-", "-1"]);
}

#[test]
fn bare_utilities_are_a_fixed_vocabulary() {
    accepts(&[
        "flex",
        "border",
        "rounded",
        "shadow",
        "transition",
        "grow",
        "container",
        "tabular-nums",
        "sr-only",
        "group",
        "peer",
        "dark",
    ]);
    rejects(&[
        "function", "return", "const", "typeof", "lorem", "content", "display", "settings", "true",
        "null",
    ]);
}

#[test]
fn markers_take_no_variants() {
    accepts(&["group/item", "peer/email"]);
    rejects(&["md:group", "hover:peer", "dark:dark", "flex/50"]);
}

#[test]
fn arbitrary_values_and_variable_shorthands() {
    accepts(&[
        "w-[37px]",
        "bg-[#1da1f2]",
        "grid-cols-[200px_1fr]",
        "bg-(--brand-3)",
        "bg-(color:--my-color)",
        "min-h-[calc(100vh-6rem)]",
        "content-['']",
        "shadow-[0_36px_57px_-15px_rgba(0,0,0,0.25)]",
        "bg-[color:var(--my-color)]",
        "translate-x-[19%]",
        "text-[length:var(--size)]",
    ]);
    rejects(&[
        "w-[37px",
        "w-[]",
        "bg-(brand)",
        "w-37px]",
        "bg-[a b]",
        "text-[",
        "p-()",
    ]);
}

#[test]
fn arbitrary_properties_name_a_css_or_custom_property() {
    accepts(&[
        "[--gutter:12px]",
        "[mask-type:luminance]",
        "[color:red]/50",
        "md:[--x:1]",
        "[color:red]/50!",
    ]);
    rejects(&[
        "[astro:actions]",
        "[data-menu]",
        "[hydrate]",
        "[--x:]",
        "[vite:html]",
        "[k:K]",
    ]);
}

#[test]
fn modifiers_fractions_and_decimals() {
    accepts(&[
        "bg-red-500/80",
        "text-lg/tight",
        "bg-red-500/[0.3]",
        "bg-red-500/(--o)",
        "w-1/2",
        "py-1.5",
        "size-5/6",
        "w-0.5",
        "text-sm/6",
        "from-10%",
        "mask-b-from-20%",
    ]);
    rejects(&[
        "bg-red-500/",
        "w-1/2/3",
        "py-1.",
        "w-1/",
        "p-.5",
        "text-lg/Tight",
        "from-%",
        "50%",
    ]);
}

#[test]
fn important_marker_at_either_end_once() {
    accepts(&[
        "flex!",
        "!flex",
        "md:p-4!",
        "md:!p-4",
        "!container",
        "w-0.5!",
        "lg:before:content-['']!",
    ]);
    rejects(&["!flex!", "!!flex", "flex!!", "!", "md:!p-4!"]);
}

#[test]
fn rejects_what_only_looks_like_a_utility() {
    rejects(&[
        // URLs, paths, file names, numbers
        "https://example.com",
        "//cdn.example.com/a.js",
        "/blog/post-0001",
        "./chunks/page.mjs",
        "Base.Ce-3bSuj.css",
        "main.js",
        "index.html",
        "42",
        "1.5",
        "2xl",
        "text/html",
        "application/json",
        "utf-8",
        // CSS property names, SVG attributes, CSP directives, HTTP headers, CSS keywords
        "font-size",
        "stroke-linecap",
        "text-align",
        "z-index",
        "line-height",
        "will-change",
        "pointer-events",
        "accent-height",
        "font-src",
        "content-type",
        "cache-control",
        "x-forwarded-for",
        "border-box",
        "space-between",
        "flex-start",
        "max-age",
        "no-cors",
        "aria-hidden",
        "data-astro-cid",
        "row-reverse",
        "translate-x",
        "top-left",
        "bottom-end",
        "end-start",
        "no-cache",
        "same-origin",
        // identifiers and camelCase
        "onClick",
        "useState",
        "bg-Red-500",
        "Flex",
    ]);
    // CSS property names that are also utilities stay.
    accepts(&[
        "flex-wrap",
        "border-collapse",
        "text-wrap",
        "backdrop-filter",
        "flex-grow",
    ]);
}

#[test]
fn overlong_tokens_are_rejected() {
    let long = format!("w-[{}px]", "1".repeat(300));
    rejects(&[&long]);
}

// ---- where candidates come from ----

#[test]
fn html_class_attributes_with_entities_and_duplicates() {
    let html = r#"<!doctype html><div class="p-4  flex" class="m-2"><span class="[&amp;&gt;svg]:p-10 content-[&#39;&#39;]">x</span>
        <p data-x="bg-red-500">bg-blue-500 prose</p><svg class="size-5"></svg></div>"#;
    assert_eq!(
        classes_in(html, Lang::Html),
        set(&[
            "p-4",
            "flex",
            "m-2",
            "[&>svg]:p-10",
            "content-['']",
            "size-5"
        ])
    );
}

#[test]
fn html_script_bodies_are_javascript_and_templates_are_markup() {
    let html = r#"<script>el.classList.add('hidden'); if (x === 'blur') {}</script>
        <script type="text/template"><div class="p-4 md:grid"></div></script>
        <style>.hidden{display:none}</style>"#;
    assert_eq!(
        classes_in(html, Lang::Html),
        set(&["hidden", "p-4", "md:grid"])
    );
}

#[test]
fn deeply_nested_templates_neither_overflow_nor_take_quadratic_time() {
    // Found by fuzz/fuzz_targets/whitelist_scan.rs: each nested template rescanned the rest of the text one
    // stack frame deeper, so some 18 KB of `<script type=html>` aborted the process with a stack overflow.
    let nested = |n: usize| format!("{}<p class=\"p-4 flex\">", "<script type=html>".repeat(n));
    assert_eq!(classes_in(&nested(8), Lang::Html), set(&["p-4", "flex"]));
    assert_eq!(classes_in(&nested(9), Lang::Html), set(&[]));
    // A million bytes of them: a few levels deep only, so this returns at once and on a test thread's stack.
    assert_eq!(classes_in(&nested(60_000), Lang::Html), set(&[]));
}

#[test]
fn js_escaped_quotes_and_control_escapes() {
    let js = r#"const s = "<div class=\"p-4 flex\">it's</div>"; const t = 'ring-2\nitems-center\u0020gap-2'; const u = 'don\'t';"#;
    assert_eq!(
        classes_in(js, Lang::Js),
        set(&["p-4", "flex", "ring-2", "items-center", "gap-2"])
    );
}

#[test]
fn template_literal_holes_split_and_nest() {
    let js =
        r#"const c = `text-${tone}-500 p-2 ${open ? "block" : `hidden ${"ring-2"}`} bg-${c}`;"#;
    assert_eq!(
        classes_in(js, Lang::Js),
        set(&["p-2", "block", "hidden", "ring-2"])
    );
}

#[test]
fn minified_bundle_with_regex_comments_and_object_maps() {
    let js = r#"var a=`rounded-lg hover:w-4`,b={info:`text-center md:space-y-5`,"sm:flex":1};/*bg-red-500*/
        x=/"[a-z]+'/g.test(y)?"flex":"hidden";// text-lg
        var q=y/2/z,r=`grid-cols-1`;return/"'/.test(r)?`gap-4`:`gap-2`"#;
    assert_eq!(
        classes_in(js, Lang::Js),
        set(&[
            "rounded-lg",
            "hover:w-4",
            "text-center",
            "md:space-y-5",
            "sm:flex",
            "flex",
            "hidden",
            "grid-cols-1",
            "gap-4",
            "gap-2"
        ])
    );
}

#[test]
fn classes_next_to_punctuation() {
    let js = r#"const note = "Use (p-4), then md:flex. Or .hidden; never {bg-red-500}!";"#;
    let found = classes_in(js, Lang::Js);
    for c in ["p-4", "md:flex", "bg-red-500"] {
        assert!(found.contains(c), "{c} missing from {found:?}");
    }
}

#[test]
fn astro_markup_in_template_literals() {
    let js = r#"return renderTemplate`<p class="text-4xl sm:text-5xl hidden">Results for flex table <mark class='p-px'>${q}</mark></p><div${addAttribute(["border rounded", ok ? "grow" : "ring-2"], "class:list")}>`;"#;
    assert_eq!(
        classes_in(js, Lang::Js),
        set(&[
            "text-4xl",
            "sm:text-5xl",
            "hidden",
            "p-px",
            "border",
            "rounded",
            "grow",
            "ring-2"
        ])
    );
}

#[test]
fn bare_words_are_trusted_only_in_class_like_literals() {
    let js = r#"const events = "abort click resize scroll load"; const cls = "flex resize p-2";
        switch (e) { case "blur": break; } if (d === "inline") {} addEventListener("resize", f); el.classList.add("invert");"#;
    assert_eq!(
        classes_in(js, Lang::Js),
        set(&["flex", "resize", "p-2", "invert"])
    );
}

#[test]
fn go_strings_raw_and_interpreted() {
    let go = "package t\n// bg-red-500 in a comment\nconst a = \"flex items-center\"\nvar b = `p-4 ${x} md:grid`\nvar c = '\"'\nvar d = \"ring-2\"\n";
    assert_eq!(
        classes_in(go, Lang::Go),
        set(&["flex", "items-center", "p-4", "md:grid", "ring-2"])
    );
}

// ---- files, errors and writing ----

/// Captures what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[test]
fn extract_walks_dist_and_extra_and_skips_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    write(&dist, "index.html", r#"<div class="flex p-4"></div>"#);
    write(&dist, "a/b/app.js", r#"x="md:grid gap-2""#);
    write(&dist, "server/entry.mjs", r#"y=`bg-red-500/80`"#);
    write(&dist, "style.css", ".ignored-1{}");
    write(&dist, "bad.js", b"x='ring-2 \xff\xfe'");
    let templates = tmp.path().join("templates");
    write(
        &templates,
        "card.go",
        "package t\nconst C = \"rounded-xl shadow-lg\"\n",
    );
    write(&templates, "notes.txt", "text-9xl");

    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let (classes, stats) = tracing::subscriber::with_default(subscriber, || {
        extract(&dist, std::slice::from_ref(&templates)).unwrap()
    });
    let logs = logs.text();
    assert!(
        logs.contains("bad.js") && logs.contains("not UTF-8"),
        "{logs}"
    );
    assert_eq!(
        classes,
        set(&[
            "flex",
            "p-4",
            "md:grid",
            "gap-2",
            "bg-red-500/80",
            "rounded-xl",
            "shadow-lg"
        ])
    );
    assert_eq!((stats.files, stats.skipped, stats.classes), (4, 1, 7));
    assert!(stats.bytes > 0);
}

#[cfg(unix)]
#[test]
fn symlinked_directories_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    write(&dist, "index.html", r#"<div class="flex"></div>"#);
    write(
        tmp.path(),
        "outside/page.html",
        r#"<div class="grid"></div>"#,
    );
    std::os::unix::fs::symlink(tmp.path().join("outside"), dist.join("linked")).unwrap();
    let (classes, _) = extract(&dist, &[]).unwrap();
    assert_eq!(classes, set(&["flex"]));
}

#[test]
fn missing_dist_or_extra_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = extract(&missing, &[]).unwrap_err().to_string();
    assert!(
        err.contains("dist directory") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    let err = extract(tmp.path(), std::slice::from_ref(&missing))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("extra source directory") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn missing_output_directory_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("config/tenant/tailwindWhitelist.json");
    let err = write_safelist(&out, &set(&["flex"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config/tenant") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.exists());
    let err = write_safelist(tmp.path(), &set(&["flex"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a file path"), "{err}");
}

#[test]
fn write_safelist_is_sorted_indented_and_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tailwindWhitelist.json");
    assert!(write_safelist(&out, &set(&["p-4", "flex"])).unwrap());
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "{\n  \"safelist\": [\n    \"flex\",\n    \"p-4\"\n  ]\n}\n"
    );
    let before = fs::metadata(&out).unwrap().modified().unwrap();
    assert!(
        !write_safelist(&out, &set(&["flex", "p-4"])).unwrap(),
        "same content must not be rewritten"
    );
    assert_eq!(fs::metadata(&out).unwrap().modified().unwrap(), before);
    assert!(write_safelist(&out, &set(&["flex"])).unwrap());
    assert!(fs::read_to_string(&out).unwrap().contains("\"flex\"\n  ]"));
    // No temp files are left behind.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn extract_to_file_reports_what_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    write(&dist, "index.html", r#"<div class="flex p-4"></div>"#);
    let out = tmp.path().join("wl.json");
    let first = extract_to_file(&dist, &out, &[]).unwrap();
    assert!(first.written);
    assert_eq!((first.classes, first.files, first.skipped), (2, 1, 0));
    let second = extract_to_file(&dist, &out, &[]).unwrap();
    assert!(!second.written);
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json, serde_json::json!({"safelist": ["flex", "p-4"]}));
}
