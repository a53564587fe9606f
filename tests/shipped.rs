//! The shipped scripts end to end: real git remotes, a real `go build` of a tiny backend that the fake
//! systemctl really runs, a real `pnpm install` and `pnpm build` of a tiny frontend.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::{Root, commit, git_repo, text, wait_until};

/// The fixture site's files under `tests/fixtures/site/<part>`, as (relative path, content).
fn fixture(part: &str) -> Vec<(String, String)> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/site")
        .join(part);
    let mut files = Vec::new();
    let mut dirs = vec![base.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(&base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

fn as_refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

fn require(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || std::process::Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is not installed: run `bash .ci/run` (or install it) before this test"
    );
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split("\r\n\r\n").nth(1).map(str::to_string)
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_shipped_main_script_builds_and_restarts_a_real_backend_and_frontend() {
    require("go");
    require("pnpm");
    let root = Root::new();
    let go_port = port();
    std::fs::write(
        root.path.join("etc/t8k-ports.conf"),
        format!("main={go_port},20000\n"),
    )
    .unwrap();
    let remotes = root.path.join("remotes");
    let backend = git_repo(
        &remotes.join("tractstack-go.git"),
        &root.path.join("src/tractstack-go"),
        &as_refs(&fixture("backend")),
    );
    let frontend = git_repo(
        &remotes.join("my-tractstack.git"),
        &root.path.join("src/my-tractstack"),
        &as_refs(&fixture("frontend")),
    );
    commit(
        &backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&frontend, &[("version.txt", "v2\n")], "frontend v2");
    let binary = root.path.join("bin/tractstack-go");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::write(
        root.fakes.join("units/tractstack-go"),
        format!("PORT={go_port} exec {}\n", binary.display()),
    )
    .unwrap();
    std::fs::create_dir_all(root.fakes.join("pm2")).unwrap();
    std::fs::write(root.fakes.join("pm2/astro-main"), "online").unwrap();
    for tenant in ["default", "blue"] {
        std::fs::create_dir_all(root.path.join("t8k-go-server/config").join(tenant)).unwrap();
    }
    let home = root.path.join("home");
    let with_caches = |c: &mut std::process::Command| {
        // Go and pnpm keep caches under HOME; a shared one keeps the test fast, a missing one would fail.
        if std::env::var_os("HOME").is_none() {
            c.env("HOME", &home);
        }
    };

    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut cmd = root.cmd(&["run"]);
    with_caches(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), root.log());
    assert!(binary.is_file(), "go build wrote the binary");
    assert_eq!(
        std::fs::read_to_string(root.path.join("src/my-tractstack/dist/index.html")).unwrap(),
        "<h1 class=\"text-xl font-bold\">v2</h1>\n",
        "pnpm build ran on the pulled frontend"
    );
    for tenant in ["default", "blue"] {
        let list = std::fs::read_to_string(
            root.path
                .join("t8k-go-server/config")
                .join(tenant)
                .join("tailwindWhitelist.json"),
        )
        .unwrap();
        assert_eq!(
            list,
            "{\n  \"safelist\": [\n    \"bg-red-500\",\n    \"font-bold\",\n    \"md:px-8\",\n    \"text-xl\"\n  ]\n}\n",
            "every tenant gets the classes of the build and of the Go templates"
        );
    }
    wait_until(Duration::from_secs(10), "the new backend to answer", || {
        get(go_port, "/api/v1/health").as_deref() == Some("v2")
    });
    assert_eq!(
        root.calls("systemctl"),
        ["restart tractstack-go", "is-active tractstack-go"]
    );
    assert!(root.calls("pm2").contains(&"reload astro-main".to_string()));
    let log = root.log();
    for step in [
        "pull backend",
        "pull frontend",
        "build backend",
        "install frontend",
        "build frontend",
        "whitelist default",
        "whitelist blue",
        "restart backend",
        "reload frontend",
    ] {
        assert!(
            log.contains(&format!("step `{step}` done")),
            "{step} missing from the log:\n{log}"
        );
    }

    // A compile error fails the job at `build backend`, quotes the compiler and leaves the old binary.
    commit(
        &backend,
        &[(
            "cmd/tractstack-go/broken.go",
            "package main\n\nfunc init() { undefinedThing() }\n",
        )],
        "broken",
    );
    let before = std::fs::read(&binary).unwrap();
    root.trigger("build-2.csv", "type=main,command=build\n");
    let mut cmd = root.cmd(&["run"]);
    with_caches(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason =
        std::fs::read_to_string(root.path.join("state/failed/build-2.csv.reason")).unwrap();
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("step `build backend` failed")
            && first.contains("undefined: undefinedThing"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        before,
        "a failed build leaves the binary alone"
    );
    assert_eq!(
        get(go_port, "/api/v1/health").as_deref(),
        Some("v2"),
        "the site keeps serving"
    );

    stop_service(&root);
}

fn stop_service(root: &Root) {
    let status = std::process::Command::new(root.fakes.join("bin/systemctl"))
        .args(["stop", "tractstack-go"])
        .env("FAKE_DIR", &root.fakes)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!Path::new(&root.fakes.join("run/tractstack-go.pid")).exists());
}
