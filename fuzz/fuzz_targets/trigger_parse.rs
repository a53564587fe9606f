//! Fuzzes the trigger file parser (`trigger::parse`) against its contract: every accepted value is safe for
//! a path, a unit name and an argument, an accepted line says exactly what the job holds, jobs round-trip
//! through `to_line`, and every rejection names a line in one readable message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use t8k_engine::trigger::{self, JobSpec, Kind};

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    // A line as the parser reads it: without its `\r\n` end and without one UTF-8 BOM at its start (a
    // tool that writes a BOM puts it at the start of the file, or of each line when such files are
    // concatenated).
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .map(|raw| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        })
        .collect();
    match trigger::parse(data) {
        Ok(jobs) => accepted(&lines, &jobs),
        Err(e) => rejected(&lines, &e),
    }
}

fn accepted(lines: &[&[u8]], jobs: &[JobSpec]) {
    assert!(!jobs.is_empty(), "an accepted file has at least one job");
    for pair in jobs.windows(2) {
        assert!(pair[0].line < pair[1].line, "jobs out of line order");
    }
    for job in jobs {
        assert!(
            (1..=lines.len()).contains(&job.line),
            "job names line {} of {}",
            job.line,
            lines.len()
        );
        for (key, value) in values(job) {
            assert_safe(key, value);
            trigger::validate_value(key, value)
                .unwrap_or_else(|e| panic!("accepted `{key}={value}` fails validate_value: {e}"));
        }
        assert_eq!(
            job.site.is_some(),
            job.kind == Kind::Dedicated,
            "a site goes with type=dedicated and nothing else: {job:?}"
        );
        same_as_reference(lines[job.line - 1], job);
        let again = trigger::parse_line(&job.to_line(), job.line)
            .unwrap_or_else(|e| panic!("canonical line `{}` is rejected: {e}", job.to_line()));
        assert_eq!(&again, job, "to_line does not round-trip");
    }
    // Every line that holds no job must be blank: a file is all jobs or rejected.
    for (i, raw) in lines.iter().enumerate() {
        if !jobs.iter().any(|j| j.line == i + 1) {
            assert!(
                raw.is_empty(),
                "line {} is neither blank nor a job: {raw:?}",
                i + 1
            );
        }
    }
    // The canonical file of the jobs parses to the same jobs.
    let canonical: String = jobs.iter().map(|j| j.to_line() + "\n").collect();
    let reparsed = trigger::parse(canonical.as_bytes()).expect("the canonical file parses");
    assert_eq!(reparsed.len(), jobs.len());
    for (a, b) in reparsed.iter().zip(jobs) {
        assert_eq!(
            JobSpec {
                line: b.line,
                ..a.clone()
            },
            *b,
            "the canonical file differs"
        );
    }
}

fn values(job: &JobSpec) -> Vec<(&'static str, &str)> {
    let mut v = vec![
        ("tenant", job.tenant.as_str()),
        ("command", job.command.as_str()),
    ];
    if let Some(site) = &job.site {
        v.push(("site", site));
    }
    v
}

/// The guarantee in the trigger module's doc, checked byte by byte rather than through `validate_value`.
fn assert_safe(key: &str, value: &str) {
    assert!(
        (1..=64).contains(&value.len()),
        "`{key}` has {} bytes",
        value.len()
    );
    assert!(
        !value.starts_with('-'),
        "`{key}={value}` reads as an option"
    );
    assert!(!value.contains(".."), "`{key}={value}` climbs a directory");
    for b in value.bytes() {
        assert!(
            b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
            "`{key}` holds byte {b:#04x}: {value:?}"
        );
        assert!(
            !b.is_ascii_control() && !b"/\\ \t$`;&|<>()*?[]{}'\"!#~=,.%".contains(&b),
            "`{key}` holds a path, control or shell byte {b:#04x}"
        );
    }
}

/// An accepted line holds nothing but keys, values, commas and quotes; read it the naive way (drop the
/// quotes, split at commas) and it must say exactly what the parser made of it. This catches any part of
/// a line the parser skipped rather than read.
fn same_as_reference(raw: &[u8], job: &JobSpec) {
    for &b in raw {
        assert!(
            b.is_ascii_alphanumeric() || b"_-=,\"".contains(&b),
            "line {} was accepted with byte {b:#04x} in it: {:?}",
            job.line,
            String::from_utf8_lossy(raw)
        );
    }
    let text: String = String::from_utf8(raw.to_vec())
        .unwrap()
        .chars()
        .filter(|&c| c != '"')
        .collect();
    let (mut kind, mut tenant, mut site, mut command, mut force, mut release) =
        (None, None, None, None, None, None);
    for field in text.split(',') {
        let (key, value) = field
            .split_once('=')
            .expect("an accepted field is key=value");
        let slot = match key {
            "type" => &mut kind,
            "tenant" => &mut tenant,
            "site" => &mut site,
            "command" => &mut command,
            "force" => &mut force,
            "release" => &mut release,
            _ => panic!("accepted unknown key `{key}`"),
        };
        assert!(slot.is_none(), "accepted a duplicate `{key}`");
        *slot = Some(value);
    }
    let kind = match kind {
        Some("main" | "prod") => Kind::Main,
        Some("multi") => Kind::Multi,
        Some("dedicated") => Kind::Dedicated,
        other => panic!("accepted type {other:?}"),
    };
    let force = match force {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => panic!("accepted force={other}"),
    };
    let command = command.expect("accepted without a command");
    let release = release.map(|r| {
        assert_eq!(command, "rollback", "accepted release= on command={command}");
        assert!(!force, "accepted force=true on a rollback");
        let n: u64 = r.parse().expect("accepted a release that is no number");
        assert!(n > 0 && r.bytes().all(|b| b.is_ascii_digit()), "accepted release={r}");
        n
    });
    let expected = JobSpec {
        kind,
        // An empty `tenant=` or `site=` reads as not given (the documented template leaves `site=` empty).
        tenant: tenant.filter(|t| !t.is_empty()).unwrap_or("default").to_string(),
        site: site.filter(|s| !s.is_empty()).map(str::to_string),
        command: command.to_string(),
        line: job.line,
        force,
        release,
    };
    assert_eq!(*job, expected, "the parser and the naive reading differ");
}

fn rejected(lines: &[&[u8]], e: &trigger::ParseError) {
    let shown = e.to_string();
    assert!(
        !shown.chars().any(char::is_control),
        "the message is not one clean line: {shown:?}"
    );
    if e.line == 0 {
        assert!(
            shown.contains("no job lines"),
            "line 0 only for an empty file: {shown}"
        );
        assert!(
            lines.iter().all(|l| l.is_empty()),
            "a file with content is rejected as empty: {shown}"
        );
    } else {
        assert!(
            e.line <= lines.len(),
            "{shown}: the file has {} lines",
            lines.len()
        );
        assert!(
            shown.starts_with(&format!("line {}: ", e.line)),
            "the message does not start with its line: {shown}"
        );
        assert!(
            !lines[e.line - 1].is_empty(),
            "a blank line is blamed: {shown}"
        );
    }
}
