//! Finds class candidates in one file's text (HTML class attributes and scripts, JS/Go string literals);
//! it must not judge candidates (that is `shape`) nor touch the file system.

use std::borrow::Cow;
use std::convert::Infallible;

use html5gum::emitters::callback::{CallbackEmitter, CallbackEvent};
use html5gum::{Emitter, ForwardingEmitter, Span, Tokenizer};

/// How a file's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// HTML: class attributes, and `<script>` bodies as JavaScript.
    Html,
    /// JavaScript/TypeScript: string and template literals (split at `${...}` holes).
    Js,
    /// Go: interpreted and raw string literals.
    Go,
}

/// Where a piece of text came from, which decides how far its bare words are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A class attribute value (in HTML, or in markup kept inside a literal): every token is meant as a class.
    Class,
    /// A string literal or template chunk; `value` when the code uses it as a plain value (a `case` label,
    /// an `===` operand, an event name) rather than as a class list.
    Literal { value: bool },
}

/// Calls `sink` with every class-bearing piece of text in `src`, decoded (split it with [`candidates`]).
pub fn scan(src: &str, lang: Lang, sink: &mut dyn FnMut(&str, Piece)) {
    match lang {
        Lang::Html => scan_html(src, 0, sink),
        Lang::Js | Lang::Go => scan_code(src.as_bytes(), lang, &mut |lit, escaped, value| {
            literal(lit, escaped, value, sink)
        }),
    }
}

/// How deep markup templates (`<script type="text/html">`) nested in markup templates are read. A template's
/// body runs to the end of its enclosing one, so each level rescans the rest of the text: without a cap a
/// few kilobytes of nested script tags overflowed the stack and a large file took quadratic time.
const MAX_TEMPLATE_DEPTH: u32 = 8;

/// Scans `src` as HTML; `depth` counts the markup templates it is nested in.
fn scan_html(src: &str, depth: u32, sink: &mut dyn FnMut(&str, Piece)) {
    #[derive(PartialEq)]
    enum Attr {
        Other,
        Class,
        Type,
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Body {
        None,
        Script,
        Markup,
    }
    let mut attr = Attr::Other;
    let mut body = Body::None;
    let mut pending = Body::None;
    let mut emitter = CallbackEmitter::new(
        move |event: CallbackEvent<'_>, _span: Span<()>| -> Option<Infallible> {
            match event {
                CallbackEvent::OpenStartTag { name } => {
                    attr = Attr::Other;
                    pending = if name == b"script" {
                        Body::Script
                    } else {
                        Body::None
                    };
                }
                CallbackEvent::AttributeName { name } => {
                    attr = match name {
                        b"class" | b"classname" => Attr::Class,
                        b"type" => Attr::Type,
                        _ => Attr::Other,
                    };
                }
                CallbackEvent::AttributeValue { value } => match attr {
                    // Values of a UTF-8 document stay UTF-8 after entity decoding.
                    Attr::Class => sink(&String::from_utf8_lossy(value), Piece::Class),
                    // Script bodies that are markup templates hold class attributes, not code.
                    Attr::Type
                        if pending == Body::Script
                            && (contains(value, b"html") || contains(value, b"template")) =>
                    {
                        pending = Body::Markup;
                    }
                    _ => {}
                },
                CallbackEvent::CloseStartTag { .. } => {
                    body = pending;
                    attr = Attr::Other;
                }
                CallbackEvent::String { value } => match body {
                    Body::Script => scan_code(value, Lang::Js, &mut |lit, escaped, v| {
                        literal(lit, escaped, v, sink)
                    }),
                    Body::Markup if depth < MAX_TEMPLATE_DEPTH => {
                        scan_html(&String::from_utf8_lossy(value), depth + 1, sink)
                    }
                    Body::Markup | Body::None => {}
                },
                CallbackEvent::EndTag { .. } => body = Body::None,
                _ => {}
            }
            None
        },
    );
    emitter.naively_switch_states(true);
    for _ in Tokenizer::new_with_emitter(src, Quiet(emitter)) {}
}

/// Passes tokens through but asks for no parse errors, which spares html5gum a per-byte validation pass.
struct Quiet<E>(E);

impl<E: Emitter> ForwardingEmitter for Quiet<E> {
    type Token = E::Token;

    fn inner(&mut self) -> &mut impl Emitter<Token = Self::Token> {
        &mut self.0
    }

    fn should_emit_errors(&mut self) -> bool {
        false
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Bytes the code scanner stops at; everything else is skipped in bulk.
static CODE_STOPS: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'\'' as usize] = true;
    t[b'`' as usize] = true;
    t[b'/' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t
};

/// Words after which a `/` starts a regular expression rather than a division.
const REGEX_AFTER: &[&[u8]] = &[
    b"return",
    b"typeof",
    b"instanceof",
    b"in",
    b"of",
    b"new",
    b"delete",
    b"void",
    b"throw",
    b"case",
    b"do",
    b"else",
    b"yield",
    b"await",
];

/// Walks JS or Go source and calls `emit(literal_body, has_escapes, used_as_value)` for every string literal and every
/// template-literal chunk between `${...}` holes. Comments and regular expressions are skipped.
fn scan_code(src: &[u8], lang: Lang, emit: &mut dyn FnMut(&[u8], bool, bool)) {
    let n = src.len();
    let mut i = 0;
    // One entry per open `${`: the `{` depth inside that hole.
    let mut holes: Vec<u32> = Vec::new();
    while i < n {
        let Some(off) = src[i..].iter().position(|&b| CODE_STOPS[b as usize]) else {
            break;
        };
        i += off;
        match src[i] {
            q @ (b'"' | b'\'') => {
                let end = string_end(src, i + 1, q);
                emit(&src[i + 1..end], true, used_as_value(src, i, end + 1));
                i = end + 1;
            }
            b'`' if lang == Lang::Go => {
                let end = memchr::memchr(b'`', &src[i + 1..]).map_or(n, |e| i + 1 + e);
                emit(&src[i + 1..end], false, used_as_value(src, i, end + 1));
                i = end + 1;
            }
            b'`' => i = resume_template(src, i + 1, &mut holes, emit),
            b'{' => {
                if let Some(depth) = holes.last_mut() {
                    *depth += 1;
                }
                i += 1;
            }
            b'}' => {
                i += 1;
                match holes.last_mut() {
                    Some(0) => {
                        holes.pop();
                        // Back inside the template literal that opened the hole.
                        i = resume_template(src, i, &mut holes, emit);
                    }
                    Some(depth) => *depth -= 1,
                    None => {}
                }
            }
            _ => i = skip_slash(src, i, lang),
        }
    }
}

/// Scans a template literal from `i` (after its opening backquote or a `}` closing a hole) to its end or
/// next hole; returns where code resumes.
fn resume_template(
    src: &[u8],
    mut i: usize,
    holes: &mut Vec<u32>,
    emit: &mut dyn FnMut(&[u8], bool, bool),
) -> usize {
    let start = i;
    loop {
        let Some(off) = memchr::memchr3(b'`', b'\\', b'$', &src[i..]) else {
            emit(&src[start..], true, false);
            return src.len();
        };
        i += off;
        match src[i] {
            b'\\' => i += 2,
            b'$' if src.get(i + 1) == Some(&b'{') => {
                emit(&src[start..i], true, false);
                holes.push(0);
                return i + 2;
            }
            b'$' => i += 1,
            _ => {
                // A whole template without holes can be a plain value like a quoted string.
                let whole = start > 0 && src[start - 1] == b'`';
                emit(
                    &src[start..i],
                    true,
                    whole && used_as_value(src, start - 1, i + 1),
                );
                return i + 1;
            }
        }
        if i >= src.len() {
            emit(&src[start..], true, false);
            return src.len();
        }
    }
}

/// Whether the literal spanning `open..close` is a `case` label, an equality operand or an event name.
fn used_as_value(src: &[u8], open: usize, close: usize) -> bool {
    let before = trim_end(&src[open.saturating_sub(24)..open]);
    let after = trim_start(&src[close.min(src.len())..(close + 3).min(src.len())]);
    before.ends_with(b"==")
        || before.ends_with(b"!=")
        || after.starts_with(b"==")
        || after.starts_with(b"!=")
        || before.ends_with(b"EventListener(")
        || before.ends_with(b"case") && before.len() > 4 && !is_ident_byte(before[before.len() - 5])
        || before == b"case"
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &s[..n]
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    &s[n..]
}

/// Index of the closing `q` of a string whose body starts at `i` (or of the line end when unterminated).
fn string_end(src: &[u8], mut i: usize, q: u8) -> usize {
    while let Some(off) = memchr::memchr3(q, b'\\', b'\n', &src[i..]) {
        i += off;
        match src[i] {
            b'\\' => i += 2,
            _ => return i,
        }
        if i >= src.len() {
            return src.len();
        }
    }
    src.len()
}

/// Skips a comment, a regular expression or a division operator starting at the `/` at `i`.
fn skip_slash(src: &[u8], i: usize, lang: Lang) -> usize {
    match src.get(i + 1) {
        Some(b'/') => memchr::memchr(b'\n', &src[i..]).map_or(src.len(), |e| i + e + 1),
        Some(b'*') => {
            memchr::memmem::find(&src[i + 2..], b"*/").map_or(src.len(), |e| i + 2 + e + 2)
        }
        _ if lang == Lang::Js && slash_starts_regex(src, i) => {
            regex_end(src, i + 1).unwrap_or(i + 1)
        }
        _ => i + 1,
    }
}

fn slash_starts_regex(src: &[u8], i: usize) -> bool {
    let mut j = i;
    while j > 0 && src[j - 1].is_ascii_whitespace() {
        j -= 1;
    }
    if j == 0 {
        return true;
    }
    let p = src[j - 1];
    if matches!(p, b')' | b']' | b'}') {
        return false;
    }
    if p.is_ascii_alphanumeric() || p == b'_' || p == b'$' {
        let mut k = j;
        while k > 0
            && (src[k - 1].is_ascii_alphanumeric() || src[k - 1] == b'_' || src[k - 1] == b'$')
        {
            k -= 1;
        }
        return REGEX_AFTER.contains(&&src[k..j]);
    }
    true
}

/// End (exclusive) of a regex literal body starting at `i`, flags included; `None` if the line ends first.
fn regex_end(src: &[u8], mut i: usize) -> Option<usize> {
    let mut in_class = false;
    while i < src.len() {
        match src[i] {
            b'\\' => i += 1,
            b'\n' => return None,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'/' if !in_class => {
                i += 1;
                while i < src.len() && src[i].is_ascii_alphabetic() {
                    i += 1;
                }
                return Some(i);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Decodes a literal body (escapes, then HTML entities, since Astro templates keep markup in literals)
/// and hands it to `sink`, with the class attributes of any markup in it as [`Piece::Class`] pieces.
fn literal(lit: &[u8], escaped: bool, value: bool, sink: &mut dyn FnMut(&str, Piece)) {
    // Literals of a valid UTF-8 file are valid UTF-8 unless the lexer lost track; then skip them.
    let Ok(text) = std::str::from_utf8(lit) else {
        return;
    };
    let text = if escaped && text.contains('\\') {
        unescape(text)
    } else {
        Cow::Borrowed(text)
    };
    let text = if text.contains('&') {
        Cow::Owned(decode_entities(&text).into_owned())
    } else {
        text
    };
    if text.contains("class=") || text.contains("className=") {
        markup_pieces(&text, sink);
    } else {
        sink(&text, Piece::Literal { value });
    }
}

/// Hands markup held by a literal to `sink`: `class="..."`, `class='...'` and `className="..."` values as
/// [`Piece::Class`], the text between them as [`Piece::Literal`].
fn markup_pieces(text: &str, sink: &mut dyn FnMut(&str, Piece)) {
    let b = text.as_bytes();
    let mut rest_start = 0;
    for at in memchr::memmem::find_iter(b, b"class") {
        if at < rest_start
            || at > 0
                && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'-' || b[at - 1] == b':')
        {
            continue;
        }
        let mut j = at + 5;
        if b[j..].starts_with(b"Name") || b[j..].starts_with(b"name") {
            j += 4;
        }
        if b.get(j) != Some(&b'=') {
            continue;
        }
        let Some(&q) = b.get(j + 1).filter(|q| matches!(q, b'"' | b'\'')) else {
            continue;
        };
        if let Some(len) = memchr::memchr(q, &b[j + 2..]) {
            sink(&text[rest_start..at], Piece::Literal { value: false });
            sink(&text[j + 2..j + 2 + len], Piece::Class);
            rest_start = j + 2 + len + 1;
        }
    }
    sink(&text[rest_start..], Piece::Literal { value: false });
}

/// Resolves JS/Go string escapes; control escapes become spaces since they separate classes.
fn unescape(s: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 't' | 'r' | 'v' | 'f' | 'b' | '0') => out.push(' '),
            Some('\n') | None => {}
            Some('x') => push_hex(&mut out, &mut chars, 2),
            Some('u') => {
                let rest = chars.as_str();
                if let Some(body) = rest.strip_prefix('{') {
                    if let Some(close) = body.find('}') {
                        if let Some(ch) = u32::from_str_radix(&body[..close], 16)
                            .ok()
                            .and_then(char::from_u32)
                        {
                            out.push(ch);
                        }
                        chars = body[close + 1..].chars();
                    }
                } else {
                    push_hex(&mut out, &mut chars, 4);
                }
            }
            Some(other) => out.push(other),
        }
    }
    Cow::Owned(out)
}

fn push_hex(out: &mut String, chars: &mut std::str::Chars<'_>, len: usize) {
    let rest = chars.as_str();
    if let Some(code) = rest
        .get(..len)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .and_then(char::from_u32)
    {
        out.push(code);
        *chars = rest[len..].chars();
    } else {
        out.push(' ');
    }
}

/// Decodes the HTML entities that occur in class attributes (`&amp;`, `&gt;`, `&#39;`, ...).
pub fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let semi = rest[1..].find(';').map(|p| p + 1).filter(|&p| p <= 12);
        let decoded = semi.and_then(|p| {
            let name = &rest[1..p];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => {
                    let num = name.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => num.parse().ok(),
                    };
                    code.and_then(char::from_u32)
                }
            };
            ch.map(|c| (c, p + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Bytes a class may hold outside brackets.
static CLASS_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b':' | b'/' | b'.' | b'!' | b'@' | b'*' | b'%' | b'[' | b'('
            );
        c += 1;
    }
    t
};

/// Splits text into class candidates: runs of class bytes, where `[...]` (and `(...)` after `-` or `/`)
/// may hold anything but whitespace. Quotes, `=`, `<`, `>`, braces and commas outside brackets separate
/// candidates, so markup (`class="a b"`), `${}` debris and prose punctuation fall away.
pub fn candidates(text: &str, sink: &mut dyn FnMut(&str)) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        if !CLASS_BYTES[b[i] as usize] || b[i] == b'(' {
            i += 1;
            continue;
        }
        let start = i;
        let mut depth = 0u32;
        while i < n {
            let c = b[i];
            if depth > 0 {
                if c.is_ascii_whitespace() {
                    break;
                }
                match c {
                    b'[' | b'(' => depth += 1,
                    b']' | b')' => depth -= 1,
                    _ => {}
                }
                i += 1;
                continue;
            }
            match c {
                b'[' => depth += 1,
                b'(' if i > start && matches!(b[i - 1], b'-' | b'/') => depth += 1,
                _ if CLASS_BYTES[c as usize] && c != b'(' => {}
                _ => break,
            }
            i += 1;
        }
        emit_trimmed(&text[start..i], sink);
        if i < n && depth == 0 {
            i += 1;
        } else if depth > 0 {
            // An unclosed bracket: move on past the whitespace that stopped it.
            i += 1;
        }
    }
}

/// Drops sentence punctuation around a candidate (`flex.`, `.hidden` in a selector, `note:`).
fn emit_trimmed(tok: &str, sink: &mut dyn FnMut(&str)) {
    let tok = tok.trim_start_matches('.');
    let tok = tok.trim_end_matches(['.', ':']);
    if tok.len() > 1 || tok.bytes().next().is_some_and(|c| c.is_ascii_lowercase()) {
        sink(tok);
    }
}
