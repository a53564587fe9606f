//! Fuzzes the Tailwind whitelist tokenizer (scanner, candidate splitter, entity decoder) and the shape test
//! against the contract in `whitelist`'s module doc: pieces stay within a bounded size of the input,
//! candidates are clean slices of their piece, and `is_tailwind_class` keeps its shape rules.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use t8k_engine::whitelist::fuzzing::{Lang, Piece, candidates, classes_in, decode_entities, scan};
use t8k_engine::whitelist::is_tailwind_class;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let lang = [Lang::Html, Lang::Js, Lang::Go][first as usize % 3];
    let text = String::from_utf8_lossy(rest);

    let mut pieces: Vec<(String, Piece)> = Vec::new();
    scan(&text, lang, &mut |piece, kind| {
        pieces.push((piece.to_string(), kind))
    });
    // Decoding mostly shrinks text (escapes, entities); HTML turns a NUL into U+FFFD (1 byte into 3) and a
    // few named entities into two code points, never more than 3 bytes per input byte. Anything past that
    // is a scanner reading the same bytes twice.
    let total: usize = pieces.iter().map(|(p, _)| p.len()).sum();
    assert!(
        total <= 3 * text.len() + 16,
        "{total} bytes of pieces from {} bytes of {lang:?}",
        text.len()
    );

    let mut all = BTreeSet::new();
    check_decode(&text);
    for (piece, _) in &pieces {
        check_decode(piece);
        for tok in split(piece) {
            check_class(tok);
            all.insert(tok.to_string());
        }
    }
    // The whole per-file pipeline keeps only classes, and only tokens the splitter produced.
    for class in classes_in(&text, lang) {
        assert!(is_tailwind_class(&class), "kept `{class}`, not a class");
        assert!(all.contains(&class), "kept `{class}`, which no piece holds");
    }
    // And the splitter and shape test on raw input, which reaches byte mixes the scanner rarely passes on.
    for tok in split(&text) {
        check_class(tok);
    }
}

fn check_decode(s: &str) {
    let out = decode_entities(s);
    assert!(out.len() <= s.len(), "decoding grew {s:?} to {out:?}");
    if !s.contains('&') {
        assert_eq!(out, s, "decoding changed text without entities");
    }
}

/// Runs `candidates` on `piece` and checks each one against the splitting rules.
fn split(piece: &str) -> Vec<&str> {
    let mut toks: Vec<&str> = Vec::new();
    let base = piece.as_ptr() as usize;
    candidates(piece, &mut |tok| {
        // The sink gets `&str`s of unknown lifetime; recover each as a slice of `piece` by its address.
        let at = tok.as_ptr() as usize;
        assert!(
            at >= base && at + tok.len() <= base + piece.len(),
            "candidate `{tok}` is not a slice of its piece"
        );
        toks.push(&piece[at - base..at - base + tok.len()]);
    });
    let mut end = 0;
    for tok in &toks {
        let at = tok.as_ptr() as usize - base;
        assert!(at >= end, "candidates overlap or go backwards in {piece:?}");
        end = at + tok.len();
        assert!(!tok.is_empty(), "empty candidate");
        assert!(
            !tok.bytes().any(|b| b.is_ascii_whitespace()),
            "candidate `{tok:?}` holds whitespace"
        );
        assert!(!tok.starts_with('.'), "leading dot kept: {tok}");
        assert!(
            !tok.ends_with(['.', ':']),
            "trailing punctuation kept: {tok}"
        );
        assert!(
            tok.len() > 1 || tok.as_bytes()[0].is_ascii_lowercase(),
            "one-byte candidate `{tok}`"
        );
        if !tok.contains(['[', '(']) {
            assert!(
                tok.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:/.!@*%".contains(&b)),
                "candidate `{tok}` holds a separator outside brackets"
            );
        }
    }
    // Whitespace only ever separates: splitting there first changes nothing.
    let mut chunked: Vec<&str> = Vec::new();
    for chunk in piece.split(|c: char| c.is_ascii_whitespace()) {
        candidates(chunk, &mut |tok| {
            let at = tok.as_ptr() as usize - base;
            chunked.push(&piece[at..at + tok.len()]);
        });
    }
    assert_eq!(
        chunked, toks,
        "whitespace does more than separate in {piece:?}"
    );
    toks
}

/// The shape rules of the contract that can be told without the vocabulary.
fn check_class(tok: &str) {
    let is = is_tailwind_class(tok);
    assert_eq!(is, is_tailwind_class(tok), "not deterministic on `{tok}`");
    if !is {
        return;
    }
    assert!(tok.len() <= 200, "a class of {} bytes", tok.len());
    assert!(!tok.starts_with('/'), "a path is a class: {tok}");
    assert!(
        !tok.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
        "a number is a class: {tok}"
    );
    let (outside, balanced) = outside_brackets(tok);
    assert!(balanced, "unbalanced brackets in class `{tok}`");
    // A variant's `/name` (`group-hover/Item:`) is the one place outside brackets where the shape test
    // allows uppercase, on purpose (is_variant takes any alphanumeric name).
    let unnamed = without_variant_names(&outside);
    assert!(
        !unnamed.iter().any(|b| b.is_ascii_uppercase()),
        "uppercase outside brackets and names in class `{tok}`"
    );
    assert!(
        !outside.iter().any(|b| !b.is_ascii()),
        "non-ASCII outside brackets in class `{tok}`"
    );
    assert!(
        outside.iter().filter(|&&b| b == b'!').count() <= 1,
        "important twice in class `{tok}`"
    );
    assert!(
        !tok.contains("://") || tok.find("://") > tok.find('['),
        "a URL is a class: {tok}"
    );
    // Important and variants compose: `t!` is a class, and so is `hover:t` unless `t` is a marker or
    // already carries a leading `!` (which must then come after the variants).
    if !outside.contains(&b'!') && tok.len() < 200 {
        assert!(
            is_tailwind_class(&format!("{tok}!")),
            "`{tok}` is a class, `{tok}!` not"
        );
        assert!(
            is_tailwind_class(&format!("!{tok}")),
            "`{tok}` is a class, `!{tok}` not"
        );
    }
    if !tok.starts_with('!') && !is_marker(tok) && tok.len() <= 194 {
        assert!(
            is_tailwind_class(&format!("hover:{tok}")),
            "`{tok}` is a class, `hover:{tok}` not"
        );
    }
}

/// The bytes of `tok` outside `[...]` and `(...)`, and whether those brackets balance.
fn outside_brackets(tok: &str) -> (Vec<u8>, bool) {
    let mut depth = 0i32;
    let mut out = Vec::new();
    for b in tok.bytes() {
        match b {
            b'[' | b'(' => depth += 1,
            b']' | b')' => {
                depth -= 1;
                if depth < 0 {
                    return (out, false);
                }
            }
            _ if depth == 0 => out.push(b),
            _ => {}
        }
    }
    (out, depth == 0)
}

/// `outside` (a class without its bracket groups) less the `/name` of each variant.
fn without_variant_names(outside: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = outside.split(|&b| b == b':').collect();
    let last = segments.len() - 1;
    let mut out = Vec::new();
    for (i, seg) in segments.into_iter().enumerate() {
        let seg = match seg.iter().position(|&b| b == b'/') {
            Some(at) if i < last => &seg[..at],
            _ => seg,
        };
        out.extend_from_slice(seg);
        out.push(b':');
    }
    out
}

/// `group`, `peer` and `dark` (optionally named, `group/item`) mark elements and take no variants.
fn is_marker(tok: &str) -> bool {
    let (outside, _) = outside_brackets(tok);
    if outside.contains(&b':') {
        return false;
    }
    let u = tok.trim_end_matches('!');
    let head = u.split_once('/').map_or(u, |(h, _)| h);
    matches!(head, "group" | "peer" | "dark")
}
