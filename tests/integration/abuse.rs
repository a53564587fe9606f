//! Hostile input against the real binary: trigger files and names, scripts, host-function arguments and
//! processes that try to inject, escape, hang or exhaust the engine. Each must be refused or stopped with
//! a reason that says what, where and why; nothing of a refused trigger may run; and the engine must go on
//! to the next trigger. tests/integration/run.rs has the plain cases (a symlink, a FIFO, a directory, an oversized
//! file, a runaway loop, a timeout); these go further. `abuse/paths.rs` sweeps the paths the engine
//! itself creates, reads and renames.

/// Every path the engine touches as a link, a FIFO, a hard link, a directory or another user's file.
mod paths;
/// Scripts that run away (loops, recursion, memory, threads) and host functions given hostile arguments.
mod scripts;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{MARKING, Root, alive, marking_root, text, wait_until};

fn write(root: &Root, name: impl AsRef<OsStr>, bytes: &[u8]) {
    std::fs::write(root.path.join("state").join(name.as_ref()), bytes).unwrap();
}

/// What a reason file may contain: text a terminal shows as it is, nothing that drives it or reorders it.
fn assert_printable(what: &str, text: &str) {
    let bad = text.chars().find(|&c| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{feff}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    });
    assert!(bad.is_none(), "{what} holds {bad:?}: {text:?}");
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the script"))
        + 1
}

fn first_line(root: &Root, name: &str) -> String {
    root.reason(name).lines().next().unwrap().to_string()
}

#[test]
fn hostile_values_are_set_aside_naming_file_line_and_why_and_nothing_of_them_runs() {
    let root = marking_root();
    let long = format!("type=main,tenant={},command=build", "t".repeat(65));
    // Each file's first line is valid: a bad second line must keep it from running too.
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "build-a01.csv",
            b"type=dedicated,site=../../etc,command=build",
            "value `../../etc` for `site` contains '.'",
        ),
        (
            "build-a02.csv",
            b"type=multi,tenant=..,command=build",
            "value `..` for `tenant` contains '.'",
        ),
        (
            "build-a03.csv",
            b"type=main,command=build;reboot",
            "contains ';'",
        ),
        (
            "build-a04.csv",
            b"type=main,command=$(reboot)",
            "value `$(reboot)` for `command` contains '$'",
        ),
        (
            "build-a05.csv",
            b"type=main,command=`reboot`",
            "contains '`'",
        ),
        (
            "build-a06.csv",
            b"type=main,command=build|reboot",
            "contains '|'",
        ),
        (
            "build-a07.csv",
            b"type=main,command=build&reboot",
            "contains '&'",
        ),
        (
            "build-a08.csv",
            b"type=main,command='build'",
            "contains '\\''",
        ),
        (
            "build-a09.csv",
            b"type=main,command=bu\"il\"d",
            "contains '\"'",
        ),
        (
            "build-a10.csv",
            b"type=main,command=build now",
            "contains ' '",
        ),
        (
            "build-a11.csv",
            b"type=main,command=build\"",
            "unbalanced quote",
        ),
        (
            "build-a12.csv",
            b"type=main,command=bu\0ild",
            "value `bu\\0ild` for `command` contains '\\0'",
        ),
        (
            "build-a13.csv",
            b"type=main,command=\x1b[2Jbuild",
            "value `\\u{1b}[2Jbuild` for `command` contains '\\u{1b}'",
        ),
        (
            "build-a14.csv",
            b"type=main,command=b\xffd",
            "not valid UTF-8",
        ),
        (
            "build-a15.csv",
            // A byte-order mark is ignored at the start of the file or of a line; inside one it is a
            // stray character that no key matches.
            b"type=main,\xef\xbb\xbfcommand=build",
            "unknown key `\\u{feff}command`",
        ),
        (
            "build-a16.csv",
            b"type=main,command=build,command=deploy",
            "duplicate key `command`",
        ),
        (
            "build-a17.csv",
            b"type=main,command=build,\x1b]0;owned\x07=1",
            "unknown key `\\u{1b}]0;owned\\u{7}`",
        ),
        (
            "build-a18.csv",
            b"type=main,command=-rf",
            "must not start with `-`",
        ),
        ("build-a19.csv", long.as_bytes(), "(at most 64)"),
        (
            "build-a20.csv",
            b"type=main,\xe2\x80\xaecommand=build",
            "unknown key `\\u{202e}command`",
        ),
    ];
    for (name, line, _) in cases {
        let mut bytes = b"type=main,command=build\n".to_vec();
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        write(&root, name, &bytes);
    }
    write(&root, "build-a21.csv", b"");
    write(&root, "build-a22.csv", b"\n\r\n\n");
    // Within the size cap by default, a file is as large as a producer likes: 10 MB, 100,000 lines.
    let ten_mb = b"type=main,command=build\n".repeat(10 << 20 >> 4)[..10 << 20].to_vec();
    write(&root, "build-a23.csv", &ten_mb);
    let lines = b"type=main,command=b\n".repeat(100_000);
    write(&root, "build-a24.csv", &lines);
    // Accepted: a byte-order mark at the start of a line (files concatenated from a tool that writes
    // one), CRLF line ends, blank lines, and `..` inside a file name
    // (a name holds no `/`, so it is no path).
    write(
        &root,
        "build-b1.csv",
        b"\xef\xbb\xbftype=main,command=build\r\n\r\n\xef\xbb\xbftype=multi,tenant=t-1,command=build\r\n",
    );
    write(&root, "build-..csv", b"type=main,command=build\n");
    write(
        &root,
        "build-zz.csv",
        b"type=dedicated,site=s_1,command=build\n",
    );

    let started = Instant::now();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        root.marks(),
        [
            "build-..csv:1:main:default:",
            "build-b1.csv:1:main:default:",
            "build-b1.csv:3:multi:t-1:",
            "build-zz.csv:1:dedicated:default:s_1",
        ],
        "only the good files ran"
    );
    for (name, _, why) in cases {
        let first = first_line(&root, name);
        assert!(
            first.starts_with(&format!("{name} line 2: ")) && first.contains(why),
            "{name}: `{first}` lacks `{why}`"
        );
        assert!(
            first.ends_with(&format!(
                "no job in it ran: fix failed/{name}, then `t8k-engine retry {name}`"
            )),
            "{first}"
        );
    }
    for name in ["build-a21.csv", "build-a22.csv"] {
        assert!(
            first_line(&root, name)
                .starts_with(&format!("{name} no job lines (the file is empty)")),
            "{}",
            root.reason(name)
        );
    }
    for (name, size) in [("build-a23.csv", 10 << 20), ("build-a24.csv", 2_000_000)] {
        let reason = root.reason(name);
        assert!(
            reason.starts_with(&format!(
                "{name}: file is {size} bytes, larger than the 4096-byte limit for a trigger"
            )),
            "{reason}"
        );
        assert!(reason.len() < 1000, "the content is not copied: {reason}");
    }
    for name in root.failed() {
        let reason = root.reason(&name);
        assert_printable(&name, &reason);
    }
    // The set-aside file itself is kept byte for byte, for the operator to inspect and fix.
    assert_eq!(
        std::fs::read(root.path.join("state/failed/build-a13.csv")).unwrap(),
        b"type=main,command=build\ntype=main,command=\x1b[2Jbuild\n"
    );
    let log = root.log();
    assert_printable("build.log", &log);
    assert!(root.inbox().is_empty() && root.work().is_empty());
}

#[test]
fn a_bad_last_line_of_100000_is_found_before_anything_runs() {
    let root = Root::with_config("max_trigger_bytes = 4194304\n");
    root.script("main.rhai", MARKING);
    let mut bytes = b"type=main,command=build\n".repeat(99_999);
    bytes.extend_from_slice(b"type=main,command=build;reboot\n");
    write(&root, "build-1.csv", &bytes);
    write(&root, "build-2.csv", b"type=main,command=build\n");
    let started = Instant::now();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(root.marks(), ["build-2.csv:1:main:default:"]);
    assert!(
        first_line(&root, "build-1.csv").starts_with(
            "build-1.csv line 100000: value `build;reboot` for `command` contains ';'"
        ),
        "{}",
        first_line(&root, "build-1.csv")
    );
}

#[test]
fn special_files_links_and_odd_names_are_set_aside_without_reading_them() {
    let root = marking_root();
    let state = root.path.join("state");
    let secret = "TOP-SECRET-7f3a9c";
    let secret_file = root.path.join("secret.txt");
    std::fs::write(&secret_file, format!("password={secret}\n")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", state.join("build-s1.csv")).unwrap();
    std::os::unix::fs::symlink(&secret_file, state.join("build-s2.csv")).unwrap();
    // A hard link is a regular file with a second name elsewhere; its content may be another file's
    // (a secret, or a file its owner still writes), so it is refused unread and moved aside as it is:
    // the other name keeps its data.
    let outside = root.path.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let valid = outside.join("valid.csv");
    std::fs::write(&valid, "type=main,command=build\n").unwrap();
    std::fs::hard_link(&valid, state.join("build-h1.csv")).unwrap();
    std::fs::hard_link(&secret_file, state.join("build-h2.csv")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(state.join("build-k1.csv")).unwrap();
    let device = state.join("build-d1.csv");
    // SAFETY: geteuid has no arguments and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        let path = std::ffi::CString::new(device.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; makedev(1, 3) is /dev/null.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    } else {
        eprintln!("not root: the device-node case is skipped");
    }
    let odd: Vec<Vec<u8>> = vec![
        b"build-a\nb.csv".to_vec(),
        b"build-\x1b[31mred.csv".to_vec(),
        b"build-\xff\xfe.csv".to_vec(),
        b"build-a;b.csv".to_vec(),
        b"build-a|b.csv".to_vec(),
        format!("build-{}.csv", "n".repeat(200)).into_bytes(),
    ];
    for name in &odd {
        write(&root, OsStr::from_bytes(name), b"type=main,command=build\n");
    }
    write(&root, "build-zz.csv", b"type=main,command=build\n");

    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(root.marks(), ["build-zz.csv:1:main:default:"]);
    let starts = |name: &str, what: &str| {
        let reason = root.reason(name);
        assert!(
            reason.starts_with(&format!("{name}: {what}")),
            "{name}: {reason}"
        );
    };
    starts("build-s1.csv", "a symlink is not a regular file");
    starts("build-s2.csv", "a symlink is not a regular file");
    starts(
        "build-h1.csv",
        "file is a hard link (2 names); write trigger files as new files",
    );
    starts("build-h2.csv", "file is a hard link (2 names)");
    starts("build-k1.csv", "a socket is not a regular file");
    if is_root {
        starts("build-d1.csv", "a device is not a regular file");
    }
    assert_eq!(
        std::fs::read_to_string(&valid).unwrap(),
        "type=main,command=build\n",
        "the other name of the hard link keeps its content"
    );
    assert_eq!(std::fs::metadata(&valid).unwrap().nlink(), 2);
    assert!(
        std::fs::read_to_string(&secret_file)
            .unwrap()
            .contains(secret)
    );
    assert!(
        std::fs::symlink_metadata(root.path.join("state/failed/build-s1.csv"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink itself is moved aside, not its target"
    );

    // Odd names are renamed to safe ones, with the original bytes in the details.
    let failed = root.failed();
    for name in &odd {
        let shown = format!("{:?}", String::from_utf8_lossy(name));
        let holder = failed
            .iter()
            .find(|f| root.reason(f).contains(&shown))
            .unwrap_or_else(|| panic!("no reason quotes {shown}; failed/ has {failed:?}"));
        let reason = root.reason(holder);
        assert!(
            reason.starts_with(&format!("{holder}: unsafe file name")),
            "{reason}"
        );
        assert!(
            holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{holder}"
        );
    }
    for collided in ["build-a_b.csv", "build-a_b.csv.1", "build-a_b.csv.2"] {
        assert!(failed.iter().any(|f| f == collided), "{failed:?}");
    }

    let everything = format!(
        "{}{}{}",
        root.log(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in &failed {
        let reason = root.reason(name);
        assert!(
            !reason.contains(secret),
            "{name} leaks the secret: {reason}"
        );
        assert!(
            !reason.contains("root:"),
            "{name} quotes /etc/shadow: {reason}"
        );
        assert_printable(name, &reason);
    }
    assert!(!everything.contains(secret), "{everything}");
    assert_printable("the log and output", &everything);
}

#[test]
fn the_daemon_survives_a_burst_of_hostile_triggers() {
    let root = marking_root();
    let state = root.path.join("state");
    let secret = "TOP-SECRET-c0ffee";
    std::fs::write(root.path.join("secret.txt"), secret).unwrap();
    let daemon = root.daemon(&[]);
    root.wait_watching();
    std::os::unix::fs::symlink(root.path.join("secret.txt"), state.join("build-1.csv")).unwrap();
    write(&root, "build-2.csv", b"type=main,command=\0\x1b[2J\n");
    write(
        &root,
        "build-3.csv",
        &b"type=main,command=build\n".repeat(1 << 16),
    );
    std::fs::hard_link(root.path.join("secret.txt"), state.join("build-4.csv")).unwrap();
    let fifo = std::ffi::CString::new(state.join("build-5.csv").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    write(
        &root,
        OsStr::from_bytes(b"build-\x1b]0;x\x07.csv"),
        b"type=main,command=build\n",
    );
    write(&root, "build-9.csv", b"type=main,command=build\n");
    wait_until(Duration::from_secs(30), "the good trigger to run", || {
        root.marks() == ["build-9.csv:1:main:default:"]
    });
    wait_until(
        Duration::from_secs(10),
        "every bad trigger set aside and the good one done",
        || root.failed().len() == 6 && root.inbox().is_empty() && root.work().is_empty(),
    );
    let mut daemon = daemon;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon is still running:\n{}",
        root.daemon_out()
    );
    let out = root.daemon_out();
    assert!(
        !out.contains(secret) && !root.log().contains(secret),
        "{out}"
    );
    assert_printable("the daemon's output", &out);
    for name in root.failed() {
        assert!(!root.reason(&name).contains(secret));
    }
}

/// Pids listed one per line in `file` (empty when it does not exist yet).
fn pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Live processes whose environment carries this root's job tag (`T8K_ENGINE_TRIGGER=<root>/state/...`).
fn tagged_with(root: &Root) -> Vec<i32> {
    let tag = format!(
        "T8K_ENGINE_TRIGGER={}",
        root.path.join("state/.t8k-engine/work/").display()
    );
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|e| e.starts_with(tag.as_bytes()))
            })
        })
        .collect()
}

#[test]
fn hostile_processes_are_all_killed_and_the_result_comes_promptly() {
    let root = Root::new();
    let p = |name: &str| root.path.join(name).display().to_string();
    let script = format!(
        r#"
fn build(job) {{ run("mark", ["still running"]); }}
fn stubborn(job) {{ step("stubborn", || run("sh", ["-c", "trap '' TERM; echo $$ > {stubborn}; exec sleep 300"], #{{ timeout: 1 }})); }}
fn bomb(job) {{ step("bomb", || run("sh", ["-c", "i=0; while [ $i -lt 50 ]; do if [ $((i % 5)) = 0 ]; then setsid sh -c 'trap \"\" TERM; echo $$ >> {bomb}; exec sleep 300' & else sleep 300 & echo $! >> {bomb}; fi; i=$((i+1)); done; while [ $(wc -l < {bomb}) -lt 50 ]; do sleep 0.01; done; wait"], #{{ timeout: 1 }})); }}
fn escapee(job) {{ step("escapee", || run("sh", ["-c", "setsid sh -c 'echo $$ > {escapee}; exec sleep 300' & while [ ! -s {escapee} ]; do sleep 0.01; done; echo started"])); run("mark", ["escapee step done"]); }}
fn group(job) {{ step("group", || run("sh", ["-c", "set -m; sleep 300 & echo $! > {group}"])); run("mark", ["group step done"]); }}
fn holder(job) {{ step("holder", || run("sh", ["-c", "(trap '' TERM; sleep 300) & echo $! > {holder}; exit 0"])); run("mark", ["holder step done"]); }}
"#,
        stubborn = p("stubborn.pid"),
        bomb = p("bomb.pids"),
        escapee = p("escapee.pid"),
        group = p("group.pid"),
        holder = p("holder.pid"),
    );
    root.script("main.rhai", &script);
    for (i, c) in ["stubborn", "bomb", "escapee", "group", "holder", "build"]
        .iter()
        .enumerate()
    {
        root.trigger(
            &format!("build-{i}.csv"),
            &format!("type=main,command={c}\n"),
        );
    }
    let started = Instant::now();
    let out = root.run(&["run"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Two steps time out after 1 s and get 1 s of grace each; the others end at once. A held pipe or
    // an escapee that waited for the 2 s drain limit would show here.
    assert!(took < Duration::from_secs(12), "{took:?}\n{}", root.log());
    assert_eq!(
        root.marks(),
        [
            "escapee step done",
            "group step done",
            "holder step done",
            "still running"
        ]
    );
    assert!(
        first_line(&root, "build-0.csv").contains(&format!(
            "step `stubborn` failed: {}:{}:",
            root.path.join("scripts/main.rhai").display(),
            line_of(&script, "fn stubborn(")
        )) && first_line(&root, "build-0.csv")
            .contains("timed out after 1s; its process group was killed"),
        "{}",
        root.reason("build-0.csv")
    );
    assert!(
        first_line(&root, "build-1.csv").contains("step `bomb` failed"),
        "{}",
        root.reason("build-1.csv")
    );
    let mut all = pids(&root.path.join("bomb.pids"));
    assert_eq!(all.len(), 50, "every sleeper started");
    for f in ["stubborn.pid", "escapee.pid", "group.pid", "holder.pid"] {
        let p = pids(&root.path.join(f));
        assert_eq!(p.len(), 1, "{f}");
        all.extend(p);
    }
    // Killed processes that left the engine's tree are reaped by init, which may take a moment here.
    wait_until(Duration::from_secs(5), "every process to be gone", || {
        all.iter().all(|&pid| !alive(pid))
    });
    assert!(tagged_with(&root).is_empty(), "{:?}", tagged_with(&root));
    let log = root.log();
    for step in ["escapee", "group", "holder"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("step{{name={step}}}"))
                    && l.contains("process(es) running after it exited; they were killed")),
            "{step}: {log}"
        );
    }
}
