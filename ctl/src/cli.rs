//! meshctl's command line (docs/meshctl.md). Man pages and completions are
//! generated from these definitions: this file depends on clap alone, and the
//! xtask includes it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Control a running meshd over its local socket.
//
// The doc comment above is the about text: `about` with no value would take
// CARGO_PKG_DESCRIPTION of whichever crate compiles this file, and the xtask
// that renders the man page is another crate.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, long_about = None)]
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
    /// The hubs this device trusts, by the keys they proved.
    Hubs {
        /// What to do.
        #[command(subcommand)]
        action: HubsAction,
    },
    /// Re-read the config file, like SIGHUP, and report what changed; fails
    /// if the new config is invalid (meshd keeps the old one).
    Reload,
    /// Manage chat users.
    Users {
        /// What to do.
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Send TEXT to every chat client as `SYS TEXT`.
    Broadcast {
        /// The text; several words are joined with spaces.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Deliver TEXT over the mesh to DEVICE (or every device with --all);
    /// succeeds only once the device acknowledged it.
    Send {
        /// Send to every other device; one result line each.
        #[arg(long)]
        all: bool,
        /// The device id (omit with --all), then the text; several words are
        /// joined with spaces.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "DEVICE] [TEXT")]
        words: Vec<String>,
    },
    /// Messages this node received over the mesh, oldest first.
    Messages {
        /// Keep running and print each new message as it arrives.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Round-trip time over the mesh link to DEVICE, and the path it takes.
    Ping {
        /// The device id.
        device: String,
        /// Number of pings, one a second.
        #[arg(short = 'c', long = "count", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
    },
    /// What the NAT in front of this device does: the public address the
    /// signaling servers see, and whether it is the same for every
    /// destination (what hole punching needs).
    Netcheck,
    /// Interactive chat client: log in, print what arrives, send each line
    /// typed; `exit` ends it.
    Chat {
        /// Speak TLS 1.3 (for a server with `[chat] tls = true`). Without
        /// --fingerprint the certificate must chain to a root this system
        /// trusts and hold HOST.
        #[arg(long)]
        tls: bool,
        /// Trust exactly the certificate with this fingerprint, as `meshctl
        /// status` on the server prints it (needs --tls).
        #[arg(long, requires = "tls", value_name = "sha256:HEX")]
        fingerprint: Option<String>,
        /// Chat server [default: this node's chat address, or 127.0.0.1:8081]
        #[arg(value_name = "HOST:PORT")]
        server: Option<String>,
    },
}

/// `meshctl users ...`
#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Add a chat user; prompts twice for the password unless
    /// --password-stdin.
    Add {
        /// User name: 1-32 characters of A-Z, a-z, 0-9, '.', '_', '-'.
        name: String,
        /// Read the password as one line from standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a chat user's password.
    Passwd {
        /// User name.
        name: String,
        /// Read the password as one line from standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a chat user.
    Remove {
        /// User name.
        name: String,
    },
    /// List chat users.
    List,
}

/// `meshctl hubs ...`
#[derive(Debug, Subcommand)]
pub enum HubsAction {
    /// Forget the key pinned for a hub on first contact, after checking on
    /// the hub (`meshctl status`) that its new key is genuine; the key it
    /// proves next is pinned instead.
    Forget {
        /// The hub's URL as `[mesh] signaling` writes it, e.g. `http://hub:8080`
        url: String,
    },
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
