//! `t8k-engine config`: the effective settings, with every path the layout derives filled in.

use anyhow::Result;

use super::Ctx;
use crate::config::Config;
use crate::error::Exit;
use crate::layout::Layout;

/// Prints where the settings came from, then the settings.
pub fn run(ctx: &Ctx) -> Result<Exit> {
    match ctx.source {
        Some(path) if path == std::path::Path::new("/dev/null") => {
            println!("# from /dev/null: built-in defaults")
        }
        Some(path) => println!("# from {}", path.display()),
        None => println!("# no config file found: built-in defaults"),
    }
    print!("{}", effective_toml(ctx.config, ctx.layout));
    Ok(Exit::Ok)
}

/// The settings as TOML with the derived paths filled in.
fn effective_toml(config: &Config, layout: &Layout) -> String {
    let mut full = config.clone();
    full.scripts_dir = Some(layout.scripts_dir.clone());
    full.state_dir = Some(layout.state.clone());
    full.log_file = Some(layout.log_file.clone());
    full.ports_file = Some(layout.ports_file.clone());
    toml::to_string_pretty(&full)
        .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_renders_as_the_defaults_with_paths_filled_in() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
        let example = Config::read(&path).unwrap();
        let default = Config::default();
        let rendered = effective_toml(&example, &Layout::new(&example));
        assert_eq!(rendered, effective_toml(&default, &Layout::new(&default)));
        assert!(
            rendered.contains("state_dir = \"/home/t8k/state\"")
                && rendered.contains("log_file = \"/home/t8k/log/build.log\""),
            "{rendered}"
        );
    }
}
