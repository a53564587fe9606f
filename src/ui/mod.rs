//! Owns what the engine draws for a person at a terminal: live progress of a job's steps from the
//! fields their spans record (`progress`), following a dropped trigger to its end (`follow`), and the
//! text of `history` and `status` (`tables`). It decides nothing and changes nothing.

pub mod follow;
pub mod progress;
pub mod tables;

use indicatif::ProgressStyle;

/// A running step or job: spinner, name, elapsed time, its latest line.
fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg:.dim}")
        .expect("a valid template")
}

/// A finished one: its mark and name in the prefix, then a message.
fn finished_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {wide_msg}").expect("a valid template")
}

/// ` [branch]` after a step's name, nothing on the main line.
fn branch_suffix(branch: &str) -> String {
    if branch.is_empty() {
        String::new()
    } else {
        format!(" [{branch}]")
    }
}
