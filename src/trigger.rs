//! Owns the trigger file format: parses and validates `key=value` lines into job specs; it never touches
//! the filesystem, so every value it returns is already safe for a path, a unit name or an argument.

use std::fmt;

/// Which install a job targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The main install (`prod` is an alias).
    Main,
    /// The multi-tenant install (same paths as main, tenant-specific data).
    Multi,
    /// A dedicated install under `sites/<SITE>/`.
    Dedicated,
}

impl Kind {
    /// The canonical name, also the script's file stem.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Multi => "multi",
            Kind::Dedicated => "dedicated",
        }
    }

    /// Every kind, in the order `check` reports them.
    pub const ALL: [Kind; 3] = [Kind::Main, Kind::Multi, Kind::Dedicated];

    fn parse(value: &str) -> Option<Kind> {
        match value {
            "main" | "prod" => Some(Kind::Main),
            "multi" => Some(Kind::Multi),
            "dedicated" => Some(Kind::Dedicated),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated job line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The install type.
    pub kind: Kind,
    /// The tenant (`default` unless given).
    pub tenant: String,
    /// The site, present exactly for dedicated jobs.
    pub site: Option<String>,
    /// The script function to call.
    pub command: String,
    /// 1-based line number in the trigger file.
    pub line: usize,
    /// Build everything even if nothing changed (`force=true`).
    pub force: bool,
    /// The release a `command=rollback` puts back (`release=N`); `None`: the previous one.
    pub release: Option<u64>,
}

/// The command that puts a kept release back: the engine calls the script's `fn rollback(job, release)`.
pub const ROLLBACK: &str = "rollback";

impl JobSpec {
    /// The line as a canonical trigger line (what `trigger` writes).
    pub fn to_line(&self) -> String {
        let mut line = format!("type={},tenant={}", self.kind, self.tenant);
        if let Some(site) = &self.site {
            line.push_str(",site=");
            line.push_str(site);
        }
        line.push_str(",command=");
        line.push_str(&self.command);
        if self.force {
            line.push_str(",force=true");
        }
        if let Some(release) = self.release {
            line.push_str(&format!(",release={release}"));
        }
        line
    }

    /// A short name of what the job targets, e.g. `dedicated/acme` or `multi/blue`.
    pub fn target_name(&self) -> String {
        match (&self.kind, &self.site) {
            (_, Some(site)) => format!("{}/{site}", self.kind),
            (Kind::Multi, None) => format!("multi/{}", self.tenant),
            (kind, None) => kind.to_string(),
        }
    }
}

/// Why a trigger file was rejected; `line` is 1-based, 0 for the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The offending line.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

const KEYS: &str = "type, tenant, site, command, force, release";

/// Parses a whole trigger file; any bad line rejects the file so that none of its jobs run.
pub fn parse(bytes: &[u8]) -> Result<Vec<JobSpec>, ParseError> {
    parse_with_notes(bytes).map(|(jobs, _)| jobs)
}

/// Parses a whole trigger file like [`parse`], and also returns what was read leniently, one note per
/// case (`line 1: empty `site=` ignored ...`), for the log: the documented template
/// `type=TYPE,tenant=TENANT,site=SITE,command=build` filled for main leaves `site=` empty.
pub fn parse_with_notes(bytes: &[u8]) -> Result<(Vec<JobSpec>, Vec<String>), ParseError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    // Lines are split here rather than by csv so that line numbers count blank lines and a quoted
    // field can never span lines.
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // A byte-order mark is ignored where a tool that writes one puts it: at the start of the file,
        // or of a line when such files are concatenated. Anywhere else it is part of a field.
        let raw = raw.strip_prefix(BOM).unwrap_or(raw);
        if raw.is_empty() {
            continue;
        }
        // csv would end the record at a bare carriage return and the rest of the line would go unread.
        if raw.contains(&b'\r') {
            return Err(ParseError {
                line,
                message: "carriage return inside the line; end lines with \\n or \\r\\n only"
                    .into(),
            });
        }
        // Without quotes a line's csv fields are just its comma-separated parts,
        // and building a csv reader per line costs far more than the split: 100,000 lines took seconds.
        if !raw.contains(&b'"') {
            let fields = utf8_fields(raw.split(|&b| b == b','), line)?;
            jobs.push(parse_fields(&fields, line, &mut notes)?);
            continue;
        }
        if raw.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
            return Err(ParseError {
                line,
                message: "unbalanced quote (a quoted field must end on its own line)".into(),
            });
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(raw);
        let mut record = csv::ByteRecord::new();
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                return Err(ParseError {
                    line,
                    message: format!("unreadable csv: {e}"),
                });
            }
        }
        let fields = utf8_fields(record.iter(), line)?;
        jobs.push(parse_fields(&fields, line, &mut notes)?);
    }
    if jobs.is_empty() {
        return Err(ParseError {
            line: 0,
            message: "no job lines (the file is empty)".into(),
        });
    }
    Ok((jobs, notes))
}

/// Parses a single line, as `--job` and `trigger` take it.
pub fn parse_line(text: &str, line: usize) -> Result<JobSpec, ParseError> {
    let mut jobs = parse(text.as_bytes()).map_err(|e| ParseError {
        line,
        message: e.message,
    })?;
    match jobs.len() {
        // The text is parsed as a file of its own, so its job says line 1; it is line `line` of the caller's.
        1 => Ok(JobSpec {
            line,
            ..jobs.remove(0)
        }),
        n => Err(ParseError {
            line,
            message: format!("expected one job line, found {n}"),
        }),
    }
}

/// A line's values by key, each checked on its own; `Some("")` is an empty `tenant=` or `site=`.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    tenant: Option<String>,
    site: Option<String>,
    command: Option<String>,
    force: Option<String>,
    release: Option<String>,
}

/// A line's fields as text, refusing the line when one is not UTF-8.
fn utf8_fields<'a>(
    fields: impl Iterator<Item = &'a [u8]>,
    line: usize,
) -> Result<Vec<&'a str>, ParseError> {
    fields
        .map(|f| {
            std::str::from_utf8(f).map_err(|_| ParseError {
                line,
                message: "not valid UTF-8".into(),
            })
        })
        .collect()
}

fn parse_fields(
    fields: &[&str],
    line: usize,
    notes: &mut Vec<String>,
) -> Result<JobSpec, ParseError> {
    spec_of(collect_fields(fields, line)?, line, notes)
}

/// Each `key=value` of a line into its slot: known keys, once each, values valid for their key.
fn collect_fields(fields: &[&str], line: usize) -> Result<Fields, ParseError> {
    let err = |message: String| ParseError { line, message };
    let mut f = Fields::default();
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return Err(err(format!("field `{}` is not key=value", shown(field))));
        };
        let slot = match key {
            "type" => &mut f.kind,
            "tenant" => &mut f.tenant,
            "site" => &mut f.site,
            "command" => &mut f.command,
            "force" => &mut f.force,
            "release" => &mut f.release,
            _ => {
                return Err(err(format!(
                    "unknown key `{}` (expected one of: {KEYS})",
                    shown(key)
                )));
            }
        };
        if slot.is_some() {
            return Err(err(format!("duplicate key `{key}`")));
        }
        // An empty optional value reads as "not given", as the concierge read it (`${tenant:-default}`):
        // the documented four-key template leaves `site=` empty for main and multi. A dedicated job
        // still needs its site, and every value that is given stays strict.
        if value.is_empty() && matches!(key, "tenant" | "site") {
            *slot = Some(String::new());
            continue;
        }
        validate_value(key, value).map_err(err)?;
        *slot = Some(value.to_string());
    }
    Ok(f)
}

/// The job a line's fields describe: required keys present, `site` only (and always) for dedicated,
/// empty optional values read as not given (noted).
fn spec_of(f: Fields, line: usize, notes: &mut Vec<String>) -> Result<JobSpec, ParseError> {
    let err = |message: String| ParseError { line, message };
    let Fields {
        kind,
        tenant,
        site,
        command,
        force,
        release,
    } = f;
    let tenant = match tenant {
        Some(t) if t.is_empty() => {
            notes.push(format!(
                "line {line}: empty `tenant=` read as tenant=default"
            ));
            None
        }
        other => other,
    };
    let kind_value = kind.ok_or_else(|| err("missing key `type`".into()))?;
    let kind = Kind::parse(&kind_value).ok_or_else(|| {
        err(format!(
            "unknown type `{kind_value}` (expected main, prod, multi or dedicated)"
        ))
    })?;
    let command = command.ok_or_else(|| err("missing key `command`".into()))?;
    let site = match site {
        Some(s) if s.is_empty() && kind != Kind::Dedicated => {
            notes.push(format!(
                "line {line}: empty `site=` ignored (only type=dedicated uses a site)"
            ));
            None
        }
        Some(s) if s.is_empty() => {
            return Err(err(
                "type=dedicated needs a `site`, and `site=` is empty; name the site, e.g. site=acme"
                    .into(),
            ));
        }
        other => other,
    };
    match (kind, &site) {
        (Kind::Dedicated, None) => return Err(err("type=dedicated needs a `site`".into())),
        (Kind::Main | Kind::Multi, Some(_)) => {
            return Err(err(format!(
                "`site` is only valid with type=dedicated, not type={kind_value}"
            )));
        }
        _ => {}
    }
    let force = match force.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(err(format!("`force` must be true or false, not `{other}`"))),
    };
    let release = match release {
        None => None,
        Some(_) if command != ROLLBACK => {
            return Err(err(format!(
                "`release` is only valid with command=rollback, not command={command}"
            )));
        }
        Some(n) => Some(release_number(&n).map_err(err)?),
    };
    if command == ROLLBACK && force {
        return Err(err(
            "command=rollback takes no `force`: it puts back a release that was built already"
                .into(),
        ));
    }
    Ok(JobSpec {
        kind,
        tenant: tenant.unwrap_or_else(|| "default".into()),
        site,
        command,
        line,
        force,
        release,
    })
}

/// A release number as `release=` and `rollback --to` take it: digits only, from 1.
pub fn release_number(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 && value.bytes().all(|b| b.is_ascii_digit()) && value.len() <= 18 => Ok(n),
        _ => Err(format!(
            "`release` must be a release number from `t8k-engine releases` (such as release=12), not `{}`",
            shown(value)
        )),
    }
}

/// Values must match `[A-Za-z0-9_-]{1,64}` and not start with `-`, so they can never be read as an
/// option, a path component such as `..`, or a shell word.
pub fn validate_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("empty value for `{key}`"));
    }
    if value.len() > 64 {
        return Err(format!(
            "value for `{key}` is {} bytes long (at most 64)",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "value `{}` for `{key}` contains {bad:?}; only letters, digits, `_` and `-` are allowed",
            shown(value)
        ));
    }
    if value.starts_with('-') {
        return Err(format!(
            "value `{value}` for `{key}` must not start with `-`"
        ));
    }
    Ok(())
}

/// Escapes control characters and shortens long input so that error messages stay one readable line.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(40).flat_map(char::escape_debug).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// A trigger's bytes as they may be quoted in a reason file: control characters, a byte-order mark and
/// bidirectional formatting characters (which could drive a terminal or reorder what a reader sees) are
/// escaped, invalid UTF-8 is replaced; lines and tabs stay, and CRLF reads as a plain line end.
pub fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let hidden = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\t' => out.push(c),
            c if c.is_control() || hidden => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Whether a directory entry's name is a trigger file (`build-*.csv`, not a dot-file).
pub fn is_trigger_name(name: &str) -> bool {
    name.starts_with("build-") && name.ends_with(".csv") && name.len() > "build-.csv".len()
}

#[cfg(test)]
mod tests;
