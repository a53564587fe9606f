//! Unit tests of the trigger format: what parses, what is refused and with which line, and the notes.

use super::*;

fn one(text: &str) -> JobSpec {
    let jobs = parse(text.as_bytes()).unwrap();
    assert_eq!(jobs.len(), 1);
    jobs.into_iter().next().unwrap()
}

fn fails(text: &[u8]) -> ParseError {
    parse(text).unwrap_err()
}

#[test]
fn the_documented_lines_parse() {
    let j = one("type=main,tenant=default,command=build\n");
    assert_eq!(
        (
            j.kind,
            j.tenant.as_str(),
            j.site.as_deref(),
            j.command.as_str()
        ),
        (Kind::Main, "default", None, "build")
    );
    let j = one("type=dedicated,site=SITE_ID,command=build\n");
    assert_eq!(
        (j.kind, j.site.as_deref()),
        (Kind::Dedicated, Some("SITE_ID"))
    );
    assert_eq!(j.tenant, "default");
}

#[test]
fn the_documented_template_filled_for_main_parses_with_notes() {
    let (jobs, notes) =
        parse_with_notes(b"type=main,tenant=default,site=,command=build\n").unwrap();
    assert_eq!((jobs[0].kind, jobs[0].site.as_deref()), (Kind::Main, None));
    assert_eq!(
        notes,
        ["line 1: empty `site=` ignored (only type=dedicated uses a site)"]
    );
    let (jobs, notes) =
        parse_with_notes(b"type=dedicated,tenant=,site=acme,command=build\n").unwrap();
    assert_eq!(jobs[0].tenant, "default");
    assert_eq!(notes, ["line 1: empty `tenant=` read as tenant=default"]);
    let (_, notes) = parse_with_notes(b"type=multi,tenant=blue,command=build\n").unwrap();
    assert!(notes.is_empty());
    // A given site on main stays an error: it names something the job would not build.
    assert!(
        fails(b"type=main,site=acme,command=build")
            .message
            .contains("only valid with type=dedicated")
    );
}

#[test]
fn prod_is_main() {
    assert_eq!(one("type=prod,command=build").kind, Kind::Main);
}

#[test]
fn bom_crlf_missing_newline_and_blank_lines_are_tolerated() {
    let jobs = parse(
        b"\xEF\xBB\xBFtype=main,command=build\r\n\r\n\n\xEF\xBB\xBFtype=multi,tenant=t2,command=build",
    )
    .unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].line, 1);
    assert_eq!(
        (jobs[1].kind, jobs[1].tenant.as_str(), jobs[1].line),
        (Kind::Multi, "t2", 4)
    );
}

#[test]
// A table of bad lines, one case each: long as the list of ways a line can be wrong.
fn bad_lines_are_rejected_with_their_line_number() {
    let cases: &[(&[u8], usize, &str)] = &[
        (
            b"type=main,command=build\ntype=main,comand=build\n",
            2,
            "unknown key `comand`",
        ),
        (
            b"type=main,type=multi,command=build",
            1,
            "duplicate key `type`",
        ),
        (b"type=main,type=,command=build", 1, "duplicate key `type`"),
        (b"type=,command=build", 1, "empty value for `type`"),
        (b"type=main,command=", 1, "empty value for `command`"),
        (
            b"type=main,command=build,force=",
            1,
            "empty value for `force`",
        ),
        (
            b"type=dedicated,site=,command=build",
            1,
            "needs a `site`, and `site=` is empty",
        ),
        (b"type=main,command=build;rm", 1, "contains ';'"),
        (b"type=main,command=-rf", 1, "must not start with `-`"),
        (
            b"type=main,command=build,force=yes",
            1,
            "`force` must be true or false",
        ),
        (
            b"type=dedicated,site=../etc,command=build",
            1,
            "contains '.'",
        ),
        (b"type=dedicated,command=build", 1, "needs a `site`"),
        (
            b"type=main,site=x,command=build",
            1,
            "only valid with type=dedicated",
        ),
        (b"type=staging,command=build", 1, "unknown type `staging`"),
        (b"type=main", 1, "missing key `command`"),
        (b"command=build", 1, "missing key `type`"),
        (b"type=main,build", 1, "is not key=value"),
        (b"type=main,command=b\xffd", 1, "not valid UTF-8"),
        (b"type=main,command=a\x00b", 1, "contains '\\0'"),
        (b"", 0, "empty"),
        (b"\n\r\n", 0, "empty"),
        (b"type=main,\"command=bu\nild\"", 1, "unbalanced quote"),
        (
            b"type=main,\rcommand=build",
            1,
            "carriage return inside the line",
        ),
        // Found by fuzz/fuzz_targets/trigger_parse.rs: csv stopped at the bare CR, so the NULs and the
        // bad `force` after it were never read and the line was accepted.
        (
            b"type=main,command=build\r\0\0build,force=tru~e",
            1,
            "carriage return inside the line",
        ),
        (b"type=main,command=build\n\r\r\n", 2, "carriage return"),
        (
            b"type=main,\xEF\xBB\xBFcommand=build",
            1,
            "unknown key `\\u{feff}command`",
        ),
        (b"type=main,,command=build", 1, "field `` is not key=value"),
    ];
    for (input, line, needle) in cases {
        let e = fails(input);
        assert_eq!(e.line, *line, "{input:?}: {e}");
        assert!(
            e.to_string().contains(needle),
            "{input:?}: `{e}` lacks `{needle}`"
        );
    }
}

#[test]
fn printable_escapes_what_a_terminal_would_act_on() {
    assert_eq!(
        printable(b"type=main\r\ncommand=\x1b[2Jx\0\t\xff\n\xe2\x80\xaeabc"),
        "type=main\ncommand=\\u{1b}[2Jx\\u{0}\t\u{fffd}\n\\u{202e}abc"
    );
}

#[test]
fn value_length_is_capped() {
    let ok = format!("type=main,command={}", "a".repeat(64));
    assert!(parse(ok.as_bytes()).is_ok());
    let long = format!("type=main,command={}", "a".repeat(65));
    assert!(fails(long.as_bytes()).message.contains("at most 64"));
}

#[test]
fn quoted_fields_are_csv_and_still_validated() {
    assert_eq!(one("\"type=main\",command=build").kind, Kind::Main);
    assert!(
        fails(b"type=main,\"command=a,b\"")
            .message
            .contains("contains ','")
    );
}

#[test]
fn to_line_round_trips() {
    for text in [
        "type=main,tenant=default,command=build",
        "type=dedicated,tenant=t,site=s1,command=deploy",
        "type=multi,tenant=t,command=build,force=true",
    ] {
        let spec = parse_line(text, 1).unwrap();
        assert_eq!(spec.to_line(), text);
        assert_eq!(parse_line(&spec.to_line(), 1).unwrap(), spec);
    }
}

#[test]
fn parse_line_numbers_the_job_as_asked() {
    // Found by fuzz/fuzz_targets/trigger_parse.rs: the job said line 1 while errors said `line`.
    let spec = parse_line("type=multi,tenant=blue,command=build", 4).unwrap();
    assert_eq!(spec.line, 4);
    assert_eq!(parse_line(&spec.to_line(), spec.line).unwrap(), spec);
    assert_eq!(parse_line("type=multi", 4).unwrap_err().line, 4);
}

#[test]
fn trigger_names() {
    assert!(is_trigger_name("build-1732000000.csv"));
    assert!(is_trigger_name("build-01J0-x.csv"));
    for name in [
        "build-.csv",
        "build.csv",
        ".build-1.csv",
        "build-1.csv.tmp",
        "rebuild-1.csv",
        "build-1.CSV",
    ] {
        assert!(!is_trigger_name(name), "{name}");
    }
}
