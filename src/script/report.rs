//! Owns how script errors read: `file:line:col: message` with the call chain under it, and what a thrown
//! value says about the job (a rollback); it only formats and decodes.

use rhai::{Dynamic, EvalAltResult, ParseError, Position};

/// The text that marked a rollback before scripts threw `#{ rolled_back: true, reason }`; a thrown string
/// holding it still counts as one, so that operator copies of the old scripts keep their meaning.
const ROLLED_BACK: &str = "rolled back:";

/// A script error rendered for people.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `file:line:col: message`, one line.
    pub headline: String,
    /// The full message and the call chain, innermost first.
    pub details: String,
    /// True when the script was stopped (cancel, deadline) rather than failing by itself.
    pub terminated: bool,
    /// True when the script put the previous release back before failing.
    pub rolled_back: bool,
}

/// What a script throws to say that it rolled the release back: `#{ rolled_back: true, reason: why }`.
#[derive(serde::Deserialize)]
struct Thrown {
    #[serde(default)]
    rolled_back: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The reason of a thrown rollback map; `None` for any other value.
fn rollback_reason(value: &Dynamic) -> Option<String> {
    if !value.is_map() {
        return None;
    }
    let thrown: Thrown = rhai::serde::from_dynamic(value).ok()?;
    thrown
        .rolled_back
        .then(|| thrown.reason.unwrap_or_else(|| "(no reason given)".into()))
}

/// Renders a compile error in `origin`.
pub fn parse_error(origin: &str, err: &ParseError) -> String {
    format!("{}: {}", at(origin, err.position()), err.err_type())
}

/// Renders a runtime error raised while running a script from `origin`.
pub fn runtime_error(origin: &str, err: &EvalAltResult) -> Rendered {
    let mut frames = Vec::new();
    let mut source = origin.to_string();
    let mut cur = err;
    loop {
        match cur {
            EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                let what = if name.starts_with("anon$") {
                    "closure".to_string()
                } else if name.contains(' ') {
                    // A frame the host functions added: `step `x``, `parallel branch `y``.
                    name.clone()
                } else {
                    format!("{name}()")
                };
                frames.push(format!("{}: in call to {what}", at(&source, *pos)));
                if !src.is_empty() {
                    source = src.clone();
                }
                cur = inner;
            }
            EvalAltResult::ErrorInModule(path, inner, pos) => {
                frames.push(format!("{}: in module {path}", at(&source, *pos)));
                source = path.clone();
                cur = inner;
            }
            _ => break,
        }
    }
    let (message, terminated, thrown_rollback) = leaf_message(cur);
    let headline = format!("{}: {}", at(&source, cur.position()), first_line(&message));
    let rolled_back = thrown_rollback || headline.contains(ROLLED_BACK);
    let mut details = format!("{}: {message}", at(&source, cur.position()));
    for frame in frames.iter().rev() {
        details.push_str("\n  ");
        details.push_str(frame);
    }
    Rendered {
        headline,
        details,
        terminated,
        rolled_back,
    }
}

/// The innermost error's message, whether it is a stop (cancel, deadline), and whether it is a thrown
/// rollback map (whose message then reads `rolled back: <reason>`, as the thrown string did).
fn leaf_message(err: &EvalAltResult) -> (String, bool, bool) {
    match err {
        EvalAltResult::ErrorRuntime(value, _) => match rollback_reason(value) {
            Some(reason) => (format!("{ROLLED_BACK} {reason}"), false, true),
            None => (value.to_string(), false, false),
        },
        EvalAltResult::ErrorTerminated(value, _) => (value.to_string(), true, false),
        EvalAltResult::ErrorTooManyOperations(_) => {
            ("too many operations: the script looks like it runs away (raise no limit; fix the loop)".into(), false, false)
        }
        other => {
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            (text.strip_suffix(&suffix).unwrap_or(&text).to_string(), false, false)
        }
    }
}

fn at(source: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!("{source}:{line}:{col}"),
        (Some(line), None) => format!("{source}:{line}"),
        _ => source.to_string(),
    }
}

/// Names the command function's line in an error that lost its position: Rhai drops the position of a
/// system error (a limit hit, the job stopped) at the function's boundary, unless a host function kept it.
pub fn locate_in_fn(rendered: &mut Rendered, origin: &str, text: &str, function: &str) {
    let bare = format!("{origin}: ");
    let Some(line) = text
        .lines()
        .position(|l| l.contains(&format!("fn {function}(")))
    else {
        return;
    };
    for field in [&mut rendered.headline, &mut rendered.details] {
        if let Some(rest) = field.strip_prefix(&bare) {
            *field = format!("{origin}:{}: in fn {function}: {rest}", line + 1);
        }
    }
}

/// The first line of a possibly multi-line message.
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thrown(script: &str) -> Rendered {
        let engine = rhai::Engine::new();
        let err = engine.run(script).unwrap_err();
        runtime_error("main.rhai", &err)
    }

    #[test]
    fn a_thrown_rollback_map_reads_as_the_old_string_did() {
        let map = thrown(
            "fn f() { throw #{ rolled_back: true, reason: \"health check saw 500\" }; }\nf();",
        );
        assert!(map.rolled_back);
        assert!(
            map.headline
                .ends_with(": rolled back: health check saw 500"),
            "{}",
            map.headline
        );
        let string = thrown("throw \"rolled back: health check saw 500\";");
        assert!(string.rolled_back, "the old string is still recognised");
        assert_eq!(
            string.headline,
            "main.rhai:1:1: rolled back: health check saw 500"
        );
        for other in [
            "throw \"build failed\";",
            "throw #{ rolled_back: false, reason: \"x\" };",
            "throw #{ code: 3 };",
        ] {
            assert!(!thrown(other).rolled_back, "{other}");
        }
        assert!(
            thrown("throw #{ rolled_back: true };")
                .headline
                .ends_with("rolled back: (no reason given)")
        );
    }
}
