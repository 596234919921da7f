//! meshctl's command line (CONTRACT section 5). Man pages and completions are
//! generated from these definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// meshctl: control a running meshd over its local socket.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, long_about = None)]
pub struct Cli {
    /// Control socket of the meshd to talk to [default: /run/meshd/meshd.sock
    /// for root, $XDG_RUNTIME_DIR/meshd/meshd.sock otherwise]
    #[arg(long, global = true, value_name = "PATH", env = "MESHD_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Print a stable JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Version, node id, roles with their addresses, uptime and counts.
    Status,
    /// List every known device, or remove one.
    Devices {
        /// Without a subcommand: list.
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// Re-read the config file, like SIGHUP, and report what changed; fails
    /// if the new config is invalid (meshd keeps the old one).
    Reload,
}

/// `meshctl devices ...`
#[derive(Debug, Subcommand)]
pub enum DevicesAction {
    /// Forget a device and its key binding on this hub.
    Remove {
        /// The device id.
        id: String,
    },
}
