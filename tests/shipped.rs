//! The shipped scripts end to end: real git remotes, a real `go build` of a tiny backend that the fake
//! systemctl really runs, a real `pnpm install` and `pnpm build` of a tiny frontend.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::{Root, commit, git_repo, text, wait_until};

const GO_MOD: &str = "module example.com/tractstack-go\n\ngo 1.21\n";

fn main_go(version: &str) -> String {
    format!(
        r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {{
	http.HandleFunc("/api/v1/health", func(w http.ResponseWriter, r *http.Request) {{
		fmt.Fprint(w, "{version}")
	}})
	if err := http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil); err != nil {{
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}}
}}
"#
    )
}

const PACKAGE_JSON: &str = r#"{ "name": "my-tractstack", "private": true, "version": "1.0.0", "scripts": { "build": "node build.mjs" } }
"#;

fn build_mjs(title: &str) -> String {
    format!(
        "import {{ mkdirSync, writeFileSync }} from 'node:fs';\nmkdirSync('dist', {{ recursive: true }});\nwriteFileSync('dist/index.html', '<h1 class=\"text-xl\">{title}</h1>');\n"
    )
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
        &[
            ("go.mod", GO_MOD),
            ("cmd/tractstack-go/main.go", &main_go("v1")),
        ],
    );
    let frontend = git_repo(
        &remotes.join("my-tractstack.git"),
        &root.path.join("src/my-tractstack"),
        &[
            ("package.json", PACKAGE_JSON),
            ("build.mjs", &build_mjs("v1")),
            (".gitignore", "node_modules\ndist\npnpm-lock.yaml\n"),
        ],
    );
    commit(
        &backend,
        &[("cmd/tractstack-go/main.go", &main_go("v2"))],
        "backend v2",
    );
    commit(&frontend, &[("build.mjs", &build_mjs("v2"))], "frontend v2");
    let binary = root.path.join("bin/tractstack-go");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::write(
        root.fakes.join("units/tractstack-go"),
        format!("PORT={go_port} exec {}\n", binary.display()),
    )
    .unwrap();
    std::fs::create_dir_all(root.fakes.join("pm2")).unwrap();
    std::fs::write(root.fakes.join("pm2/astro-main"), "online").unwrap();
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
        "<h1 class=\"text-xl\">v2</h1>",
        "pnpm build ran on the pulled frontend"
    );
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
            "cmd/tractstack-go/main.go",
            "package main\n\nfunc main() { undefinedThing() }\n",
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
