//! `t8k-engine completions`, `man` and `api`: the documentation the binary prints about itself, from the
//! clap definition and the script API table.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Exit;

/// A shell completion script.
pub fn completions(shell: clap_complete::Shell) -> Result<Exit> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "t8k-engine",
        &mut std::io::stdout(),
    );
    Ok(Exit::Ok)
}

/// The manual page (roff).
pub fn man() -> Result<Exit> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(Exit::Ok)
}

/// The functions scripts can call.
pub fn api() -> Result<Exit> {
    print!("{}", crate::script::api::render());
    Ok(Exit::Ok)
}
