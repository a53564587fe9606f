//! `t8k-engine status`: one screen (or JSON) of the engine, its running job and step, the queue, the
//! set-aside triggers and each target's live release.

use anyhow::Result;

use super::Ctx;
use crate::error::Exit;

/// Prints the snapshot.
pub fn run(ctx: &Ctx, json: bool) -> Result<Exit> {
    let status = crate::status::with_disk(ctx.config, ctx.layout)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", crate::ui::tables::status(&status));
    }
    Ok(Exit::Ok)
}
