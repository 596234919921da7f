//! meshd's command line (CONTRACT section 1). This file depends on clap
//! alone: the xtask includes it to generate meshd(8).

use std::path::PathBuf;

use clap::Parser;

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
