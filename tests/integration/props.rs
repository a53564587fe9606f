//! Property tests: the trigger parser on generated lines (valid ones round-trip, arbitrary ones never panic,
//! a forbidden byte in any value rejects its line); `props/queue.rs` has the queue against its model.
//!
//! `PROPTEST_CASES=N` sets the number of cases (default 256).

mod queue;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use t8k_engine::trigger::{self, JobSpec, Kind};

/// `default` cases, or `PROPTEST_CASES` when set, so a long run needs no code change.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---- the trigger parser ----

fn value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
}

/// A valid job, with the line number left at 0 for the file builder to fill in.
fn job() -> impl Strategy<Value = JobSpec> {
    (
        prop_oneof![Just(Kind::Main), Just(Kind::Multi), Just(Kind::Dedicated)],
        value(),
        value(),
        // `command=rollback` takes no force; its own keys are tested in the trigger module.
        value().prop_filter("not rollback", |c| c != "rollback"),
        any::<bool>(),
    )
        .prop_map(|(kind, tenant, site, command, force)| JobSpec {
            kind,
            site: (kind == Kind::Dedicated).then_some(site),
            tenant,
            command,
            line: 0,
            force,
            release: None,
        })
}

/// How one job is spelled: field order, `prod` for main, a default tenant left out, `force=false`
/// spelled out, quoted fields.
#[derive(Debug, Clone)]
struct Spelling {
    order: Vec<usize>,
    prod: bool,
    omit_default_tenant: bool,
    explicit_false: bool,
    quoted: Vec<bool>,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (
        Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<bool>(), 5),
    )
        .prop_map(
            |(order, prod, omit_default_tenant, explicit_false, quoted)| Spelling {
                order,
                prod,
                omit_default_tenant,
                explicit_false,
                quoted,
            },
        )
}

fn spell(job: &JobSpec, s: &Spelling) -> String {
    let kind = match job.kind {
        Kind::Main if s.prod => "prod",
        k => k.as_str(),
    };
    let fields: [Option<String>; 5] = [
        Some(format!("type={kind}")),
        (!(s.omit_default_tenant && job.tenant == "default"))
            .then(|| format!("tenant={}", job.tenant)),
        job.site.as_ref().map(|site| format!("site={site}")),
        Some(format!("command={}", job.command)),
        match (job.force, s.explicit_false) {
            (true, _) => Some("force=true".into()),
            (false, true) => Some("force=false".into()),
            (false, false) => None,
        },
    ];
    s.order
        .iter()
        .filter_map(|&i| {
            let f = fields[i].clone()?;
            Some(if s.quoted[i] { format!("\"{f}\"") } else { f })
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Bytes that may never be part of a value: path, control, shell and non-ASCII characters, and `.` (so
/// `..`). Newline is left out: it ends the line rather than sitting in a value.
fn forbidden() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            "/\\.\0\r\t ;&|$`'\"()<>*?[]{}~!#%=,+:@^"
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
        ),
        (1u8..0x20)
            .prop_filter("newline ends the line", |b| *b != b'\n')
            .prop_map(|b| char::from(b).to_string()),
        Just("\u{7f}".to_string()),
        Just("é".to_string()),
        Just("\u{202e}".to_string()),
        Just("..".to_string()),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    /// Generated files of valid jobs, spelled every way the format allows, parse to exactly those jobs.
    #[test]
    fn valid_files_parse_to_their_jobs(
        lines in proptest::collection::vec((job(), spelling(), 0usize..3), 1..6),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        final_newline in any::<bool>(),
    ) {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut text = String::from(if bom { "\u{feff}" } else { "" });
        let mut expected = Vec::new();
        let mut line = 0;
        for (i, (job, spelling, blanks)) in lines.iter().enumerate() {
            for _ in 0..*blanks {
                text.push_str(end);
                line += 1;
            }
            line += 1;
            text.push_str(&spell(job, spelling));
            if i + 1 < lines.len() || final_newline {
                text.push_str(end);
            }
            expected.push(JobSpec { line, ..job.clone() });
        }
        let jobs = trigger::parse(text.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{text:?} rejected: {e}")))?;
        prop_assert_eq!(&jobs, &expected, "{:?}", text);
        for job in &jobs {
            prop_assert_eq!(&trigger::parse_line(&job.to_line(), job.line).unwrap(), job);
        }
    }

    /// Arbitrary bytes never panic the parser, and a rejection names a line the file has.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let lines = bytes.split(|&b| b == b'\n').count();
        match trigger::parse(&bytes) {
            Ok(jobs) => {
                for job in jobs {
                    for v in [Some(&job.tenant), job.site.as_ref(), Some(&job.command)].into_iter().flatten() {
                        prop_assert!(trigger::validate_value("v", v).is_ok());
                    }
                }
            }
            Err(e) => prop_assert!(e.line <= lines, "{e} in {lines} lines"),
        }
    }

    /// Arbitrary text in the shape of a trigger (keys, values, separators, quotes) never panics either.
    #[test]
    fn trigger_shaped_text_never_panics(
        text in "((type|tenant|site|command|force|x)=[a-z\"., /\r-]{0,8}[,\n]?){0,8}"
    ) {
        if let Ok(jobs) = trigger::parse(text.as_bytes()) {
            for job in jobs {
                prop_assert!(!job.command.contains(['/', '.', ' ', '"', '\r']));
            }
        }
    }

    /// A forbidden byte anywhere in any value of a line among valid ones rejects the file, naming that line.
    #[test]
    fn a_forbidden_byte_in_a_value_rejects_its_line(
        before in proptest::collection::vec(job(), 0..3),
        bad in job(),
        after in proptest::collection::vec(job(), 0..3),
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        poison in forbidden(),
    ) {
        let mut lines: Vec<String> = before.iter().map(JobSpec::to_line).collect();
        let bad_line = lines.len() + 1;
        let mut bad = bad;
        let value = match (which, &mut bad.site) {
            (1, _) => &mut bad.command,
            (2, Some(site)) => site,
            _ => &mut bad.tenant,
        };
        let mut chars: Vec<char> = value.chars().collect();
        chars.insert(at.index(chars.len() + 1), '\u{0}');
        *value = chars.into_iter().collect::<String>().replace('\0', &poison);
        let bad_text = bad.to_line();
        // A `\r` that lands at the end of the line's last value is a CRLF line end, which the
        // format accepts (`valid_files_parse_to_their_jobs` writes such files), not a forbidden byte.
        prop_assume!(!bad_text.ends_with('\r'), "a carriage return before the newline is a CRLF");
        lines.push(bad_text);
        lines.extend(after.iter().map(JobSpec::to_line));
        let text = lines.join("\n") + "\n";
        match trigger::parse(text.as_bytes()) {
            Ok(jobs) => prop_assert!(false, "{text:?} accepted as {jobs:?}"),
            Err(e) => {
                prop_assert_eq!(e.line, bad_line, "{} for {:?}", e, text);
                prop_assert!(e.to_string().starts_with(&format!("line {bad_line}: ")), "{}", e);
            }
        }
    }

    /// Values that are too long or start with `-` are rejected too.
    #[test]
    fn long_and_dash_values_are_rejected(v in value(), extra in "[a-z]{1,10}") {
        let long = format!("{v}{}{extra}", "a".repeat(65 - v.len()));
        let e = trigger::parse(format!("type=main,command={long}").as_bytes()).unwrap_err();
        prop_assert!(e.message.contains("at most 64"), "{}", e);
        let dash = format!("-{}", &v[..v.len().min(63)]);
        let e = trigger::parse(format!("type=main,tenant={dash},command=build").as_bytes()).unwrap_err();
        prop_assert!(e.message.contains("must not start with `-`"), "{}", e);
    }
}
