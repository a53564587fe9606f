//! The shipped unit files as tests use them: adapted for a user manager and a test's root, and checked
//! with `systemd-analyze verify`.

use std::path::Path;
use std::process::Command;

/// A shipped unit file (`examples/systemd/NAME`) adapted for a test: each edit names the lines it changes
/// by their start (`User=`, `ExecStart=`) and replaces them (`None` drops them); `additions` end the
/// `[Service]` section. An edit that matches no line fails the test, so a changed shipped file is
/// noticed rather than silently tested in another shape.
pub fn adapt_unit(name: &str, edits: &[(&str, Option<String>)], additions: &[String]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/systemd")
        .join(name);
    let shipped = std::fs::read_to_string(&path).expect("the shipped unit");
    let mut used = vec![false; edits.len()];
    let mut out = String::new();
    let mut in_service = false;
    let mut added = false;
    let add = |out: &mut String| {
        for a in additions {
            out.push_str(a);
            out.push('\n');
        }
    };
    for line in shipped.lines() {
        if line.starts_with('[') {
            if in_service && !added {
                add(&mut out);
                added = true;
            }
            in_service = line == "[Service]";
        }
        match edits.iter().position(|(start, _)| line.starts_with(start)) {
            Some(i) => {
                used[i] = true;
                if let Some(replacement) = &edits[i].1 {
                    out.push_str(replacement);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if in_service && !added {
        add(&mut out);
    }
    for (i, (start, _)) in edits.iter().enumerate() {
        assert!(
            used[i],
            "{name} has no line starting with `{start}` any more"
        );
    }
    out
}

/// What `systemd-analyze verify` finds wrong in the shipped unit `examples/systemd/NAME`, with its
/// `ExecStart` pointed at the binary under test (verify checks that it exists). Lines about the daemon's
/// unit (named in `After=`, not installed beside it) and a missing `/run/systemd/system` are not problems.
pub fn verify_shipped_unit(name: &str) -> Result<(), String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/systemd")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(unit).unwrap().replace(
        "/usr/local/bin/t8k-engine",
        env!("CARGO_BIN_EXE_t8k-engine"),
    );
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (.ci/install.sh installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    let problems = err
        .lines()
        .filter(|l| !l.contains("/run/systemd/system") && !l.trim().is_empty())
        .any(|l| !l.contains("t8k-engine.service"));
    if out.status.success() && !problems {
        Ok(())
    } else {
        Err(format!("systemd-analyze verify {name}: {err}"))
    }
}
