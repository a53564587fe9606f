//! Owns secret redaction: the one function that blanks credentials in text (URL userinfo, secret query
//! parameters, `Authorization:` values, well-known token formats) and the log writer that applies it;
//! it never decides what is logged or stored, only what of it is hidden.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Prefixes of tokens whose format gives them away even outside a URL (GitHub, GitLab, Slack, npm).
const TOKEN_PREFIXES: [&str; 11] = [
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "npm_",
];

/// `text` with credentials replaced by `***`: the userinfo of `scheme://user:pass@host` URLs, the value of
/// query parameters with a secret-sounding name (`?token=`, `&access_token=`, `api_key`, `password`,
/// `signature`, …), what follows `Authorization:`, and the body of tokens with a well-known prefix
/// (`ghp_…`, `github_pat_…`, `glpat-…`, `xoxb-…`, `npm_…`). Borrowed when there is nothing to hide.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut current = Cow::Borrowed(text);
    for pass in [userinfo, query, authorization, tokens] {
        if let Some(changed) = pass(&current) {
            current = Cow::Owned(changed);
        }
    }
    current
}

/// Redacts every string inside a JSON value (keys are left alone: they are field names).
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(r) = redact(s) {
                *s = r;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_json),
        _ => {}
    }
}

/// Replaces byte ranges of `text` (sorted, not overlapping, on char boundaries) with their replacement.
fn splice(text: &str, cuts: &[(usize, usize, &str)]) -> Option<String> {
    if cuts.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for &(start, end, with) in cuts {
        out.push_str(&text[copied..start]);
        out.push_str(with);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Bytes that end a URL's authority (or a parameter value) in running text: the URL syntax's own
/// delimiters, whitespace, and the quotes and brackets logs put around URLs.
fn ends_url_part(b: u8) -> bool {
    b.is_ascii_whitespace()
        || b.is_ascii_control()
        || matches!(
            b,
            b'/' | b'?'
                | b'#'
                | b'"'
                | b'\''
                | b'<'
                | b'>'
                | b'`'
                | b'\\'
                | b'{'
                | b'}'
                | b'|'
                | b'^'
        )
}

/// `scheme://USERINFO@host` → `scheme://***@host`. The last `@` of the authority counts, so that a
/// password with a raw `@` in it is hidden whole; a user name alone is hidden too (GitHub accepts a
/// token as the user name).
fn userinfo(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut cuts = Vec::new();
    let mut done = 0;
    for sep in memchr::memmem::find_iter(bytes, b"://") {
        let start = sep + 3;
        if start <= done || sep == 0 || !bytes[sep - 1].is_ascii_alphanumeric() {
            continue;
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| ends_url_part(b))
            .map_or(bytes.len(), |i| start + i);
        let Some(at) = bytes[start..end].iter().rposition(|&b| b == b'@') else {
            continue;
        };
        let at = start + at;
        if at > start && &text[start..at] != MASK {
            cuts.push((start, at, MASK));
        }
        done = end;
    }
    splice(text, &cuts)
}

/// Whether a query parameter's name says its value is a credential.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "secret",
        "passw",
        "apikey",
        "api_key",
        "api-key",
        "signature",
        "credential",
    ]
    .iter()
    .any(|s| name.contains(s))
        || matches!(name.as_str(), "key" | "sig" | "auth" | "pwd" | "pass")
}

/// `?token=VALUE` / `&access_token=VALUE` (and the other secret names) → `=***`.
fn query(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut cuts = Vec::new();
    let mut done = 0;
    for p in memchr::memchr2_iter(b'?', b'&', bytes) {
        if p < done {
            continue;
        }
        let name_start = p + 1;
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            .count();
        let eq = name_start + name_len;
        if name_len == 0 || bytes.get(eq) != Some(&b'=') {
            continue;
        }
        if !secret_name(&text[name_start..eq]) {
            continue;
        }
        let start = eq + 1;
        // A value may hold `/` and `?` unencoded (RFC 3986 allows both in a query), so they do not end it.
        let end = bytes[start..]
            .iter()
            .position(|&b| {
                matches!(b, b'&' | b'#' | b')' | b',' | b';')
                    || (ends_url_part(b) && b != b'/' && b != b'?')
            })
            .map_or(bytes.len(), |i| start + i);
        if end > start && &text[start..end] != MASK {
            cuts.push((start, end, MASK));
        }
        done = end;
    }
    splice(text, &cuts)
}

/// `Authorization: Bearer VALUE` → `Authorization: Bearer ***` (any scheme word; no scheme: the first word).
fn authorization(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut cuts = Vec::new();
    for needle in [&b"Authorization:"[..], b"authorization:", b"AUTHORIZATION:"] {
        for at in memchr::memmem::find_iter(bytes, needle) {
            let mut i = at + needle.len();
            while bytes.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
                i += 1;
            }
            let word = |from: usize| {
                from + bytes[from..]
                    .iter()
                    .take_while(|b| !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\''))
                    .count()
            };
            let first_end = word(i);
            let scheme = bytes[i..first_end].iter().all(u8::is_ascii_alphabetic)
                && bytes.get(first_end) == Some(&b' ')
                && word(first_end + 1) > first_end + 1;
            let (start, end) = if scheme {
                (first_end + 1, word(first_end + 1))
            } else {
                (i, first_end)
            };
            if end > start && &text[start..end] != MASK {
                cuts.push((start, end, MASK));
            }
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    splice(text, &cuts)
}

/// `ghp_0123…` → `ghp_***`: a known prefix at a word start, then at least 20 token characters with a digit
/// among them (so that names like `npm_config_registry` stay readable).
fn tokens(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut cuts = Vec::new();
    for prefix in TOKEN_PREFIXES {
        for at in memchr::memmem::find_iter(bytes, prefix.as_bytes()) {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let start = at + prefix.len();
            let len = bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                .count();
            let body = &bytes[start..start + len];
            if len >= 20 && body.iter().any(u8::is_ascii_digit) {
                cuts.push((start, start + len, MASK));
            }
        }
    }
    cuts.sort_unstable();
    // `github_pat_` and `ghp_` cannot both match one token, but keep the cut list sound regardless.
    cuts.dedup_by(|later, earlier| later.0 < earlier.1);
    splice(text, &cuts)
}

/// A `MakeWriter` whose writers redact what they write: the fmt layer writes each formatted event with
/// one `write_all`, so a secret can never be split across two writes.
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter(self.0.make_writer_for(meta))
    }
}

/// A writer that passes everything through [`redact`].
pub struct RedactingWriter<W>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> String {
        redact(text).into_owned()
    }

    #[test]
    fn url_userinfo_is_masked_whole() {
        let cases = [
            (
                "git clone https://user:token@github.com/org/repo.git",
                "git clone https://***@github.com/org/repo.git",
            ),
            (
                "remote: https://x-access-token:ghs_abc@github.com/o/r",
                "remote: https://***@github.com/o/r",
            ),
            (
                "origin\thttp://user:s3cret@127.0.0.1:1/x.git (fetch)",
                "origin\thttp://***@127.0.0.1:1/x.git (fetch)",
            ),
            (
                "fatal: unable to access 'https://tok3n@host/x/': denied",
                "fatal: unable to access 'https://***@host/x/': denied",
            ),
            // A raw `@` in the password: the last one ends the userinfo.
            (
                "https://me:p@ss@host.example/x",
                "https://***@host.example/x",
            ),
            ("ssh://git@github.com:22/o/r", "ssh://***@github.com:22/o/r"),
            (
                "two: http://a:b@h1/ and file://c:d@h2",
                "two: http://***@h1/ and file://***@h2",
            ),
            ("https://[::1]:8080/x@y", "https://[::1]:8080/x@y"),
        ];
        for (input, want) in cases {
            assert_eq!(r(input), want, "{input}");
        }
    }

    #[test]
    fn text_without_secrets_is_borrowed_unchanged() {
        for text in [
            "",
            "step `build` done (1.2s, cpu 0.3s, peak rss 12 MiB)",
            "https://github.com/org/repo.git",
            "mail me at ops@example.com",
            "git@github.com:org/repo.git",
            "a && b ? c : d",
            "GET /api?page=2&sort=asc",
            "npm_config_registry_url=https://registry.npmjs.org/",
            "Authorization",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn secret_query_parameters_are_masked_and_others_kept() {
        let cases = [
            (
                "http_post https://hooks.example/x?token=abc123&channel=ops",
                "http_post https://hooks.example/x?token=***&channel=ops",
            ),
            (
                "GET /cb?code=1&access_token=ya29.a0Af-x_y#frag",
                "GET /cb?code=1&access_token=***#frag",
            ),
            (
                "https://s3/x?X-Amz-Credential=AKIA/2024&X-Amz-Signature=deadbeef",
                "https://s3/x?X-Amz-Credential=***&X-Amz-Signature=***",
            ),
            (
                "'https://h/?api_key=k1' failed",
                "'https://h/?api_key=***' failed",
            ),
            (
                "url=https://h/?key=k&sig=s",
                "url=https://h/?key=***&sig=***",
            ),
            ("https://h/?password=p%40ss", "https://h/?password=***"),
        ];
        for (input, want) in cases {
            assert_eq!(r(input), want, "{input}");
        }
    }

    #[test]
    fn authorization_headers_and_known_tokens_are_masked() {
        assert_eq!(
            r("> Authorization: Bearer eyJhbGciOi.x.y"),
            "> Authorization: Bearer ***"
        );
        assert_eq!(
            r("authorization: Basic dXNlcjpwYXNz"),
            "authorization: Basic ***"
        );
        assert_eq!(r("Authorization: sk-live-1234"), "Authorization: ***");
        let ghp = format!("ghp_{}", "a1".repeat(18));
        assert_eq!(r(&format!("token {ghp} used")), "token ghp_*** used");
        let pat = format!("github_pat_11{}", "AbC_9".repeat(10));
        assert_eq!(r(&format!("export T={pat}")), "export T=github_pat_***");
        assert_eq!(
            r("glpat-abcdefghij0123456789 and xoxb-1234-5678-abcdefghijklmnop"),
            "glpat-*** and xoxb-***"
        );
        // Too short, or no digit: names, not tokens.
        for kept in [
            "ghp_short1",
            "npm_config_cache_directory_path",
            "myghp_abcdefghij0123456789x",
        ] {
            assert_eq!(r(kept), kept);
        }
    }

    #[test]
    fn redaction_is_idempotent_and_keeps_json_valid() {
        let text = "https://u:p@h/x?token=t&a=1 Authorization: Bearer b ghp_abcdefghij0123456789";
        let once = r(text);
        assert_eq!(r(&once), once);
        assert!(!once.contains("u:p") && !once.contains("=t&") && !once.contains(" b "));
        let mut v = serde_json::json!({
            "reason": "`git fetch https://me:hunter2@host/r.git` exited with code 128",
            "steps": [{"name": "pull ?token=abc"}],
            "n": 3
        });
        redact_json(&mut v);
        let s = v.to_string();
        assert!(!s.contains("hunter2") && !s.contains("abc"), "{s}");
        assert_eq!(v["n"], 3);
        assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok());
    }

    #[test]
    fn the_writer_redacts_each_write_and_reports_the_whole_buffer_written() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter(&mut out);
            let line = b"$ git clone https://u:secret@h/r.git\n";
            assert_eq!(w.write(line).unwrap(), line.len());
            w.write_all(b"not utf-8 \xff\n").unwrap();
        }
        assert_eq!(out, b"$ git clone https://***@h/r.git\nnot utf-8 \xff\n");
    }

    #[test]
    fn non_ascii_text_around_secrets_stays_intact() {
        assert_eq!(
            r("✗ échec https://ü:ß@hôst/x?token=ünïcode — fin"),
            "✗ échec https://***@hôst/x?token=*** — fin"
        );
    }
}
