//! The Tailwind class-shape test (`is_tailwind_class`) and its vocabulary; it must not read files or know where a token came from.

use std::sync::LazyLock;

use rustc_hash::FxHashSet;

use super::vocab::{
    CSS_PROPERTIES, HTTP_HEADERS, NOT_UTILITIES, NUMERIC_ROOTS, ROOTS, STATIC_UTILITIES,
    STATIC_VARIANTS, SVG_AND_CSP,
};

/// Longest token worth testing; real classes with long arbitrary values stay well under it.
const MAX_LEN: usize = 200;

/// Whether one token has the shape of a Tailwind class (the contract is in the module doc of `whitelist`).
pub fn is_tailwind_class(token: &str) -> bool {
    if token.is_empty() || token.len() > MAX_LEN {
        return false;
    }
    if token.bytes().all(|b| b.is_ascii_lowercase()) {
        return STATIC_UTILITIES.contains(token);
    }
    // Tailwind 4 puts `!` last; Tailwind 3 puts it first, before or after the variants. Never twice.
    let (body, important) = match token.strip_suffix('!') {
        Some(rest) => (rest, true),
        None => match token.strip_prefix('!') {
            Some(rest) => (rest, true),
            None => (token, false),
        },
    };
    if body.is_empty() || body.starts_with('!') || body.ends_with('!') {
        return false;
    }
    // Variants end at top-level colons; brackets may hold colons of their own (`[color:red]`).
    let bytes = body.as_bytes();
    let (mut depth, mut start, mut variants) = (0i32, 0, 0);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'[' | b'(' => depth += 1,
            b']' | b')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            b':' if depth == 0 => {
                if !is_variant(&body[start..i]) {
                    return false;
                }
                variants += 1;
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut utility = &body[start..];
    if !important
        && variants > 0
        && let Some(rest) = utility.strip_prefix('!')
    {
        utility = rest;
    }
    // Markers only name an element for other classes' variants; `md:group` generates nothing.
    if depth != 0 || variants > 0 && is_marker(utility) {
        return false;
    }
    is_utility(utility)
}

/// `group`, `peer`, `dark`, and named groups and peers (`group/item`).
fn is_marker(u: &str) -> bool {
    let head = u.split_once('/').map_or(u, |(h, _)| h);
    matches!(head, "group" | "peer" | "dark")
}

/// Splits `s` at its one top-level `sep` (outside `[...]` and `(...)`): `(s, None)` when there is none,
/// `None` when brackets are unbalanced or `sep` occurs twice.
fn split_modifier(s: &str, sep: u8) -> Option<(&str, Option<&str>)> {
    let mut depth = 0i32;
    let mut at = None;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        match b {
            b'[' | b'(' => depth += 1,
            b']' | b')' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ if b == sep && depth == 0 => {
                if at.is_some() {
                    return None;
                }
                at = Some(i);
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    Some(match at {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    })
}

/// Length of the bracket group opening at `s[0]` (`[` or `(`), including both ends; `None` when unclosed.
fn group_len(s: &[u8]) -> Option<usize> {
    let mut depth = 0i32;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'[' | b'(' => depth += 1,
            b']' | b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// An arbitrary value `[...]`: non-empty, balanced, no whitespace (Tailwind spells spaces `_`).
fn is_arbitrary(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > 2
        && b[0] == b'['
        && group_len(b) == Some(b.len())
        && !s.bytes().any(|c| c.is_ascii_whitespace())
}

/// The `(--var)` / `(type:--var)` shorthand of Tailwind 4.
fn is_var_shorthand(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 4 || b[0] != b'(' || group_len(b) != Some(b.len()) {
        return false;
    }
    let inner = &s[1..s.len() - 1];
    let var = match inner.split_once(':') {
        Some((ty, v)) if is_ident(ty) => v,
        _ => inner,
    };
    var.len() > 2
        && var.starts_with("--")
        && var[2..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn is_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_variant(v: &str) -> bool {
    if v.is_empty() {
        return false;
    }
    if v.starts_with('[') {
        // Arbitrary variants are selectors or at-rules: they name `&` or start with `@`.
        return is_arbitrary(v) && (v.contains('&') || v.as_bytes()[1] == b'@');
    }
    if v == "*" || v == "**" {
        return true;
    }
    // A `/name` suffix names a group, peer or container.
    let Some((v, name)) = split_modifier(v, b'/') else {
        return false;
    };
    if let Some(n) = name
        && !(is_ident(n)
            || n.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                && !n.is_empty())
    {
        return false;
    }
    if let Some(rest) = v.strip_prefix('@') {
        return is_container_variant(rest);
    }
    if STATIC_VARIANTS.contains(v) || is_breakpoint(v) {
        return true;
    }
    for (prefix, kind) in FUNCTIONAL_VARIANTS {
        if let Some(rest) = v.strip_prefix(prefix) {
            if rest.is_empty() {
                return false;
            }
            if rest.starts_with('[') {
                return is_arbitrary(rest);
            }
            return match kind {
                VariantArg::Variant => is_variant(rest),
                VariantArg::Ident => is_ident(rest),
                VariantArg::Number => rest.bytes().all(|c| c.is_ascii_digit()),
                VariantArg::Breakpoint => is_breakpoint(rest),
            };
        }
    }
    false
}

fn is_breakpoint(v: &str) -> bool {
    let v = v
        .strip_prefix("max-")
        .or_else(|| v.strip_prefix("min-"))
        .unwrap_or(v);
    matches!(v, "xs" | "sm" | "md" | "lg" | "xl") || is_nxl(v)
}

/// `2xl` .. `9xl`.
fn is_nxl(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 3 && (b'2'..=b'9').contains(&b[0]) && &b[1..] == b"xl"
}

/// `@md`, `@max-lg`, `@min-[400px]`, `@[600px]`, `@container` queries.
fn is_container_variant(rest: &str) -> bool {
    let r = rest
        .strip_prefix("max-")
        .or_else(|| rest.strip_prefix("min-"))
        .unwrap_or(rest);
    if r.starts_with('[') {
        return is_arbitrary(r);
    }
    matches!(r, "3xs" | "2xs" | "xs" | "sm" | "md" | "lg" | "xl") || is_nxl(r)
}

enum VariantArg {
    Variant,
    Ident,
    Number,
    Breakpoint,
}

/// Variant families that take an argument; order matters where one prefix starts another.
const FUNCTIONAL_VARIANTS: &[(&str, VariantArg)] = &[
    ("group-", VariantArg::Variant),
    ("peer-", VariantArg::Variant),
    ("not-supports-", VariantArg::Ident),
    ("not-", VariantArg::Variant),
    ("has-", VariantArg::Variant),
    ("in-", VariantArg::Variant),
    ("aria-", VariantArg::Ident),
    ("data-", VariantArg::Ident),
    ("supports-", VariantArg::Ident),
    ("nth-last-of-type-", VariantArg::Number),
    ("nth-of-type-", VariantArg::Number),
    ("nth-last-", VariantArg::Number),
    ("nth-", VariantArg::Number),
    ("max-", VariantArg::Breakpoint),
    ("min-", VariantArg::Breakpoint),
];

fn is_utility(u: &str) -> bool {
    if u.is_empty() {
        return false;
    }
    if u.starts_with('[') {
        return is_arbitrary_property(u);
    }
    if STATIC_UTILITIES.contains(u) {
        return true;
    }
    let (neg, u) = match u.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, u),
    };
    if u.is_empty() || !u.as_bytes()[0].is_ascii_lowercase() {
        return false;
    }
    if neg && !negative_value_ok(u) {
        return false;
    }
    // Strip a modifier: `/80`, `/[0.3]`, `/(--o)`, `/tight`.
    let Some((main, modifier)) = split_modifier(u, b'/') else {
        return false;
    };
    if let Some(m) = modifier
        && !is_modifier(m)
    {
        return false;
    }
    if !neg && modifier.is_none() && is_other_vocabulary(main) {
        return false;
    }
    if STATIC_UTILITIES.contains(main) {
        // `flex/50` has no meaning; named groups and peers and shadow opacities do.
        return !neg
            && matches!(
                main,
                "group" | "peer" | "shadow" | "inset-shadow" | "drop-shadow" | "text-shadow"
            );
    }
    // Longest root first: `max-w-4`, `grid-cols-3` before `grid-flow`, and so on.
    let bytes = main.as_bytes();
    let mut cut = bytes.len();
    while let Some(dash) = memchr::memrchr(b'-', &bytes[..cut]) {
        let root = &main[..dash];
        let value = &main[dash + 1..];
        if ROOTS.contains(root) && root_is_whole(main, dash) {
            return is_value(value) && (!NUMERIC_ROOTS.contains(root) || is_numeric_value(value));
        }
        cut = dash;
    }
    false
}

/// Names from CSS, SVG, CSP and HTTP that start like a utility root but are no utility.
fn is_other_vocabulary(s: &str) -> bool {
    static ALL: LazyLock<FxHashSet<&'static str>> = LazyLock::new(|| {
        let sets = [
            &*CSS_PROPERTIES,
            &*SVG_AND_CSP,
            &*HTTP_HEADERS,
            &*NOT_UTILITIES,
        ];
        sets.into_iter().flatten().copied().collect()
    });
    ALL.contains(s)
}

/// A root ends where a value starts; the dash before a bracket group belongs to the value.
fn root_is_whole(main: &str, dash: usize) -> bool {
    !main[..dash].contains(['[', '('])
}

/// Negatives exist for numeric scales only: the value ends in a number, fraction, `px`, `full` or an
/// arbitrary value (`-mt-4`, `-translate-y-1/2`, `-z-[3]`), never `auto` or a bare word.
fn negative_value_ok(u: &str) -> bool {
    let last = u.rsplit('-').next().unwrap_or("");
    if u.ends_with(']') || u.ends_with(')') {
        return true;
    }
    let last = last.split('/').next().unwrap_or("");
    matches!(last, "px" | "full") || last.bytes().next().is_some_and(|c| c.is_ascii_digit())
}

/// Values of position, spacing and order-like utilities: a number, fraction, `px`, `full`, `auto`,
/// `reverse`, or an arbitrary value (so `top-left` or `end-start`, popover placements, are no classes).
fn is_numeric_value(v: &str) -> bool {
    matches!(v, "px" | "full" | "auto" | "reverse")
        || v.starts_with('[')
        || v.starts_with('(')
        || v.bytes().next().is_some_and(|c| c.is_ascii_digit())
            && v.bytes()
                .all(|c| c.is_ascii_digit() || c == b'.' || c == b'/')
}

fn is_modifier(m: &str) -> bool {
    if m.starts_with('[') {
        return is_arbitrary(m);
    }
    if m.starts_with('(') {
        return is_var_shorthand(m);
    }
    is_number(m) || is_ident(m)
}

fn is_number(s: &str) -> bool {
    let mut parts = s.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|c| c.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()))
}

/// A value: dash-joined lowercase words and numbers (decimals, percentages, one trailing fraction), optionally ending in
/// an arbitrary `[...]` or `(--var)` group.
fn is_value(value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    let b = value.as_bytes();
    let mut i = 0;
    loop {
        if b[i] == b'[' {
            return is_arbitrary(&value[i..]);
        }
        if b[i] == b'(' {
            return is_var_shorthand(&value[i..]);
        }
        let end = memchr::memchr(b'-', &b[i..]).map_or(b.len(), |d| i + d);
        if !is_value_word(&value[i..end]) {
            return false;
        }
        if end == b.len() {
            return true;
        }
        i = end + 1;
        if i == b.len() {
            return false;
        }
    }
}

fn is_value_word(w: &str) -> bool {
    let b = w.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b[0].is_ascii_digit() {
        // `1.5`, `2xl`, `3xs`, `1/2`, `100`, `50%`.
        if let Some(pct) = w.strip_suffix('%') {
            return is_number(pct);
        }
        if let Some((n, d)) = w.split_once('/') {
            return is_number(n) && !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
        }
        if is_number(w) {
            return true;
        }
        return b
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            && b.iter()
                .position(|c| c.is_ascii_lowercase())
                .is_some_and(|p| b[p..].iter().all(u8::is_ascii_lowercase));
    }
    b.iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `[property:value]`: a custom property or a known CSS property, and a non-empty value.
fn is_arbitrary_property(u: &str) -> bool {
    let Some((main, modifier)) = split_modifier(u, b'/') else {
        return false;
    };
    if modifier.is_some_and(|m| !is_modifier(m)) || !is_arbitrary(main) {
        return false;
    }
    let inner = &main[1..main.len() - 1];
    let Some((prop, value)) = inner.split_once(':') else {
        return false;
    };
    if value.is_empty() {
        return false;
    }
    if let Some(custom) = prop.strip_prefix("--") {
        return !custom.is_empty()
            && custom
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    }
    CSS_PROPERTIES.contains(prop) || prop.starts_with("-webkit-") && is_ident(&prop[8..])
}
