//! Scripts that try to exhaust the engine (endless loops, deep recursion, huge values, thread bombs) stop
//! at their limit naming the line, and host functions refuse hostile arguments (NUL bytes, relative
//! programs, other services' units, devices, FIFOs, endless timeouts) with a clear error; the engine
//! carries on to the next trigger each time.

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::{assert_printable, first_line, line_of};
use crate::common::{Root, text};

const SCRIPTS: &str = r#"
fn build(job) { run("mark", ["still running"]); }
fn spin(job) { parallel(#{ a: || { loop { } }, b: || step("sleeper", || run("sleep", ["30"])) }); }
fn ping(job) { pong(job) }
fn pong(job) { ping(job) }
fn huge_array(job) { let a = []; loop { a.push(a.len()); } }
fn huge_map(job) { let m = #{}; for i in 0..10001 { m[`k${i}`] = i; } m += #{ one: 1 }; }
fn huge_pad(job) { let s = "x".pad(100000000, "y"); }
fn hog(job) { let big = "x"; while big.len() < 1000000 { big += big; } let m = #{}; let i = 0; loop { m[`k${i}`] = big + i; i += 1; } }
fn chain(n) { let f = || 0; for i in 0..n { let g = f; f = || g; } f }
fn deep_branch(job) { parallel(#{ deep: || { chain(100000); 1 } }); run("mark", ["deep ok"]); }
fn long_chain(job) { chain(100000); run("mark", ["chain ok"]); }
fn threads(job) { let m = #{}; for i in 0..100 { m[`b${i}`] = || sleep(30); } parallel(m); }
fn bomb(n) { if n > 0 { parallel(#{ a: || bomb(n - 1), b: || bomb(n - 1) }) } else { sleep(30) } }
fn thread_bomb(job) { bomb(10) }
"#;

#[test]
fn runaway_scripts_stop_at_their_limit_naming_the_line_and_the_engine_carries_on() {
    let root = Root::with_config("job_timeout = 3\n");
    root.script("main.rhai", SCRIPTS);
    let commands = [
        "spin",
        "ping",
        "huge_array",
        "huge_map",
        "huge_pad",
        "hog",
        "deep_branch",
        "long_chain",
        "threads",
        "thread_bomb",
        "build",
    ];
    for (i, c) in commands.iter().enumerate() {
        root.trigger(
            &format!("build-{i:02}.csv"),
            &format!("type=main,command={c}\n"),
        );
    }
    let started = Instant::now();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(root.marks(), ["deep ok", "chain ok", "still running"]);
    let failed = |i: usize, fname: &str, why: &str| {
        let name = format!("build-{i:02}.csv");
        let first = first_line(&root, &name);
        let at = format!("main.rhai:{}:", line_of(SCRIPTS, &format!("fn {fname}(")));
        assert!(
            first.starts_with(&format!("{name} line 1 (main {}): ", commands[i]))
                && first.contains(&at)
                && first.contains(why),
            "{name}: `{first}` lacks `{at}` or `{why}`\n{}",
            root.reason(&name)
        );
    };
    failed(0, "spin", "job exceeded its time limit of 3s");
    failed(1, "ping", "Stack overflow");
    failed(2, "huge_array", "Size of array/BLOB too large");
    failed(3, "huge_map", "Size of object map too large");
    failed(4, "huge_pad", "Length of string too large");
    failed(5, "hog", "the script grew the engine's memory by");
    assert!(
        first_line(&root, "build-05.csv").contains("MiB, over its limit of 128 MiB"),
        "{}",
        first_line(&root, "build-05.csv")
    );
    failed(8, "threads", "over the limit of 16 for a job");
    failed(9, "bomb", "over the limit of 16 for a job");
    assert!(
        root.reason("build-00.csv")
            .contains("sleeper [b]: cancelled"),
        "{}",
        root.reason("build-00.csv")
    );
}

#[test]
fn a_chain_of_closures_grown_to_the_memory_limit_is_stopped_without_crashing() {
    // The chain is dropped recursively, one stack frame per level: the deepest the memory limit allows
    // must fit the script thread's stack, or the whole engine aborts.
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) { let f = || 0; loop { let g = f; f = || g; } }\nfn ok(job) { run(\"mark\", [\"next\"]); }\n",
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=main,command=ok\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(root.marks(), ["next"]);
    let first = first_line(&root, "build-1.csv");
    assert!(
        first.contains("main.rhai:1:") && first.contains("over its limit of 128 MiB"),
        "{first}"
    );
}

#[test]
fn host_functions_refuse_hostile_arguments_with_a_clear_error() {
    let root = Root::new();
    let fifo = root.path.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let live = root.path.join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("index.html"), "live").unwrap();
    let script = format!(
        r#"
fn build(job) {{ run("mark", ["still running"]); }}
fn nul_command(job) {{ run("sh\x00", []); }}
fn nul_arg(job) {{ run("sh", ["-c", "echo a\x00b"]); }}
fn nul_env(job) {{ run("true", [], #{{ env: #{{ X: "a\x00b" }} }}); }}
fn relative(job) {{ run("../../bin/sh", ["-c", "true"]); }}
fn many_args(job) {{ let s = ""; for j in 0..400 {{ s += "x"; }} let a = []; for i in 0..9500 {{ a.push(s); }} run("true", a); }}
fn other_unit(job) {{ restart_systemd("sshd"); }}
fn odd_unit(job) {{ restart_systemd("tractstack-go@.."); }}
fn other_pm2(job) {{ pm2("stop", "sshd"); }}
fn digest_device(job) {{ file_digest("/dev/zero"); }}
fn read_fifo(job) {{ read_from("{fifo}", 0); }}
fn sleep_forever(job) {{ sleep(1e300); }}
fn huge_timeout(job) {{ run("true", [], #{{ timeout: 1e300 }}); }}
fn http_forever(job) {{ http_check("http://127.0.0.1:9/", #{{ timeout: 1e300 }}); }}
fn same_switch(job) {{ switch_in("{live}", "{live}/"); }}
"#,
        fifo = fifo.display(),
        live = live.display()
    );
    root.script("main.rhai", &script);
    let cases: &[(&str, &str)] = &[
        (
            "nul_command",
            "run(): the command \"sh\\0\" contains a NUL byte",
        ),
        (
            "nul_arg",
            "run(): argument 2 of `sh` contains a NUL byte, which no program can receive",
        ),
        (
            "nul_env",
            "run(): the value of environment variable `X` contains a NUL byte",
        ),
        (
            "relative",
            "run(): `../../bin/sh` is a relative path, which needs a `cwd` to be relative to",
        ),
        ("many_args", "Argument list too long"),
        (
            "other_unit",
            "restart_systemd(): `sshd` is not a TractStack unit: only tractstack-go and tractstack-go@SITE",
        ),
        ("odd_unit", "`tractstack-go@..` is not a TractStack unit"),
        (
            "other_pm2",
            "pm2(): `sshd` is not a TractStack process: only astro-main and astro-SITE",
        ),
        (
            "digest_device",
            "file_digest(): /dev/zero is not a regular file",
        ),
        ("read_fifo", "is not a regular file"),
        (
            "sleep_forever",
            "is not a number of seconds up to 1000000000",
        ),
        (
            "huge_timeout",
            "run(): option `timeout` must be a positive number of seconds up to 1000000000",
        ),
        (
            "http_forever",
            "http_check(): option `timeout` must be a positive number of seconds up to 1000000000",
        ),
        (
            "same_switch",
            "switch_in(): the new build and the live path are both",
        ),
    ];
    for (i, (command, _)) in cases.iter().enumerate() {
        root.trigger(
            &format!("build-{i:02}.csv"),
            &format!("type=main,command={command}\n"),
        );
    }
    root.trigger("build-99.csv", "type=main,command=build\n");
    let started = Instant::now();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "nothing waits on a FIFO, a device or a huge timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(root.marks(), ["still running"]);
    for (i, (command, why)) in cases.iter().enumerate() {
        let name = format!("build-{i:02}.csv");
        let first = first_line(&root, &name);
        let at = format!("main.rhai:{}:", line_of(&script, &format!("fn {command}(")));
        assert!(
            first.contains(&at) && first.contains(why),
            "{name}: `{first}` lacks `{at}` or `{why}`"
        );
        assert!(
            first.len() < 2000,
            "a huge command line is cut in the reason: {} bytes",
            first.len()
        );
        assert_printable(&name, &root.reason(&name));
    }
    assert!(
        root.calls("systemctl").is_empty() && root.calls("pm2").is_empty(),
        "no service manager was called for a foreign name"
    );
    assert_eq!(
        std::fs::read_to_string(live.join("index.html")).unwrap(),
        "live",
        "the live release is still in place"
    );
    assert!(
        root.log().lines().all(|l| l.len() < 4000),
        "no log line carries the whole argument list"
    );
}
