//! meshd's command line (docs/config.md). This file depends on clap
//! alone: the xtask includes it to generate meshd(8).

use std::path::PathBuf;

use clap::Parser;

/// A self-hosted mesh of devices, its signaling hub and a chat server.
///
/// Roles are switched on in the TOML config. Without --config, meshd reads
/// /etc/meshd/meshd.toml, or runs on built-in defaults if it does not exist.
//
// The doc comment above is the about text: `about` with no value would take
// CARGO_PKG_DESCRIPTION of whichever crate compiles this file, and the xtask
// that renders the man page is another crate.
#[derive(Debug, Parser)]
#[command(name = "meshd", version)]
pub struct Cli {
    /// Config file to read; it must exist.
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the config, print the effective config (defaults filled in)
    /// and exit: 0 if valid, 1 with every problem listed if not.
    #[arg(long)]
    pub check_config: bool,
}
