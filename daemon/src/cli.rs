//! meshd's command line (CONTRACT section 1).

use std::path::PathBuf;

use clap::Parser;

use crate::config::ConfigLocation;
use crate::paths::DEFAULT_CONFIG_PATH;

/// meshd: a self-hosted mesh of devices, its signaling hub and a chat server.
///
/// Roles are switched on in the TOML config. Without --config, meshd reads
/// /etc/meshd/meshd.toml, or runs on built-in defaults if it does not exist.
#[derive(Debug, Parser)]
#[command(name = "meshd", version, about, long_about)]
pub struct Cli {
    /// Config file to read; it must exist.
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the config, print the effective config (defaults filled in)
    /// and exit: 0 if valid, 1 with every problem listed if not.
    #[arg(long)]
    pub check_config: bool,
}

impl Cli {
    /// Where the config comes from.
    pub fn config_location(&self) -> ConfigLocation {
        match &self.config {
            Some(path) => ConfigLocation {
                path: path.clone(),
                explicit: true,
            },
            None => ConfigLocation {
                path: PathBuf::from(DEFAULT_CONFIG_PATH),
                explicit: false,
            },
        }
    }
}
