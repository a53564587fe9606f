//! Many sites on one server: one trigger per site in a stable order, one Go build for every site on the
//! same backend commit (each part of the artifact cache's key forces a build of its own, a corrupt entry is
//! found and rebuilt, eviction keeps every live binary), the pre-build check on a nearly full filesystem
//! (a real tmpfs in a private mount namespace), and each step's disk I/O in history (the sites benchmark's
//! quick mode is in benches.rs). Real git, go, pnpm and pm2 where sites are built (tests/sites_harness).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Root, commit, git, git_repo, text};
use crate::sites_harness::{Server, steps};

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// The steps named `name` in the newest `n` jobs, with their site.
fn named(server: &Server, n: usize, name: &str) -> Vec<String> {
    steps(&server.history(n))
        .into_iter()
        .filter(|(_, s)| s["name"] == name)
        .map(|(t, _)| t.trim_start_matches("dedicated/").to_string())
        .collect()
}

fn set_config(server: &Server, extra: &str) {
    let base = format!(
        "root = {:?}\nkill_grace = 1\njob_timeout = 600\nstep_timeout = 300\nhttp_timeout = 10\n",
        server.root.path.display().to_string()
    );
    std::fs::write(server.root.path.join("config.toml"), base + extra).unwrap();
}

fn edit_common(server: &Server, from: &str, to: &str) {
    let builtin = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/common.rhai"),
    )
    .unwrap();
    assert!(builtin.contains(from), "lib/common.rhai has no `{from}`");
    server
        .root
        .script("lib/common.rhai", &builtin.replace(from, to));
}

#[test]
fn all_sites_drops_one_trigger_per_site_in_name_order_and_all_tenants_one_per_tenant() {
    let root = Root::new();
    for site in ["beta", "alpha", "gamma"] {
        std::fs::create_dir_all(root.path.join("sites").join(site).join("src/tractstack-go"))
            .unwrap();
    }
    // Not sites: no backend checkout, a name no trigger may carry, a dot-directory.
    std::fs::create_dir_all(root.path.join("sites/old-backup")).unwrap();
    std::fs::create_dir_all(root.path.join("sites/bad.name/src/tractstack-go")).unwrap();
    std::fs::create_dir_all(root.path.join("sites/.trash/src/tractstack-go")).unwrap();
    root.script(
        "dedicated.rhai",
        "fn build(job) { run(\"mark\", [job.site]); }\n",
    );
    let out = root.run(&["trigger", "dedicated", "--all-sites"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed.len(), 3, "{}", text(&out));
    let inbox = root.inbox();
    let names: Vec<String> = printed
        .iter()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names, inbox,
        "printed in the order they sort, which is the order they run"
    );
    let lines: Vec<String> = inbox
        .iter()
        .map(|n| std::fs::read_to_string(root.path.join("state").join(n)).unwrap())
        .collect();
    assert_eq!(
        lines,
        ["alpha", "beta", "gamma"]
            .map(|s| format!("type=dedicated,tenant=default,site={s},command=build\n"))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("old-backup: no src/tractstack-go") && stderr.contains("bad.name"),
        "{stderr}"
    );
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.marks(), ["alpha", "beta", "gamma"]);

    // Tenants as tractstack-go finds them: default and every config/ directory with an env.json.
    let config = root.path.join("t8k-go-server/config");
    for (tenant, env) in [
        ("blue", true),
        ("green", false),
        ("t8k", false),
        ("default", false),
    ] {
        std::fs::create_dir_all(config.join(tenant)).unwrap();
        if env {
            std::fs::write(config.join(tenant).join("env.json"), "{}").unwrap();
        }
    }
    let out = root.run(&["trigger", "multi", "--all-tenants"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<String> = root
        .inbox()
        .iter()
        .map(|n| std::fs::read_to_string(root.path.join("state").join(n)).unwrap())
        .collect();
    assert_eq!(
        lines,
        ["blue", "default"].map(|t| format!("type=multi,tenant={t},command=build\n"))
    );
    let out = root.run(&["trigger", "main", "--all-sites"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--all-sites is for `trigger dedicated`")
    );
}

/// A tmpfs mounted for the test; unmounted when dropped (and gone with the test's mount namespace anyway).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", text(&out));
        Tmpfs(at.to_path_buf())
    }

    fn avail(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

const MIB: u64 = 1 << 20;

/// `X MiB short` at the end of a shortage.
fn shortage_mib(reason: &str) -> f64 {
    let before = reason.split(" MiB short").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_pre_build_check_refuses_a_build_on_a_nearly_full_disk() {
    // Its name in the integration binary, for `--exact`.
    const NAME: &str = "sites::the_pre_build_check_refuses_a_build_on_a_nearly_full_disk";
    if std::env::var_os("T8K_IN_MOUNT_NS").is_none() {
        // Run again alone in a private mount namespace: the tmpfs it mounts disappears with it, whatever
        // happens to the test. Mounting needs root, as CI is.
        assert_eq!(
            rustix::process::geteuid().as_raw(),
            0,
            "this test mounts a tmpfs: run it as root (CI does)"
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env("T8K_IN_MOUNT_NS", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{}",
            text(&out)
        );
        return;
    }
    let root = Root::new();
    let base = root.path.join("sites/tiny");
    let disk = Tmpfs::mount(&base, "24m");
    let remotes = root.path.join("remotes");
    let backend = git_repo(
        &remotes.join("backend.git"),
        &base.join("src/tractstack-go"),
        &[
            ("go.mod", "module x\n"),
            ("main.go", "package main\n\nfunc main() {}\n"),
        ],
    );
    git_repo(
        &remotes.join("frontend.git"),
        &base.join("src/my-tractstack"),
        &[("package.json", "{}\n")],
    );
    let head = git(&base.join("src/tractstack-go"), &["rev-parse", "HEAD"]);
    commit(
        &backend,
        &[("main.go", "package main\n\nfunc main() { println(2) }\n")],
        "v2",
    );
    // The live release: a 4 MiB binary and a 1 MiB dist/.
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::write(base.join("bin/tractstack-go"), vec![7u8; 4 << 20]).unwrap();
    std::fs::create_dir_all(base.join("src/my-tractstack/dist")).unwrap();
    std::fs::write(
        base.join("src/my-tractstack/dist/index.html"),
        vec![b'x'; 1 << 20],
    )
    .unwrap();
    // Thresholds scaled to the small filesystem: 2 MiB for the sources, 8 MiB kept free.
    let builtin = include_str!("../../scripts/lib/common.rhai");
    let thresholds = |memory: &str| {
        builtin
            .replace("MIN_FREE_DISK_MB = 1024;", "MIN_FREE_DISK_MB = 8;")
            .replace("SOURCES_GROWTH_MB = 64;", "SOURCES_GROWTH_MB = 2;")
            .replace(
                "MIN_FREE_MEMORY_MB = 512;",
                &format!("MIN_FREE_MEMORY_MB = {memory};"),
            )
    };
    root.script("lib/common.rhai", &thresholds("512"));
    root.script(
        "dedicated.rhai",
        "import \"lib/common\" as t8k;\nfn build(job) { t8k::check_room(job); t8k::pull(job); }\n",
    );
    // Fill the filesystem to 10 MiB free: the build needs 4 + 1 + 2 MiB there and 8 MiB must stay free.
    let filler = base.join("filler");
    let fill = disk.avail() - 10 * MIB;
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let avail = disk.avail();
    root.trigger("build-1.csv", "type=dedicated,site=tiny,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = root.reason("build-1.csv");
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("step `check room` failed")
            && first.contains("not enough room to build, so nothing was touched")
            && first.contains(&format!("the filesystem at {} (tmpfs) has", base.display()))
            && first.contains("backend binary 4.0 MiB")
            && first.contains("frontend build 1.0 MiB")
            && first.contains("MIN_FREE_DISK_MB = 8"),
        "{reason}"
    );
    let expected = (7 * MIB + 8 * MIB - avail) as f64 / MIB as f64;
    let said = shortage_mib(first);
    assert!(
        (said - expected).abs() < 0.15,
        "said {said} MiB short, expected {expected:.2}: {first}"
    );
    // Nothing was touched: no pull, no new build, the live release as it was.
    assert_eq!(
        git(&base.join("src/tractstack-go"), &["rev-parse", "HEAD"]),
        head
    );
    assert!(!base.join("bin/tractstack-go.new").exists());
    assert!(
        !root.log().contains("step `pull backend` started"),
        "{}",
        root.log()
    );

    // Room on the disk, too little memory: refused for that, with the figure.
    std::fs::remove_file(&filler).unwrap();
    root.script("lib/common.rhai", &thresholds("100000000"));
    assert_eq!(root.run(&["retry", "build-1.csv"]).status.code(), Some(0));
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = root.reason("build-1.csv");
    assert!(
        reason
            .lines()
            .next()
            .unwrap()
            .contains("of memory is available")
            && reason.contains("MIN_FREE_MEMORY_MB = 100000000"),
        "{reason}"
    );
    assert_eq!(
        git(&base.join("src/tractstack-go"), &["rev-parse", "HEAD"]),
        head
    );

    // Room for both: the build goes on and pulls.
    root.script("lib/common.rhai", &thresholds("512"));
    assert_eq!(root.run(&["retry", "build-1.csv"]).status.code(), Some(0));
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), root.log());
    assert_ne!(
        git(&base.join("src/tractstack-go"), &["rev-parse", "HEAD"]),
        head
    );
    drop(disk);
}

#[test]
fn one_go_build_serves_every_site_and_each_part_of_the_key_forces_a_build() {
    let server = Server::new(
        &["a", "b"],
        "job_timeout = 600\nstep_timeout = 300\nhttp_timeout = 10\n",
        300,
    );
    let (a, b) = (server.site("a"), server.site("b"));

    // The same backend commit for both: one Go build, the other site gets the binary.
    server.push_backend("v2");
    let (out, log) = server.all_sites();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert_eq!(named(&server, 2, "build backend"), ["a"], "{log}");
    assert!(log.contains("from the cache instead of a build"), "{log}");
    assert_eq!(a.serving().0, Some("v2".into()));
    assert_eq!(b.serving().0, Some("v2".into()));
    assert_eq!(
        inode(&a.binary()),
        inode(&b.binary()),
        "b's binary is a's, hard-linked"
    );
    assert_eq!(server.record("a")["backend_from"], "go build");
    assert_eq!(server.record("b")["backend_from"], "cache");
    assert_eq!(
        server.record("a")["backend_key"],
        server.record("b")["backend_key"]
    );
    let status = server.status();
    let artifacts = &status["disk"]["artifacts"];
    assert_eq!(
        (
            &artifacts["entries"],
            &artifacts["in_use"],
            &artifacts["stats"]["hits"],
            &artifacts["stats"]["misses"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{status:#}"
    );
    let targets = status["disk"]["targets"].as_array().unwrap();
    assert!(
        targets
            .iter()
            .any(|t| t["target"] == "dedicated/a" && t["kept"].as_u64() >= Some(1)),
        "a keeps its previous binary: {status:#}"
    );
    let text_status = server.engine(&["status"]).output().unwrap();
    let shown = String::from_utf8_lossy(&text_status.stdout);
    assert!(
        shown.contains("artifact cache: 1 entr(ies)") && shown.contains("hit rate 50%"),
        "{shown}"
    );

    // Local edits: a file the checkout does not track is built in; undone, the cached binary is back.
    let local = b.backend_src().join("cmd/tractstack-go/zz_local.go");
    std::fs::write(
        &local,
        "package main\n\nfunc init() { version = \"v2-local\\n\" }\n",
    )
    .unwrap();
    let (out, log) = server.one("b", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("local edits (1 file(s): cmd/tractstack-go/zz_local.go)"),
        "{log}"
    );
    assert_eq!(named(&server, 1, "build backend"), ["b"]);
    assert_eq!(b.serving().0, Some("v2-local".into()));
    std::fs::remove_file(&local).unwrap();
    let (out, log) = server.one("b", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(named(&server, 1, "build backend").is_empty(), "{log}");
    assert_eq!(b.serving().0, Some("v2".into()));
    assert_eq!(inode(&a.binary()), inode(&b.binary()));

    // GO_BUILD_FLAGS: a build of its own, which the other site then shares.
    edit_common(
        &server,
        "export const GO_BUILD_FLAGS = [\"-tags\", \"sqlite_fts5\"];",
        "export const GO_BUILD_FLAGS = [\"-tags\", \"sqlite_fts5\", \"-ldflags=-s -w\"];",
    );
    let (out, log) = server.one("a", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("build backend true (GO_BUILD_FLAGS)"), "{log}");
    assert!(log.contains("-ldflags=-s -w"), "{log}");
    let (out, log) = server.one("b", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("from the cache instead of a build"), "{log}");
    assert_eq!(named(&server, 2, "build backend"), ["a"]);

    // go.sum: a go.sum the checkout does not track (written by `go mod tidy` on the server, say).
    std::fs::write(a.backend_src().join("go.sum"), "").unwrap();
    let (out, log) = server.one("a", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("go.sum changed"), "{log}");
    assert_eq!(named(&server, 1, "build backend"), ["a"]);
    std::fs::remove_file(a.backend_src().join("go.sum")).unwrap();

    // The target platform: x86-64-v2 instead of the v1 default.
    set_config(&server, "[env]\nvars = { GOAMD64 = \"v2\" }\n");
    let (out, log) = server.one("a", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        // go.sum is gone again too, so the log names that as well.
        log.contains("go.sum changed, local edits undone, target platform)"),
        "{log}"
    );
    assert_eq!(named(&server, 1, "build backend"), ["a"]);
    assert_eq!(a.serving().0, Some("v2".into()));

    // The Go version: an older Go first on the steps' PATH (.ci/install.sh installs it).
    let old_go = Path::new("/opt/t8k-go-1.26/go/bin");
    assert!(
        old_go.join("go").is_file(),
        "{} is missing: run bash .ci/install.sh",
        old_go.display()
    );
    set_config(
        &server,
        &format!(
            "[env]\npath = [{:?}]\nvars = {{ GOAMD64 = \"v2\" }}\n",
            old_go.display().to_string()
        ),
    );
    let (out, log) = server.one("a", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("build backend true (Go version go1.27") && log.contains("-> go1.26.6)"),
        "{log}"
    );
    assert_eq!(named(&server, 1, "build backend"), ["a"]);
    assert_eq!(a.serving().0, Some("v2".into()));

    // A corrupt entry (its bytes replaced): found when b would take it, removed, and b builds.
    let key = server.record("a")["backend_key"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = server
        .root
        .path
        .join("state/.t8k-engine/artifacts")
        .join(&key);
    let size = std::fs::metadata(&entry).unwrap().len();
    let garbage = server.root.path.join("garbage");
    std::fs::write(&garbage, vec![0x5a; size as usize]).unwrap();
    std::fs::rename(&garbage, &entry).unwrap();
    let (out, log) = server.one("b", "");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains(&format!("artifact cache: entry {} was corrupt", &key[..12])),
        "{log}"
    );
    assert_eq!(named(&server, 1, "build backend"), ["b"]);
    assert_eq!(b.serving().0, Some("v2".into()));
    assert_eq!(server.status()["disk"]["artifacts"]["stats"]["corrupt"], 1);

    // A cap nothing fits: eviction takes every entry no release uses, never a live (or kept) binary.
    set_config(
        &server,
        &format!(
            "artifact_cache_max_bytes = 1\n[env]\npath = [{:?}]\nvars = {{ GOAMD64 = \"v2\" }}\n",
            old_go.display().to_string()
        ),
    );
    server.push_backend("v3");
    let (out, log) = server.all_sites();
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("over its cap"), "{log}");
    assert_eq!(
        (a.serving().0, b.serving().0),
        (Some("v3".into()), Some("v3".into()))
    );
    let artifacts = &server.status()["disk"]["artifacts"];
    assert!(
        artifacts["stats"]["evictions"].as_u64() > Some(0),
        "{artifacts:#}"
    );
    // The store (a's) evicted every entry no release used at that moment. After it, each site's job
    // pruned its kept releases by their records (keep_releases), which can take one more entry per site
    // out of use; the next store evicts those. The live binaries' entry is there, the file both sites run.
    let (entries, in_use) = (
        artifacts["entries"].as_u64().unwrap(),
        artifacts["in_use"].as_u64().unwrap(),
    );
    assert!(entries - in_use <= 2 && in_use >= 1, "{artifacts:#}");
    let live_key = server.record("a")["backend_key"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = server
        .root
        .path
        .join("state/.t8k-engine/artifacts")
        .join(&live_key);
    assert_eq!(inode(&entry), inode(&a.binary()), "{artifacts:#}");
    assert!(
        a.base.join("bin/tractstack-go.prev").is_file()
            && b.base.join("bin/tractstack-go.prev").is_file()
    );
    assert_eq!(inode(&a.binary()), inode(&b.binary()));
}

/// A step's disk I/O is recorded with its CPU and memory: in the job's history record, the step's log line
/// and `history`. The kernel counts storage only, so the file lives on a disk (/var/tmp, not a tmpfs), is
/// synced when written and read back around the page cache.
#[test]
fn a_steps_disk_io_is_recorded_with_its_cpu_and_memory() {
    let root = Root::new();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = dir.path().join("io");
    root.script(
        "main.rhai",
        &format!(
            r#"
fn build(job) {{
    step("write", || run("dd", ["if=/dev/zero", "of={0}", "bs=1M", "count=8", "conv=fsync", "status=none"]));
    step("read", || run("dd", ["if={0}", "of=/dev/null", "bs=1M", "iflag=direct", "status=none"]));
    step("think", || run("true", []));
}}
"#,
            file.display()
        ),
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), root.log());

    let out = root.run(&["history", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["jobs"][0]["steps"].as_array().unwrap();
    let io = |i: usize, key: &str| steps[i][key].as_u64().unwrap_or(0);
    assert!(
        io(0, "written_bytes") >= 8 << 20 && io(1, "read_bytes") >= 8 << 20,
        "{steps:#?}"
    );
    for (i, step) in steps.iter().enumerate() {
        assert!(
            step["max_rss_kib"].as_u64() > Some(0) && step["user_cpu_ms"].is_u64(),
            "{step}"
        );
        // Nothing read or written is left out, as in records of engines that did not count it (`true` reads
        // nothing once its binary is cached, which a busy machine does not promise: so no fixed step here).
        for key in ["read_bytes", "written_bytes"] {
            assert!(
                step.get(key).is_none_or(|n| n.as_u64() > Some(0)),
                "step {i}: {step}"
            );
        }
    }
    let log = root.log();
    assert!(
        log.lines().any(|l| l.contains("step `write` done")
            && l.contains("peak rss")
            && l.contains(", written ")),
        "{log}"
    );
    let shown = String::from_utf8_lossy(&root.run(&["history"]).stdout).into_owned();
    assert!(
        shown.contains("wrote 8 MiB") || shown.contains("wrote 9 MiB"),
        "{shown}"
    );
}
