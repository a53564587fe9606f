//! Owns how script errors read: `file:line:col: message` with the call chain under it; it only formats.

use rhai::{EvalAltResult, ParseError, Position};

/// A script error rendered for people.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `file:line:col: message`, one line.
    pub headline: String,
    /// The full message and the call chain, innermost first.
    pub details: String,
    /// True when the script was stopped (cancel, deadline) rather than failing by itself.
    pub terminated: bool,
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
    let (message, terminated) = leaf_message(cur);
    let headline = format!("{}: {}", at(&source, cur.position()), first_line(&message));
    let mut details = format!("{}: {message}", at(&source, cur.position()));
    for frame in frames.iter().rev() {
        details.push_str("\n  ");
        details.push_str(frame);
    }
    Rendered {
        headline,
        details,
        terminated,
    }
}

fn leaf_message(err: &EvalAltResult) -> (String, bool) {
    match err {
        EvalAltResult::ErrorRuntime(value, _) => (value.to_string(), false),
        EvalAltResult::ErrorTerminated(value, _) => (value.to_string(), true),
        EvalAltResult::ErrorTooManyOperations(_) => {
            ("too many operations: the script looks like it runs away (raise no limit; fix the loop)".into(), false)
        }
        other => {
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            (text.strip_suffix(&suffix).unwrap_or(&text).to_string(), false)
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
