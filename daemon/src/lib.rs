//! meshd: one daemon whose TOML config switches on its roles: the signaling
//! hub, the chat server and the mesh device. See docs/architecture.md.
//!
//! The daemon is a library with one entry point, [`run`], so that its
//! parsers can be fuzzed from `fuzz/` through [`fuzzing`]; `src/main.rs`
//! only calls [`run`]. Nothing else here is public.

mod accept;
mod atomic_file;
mod chat;
mod cli;
mod cluster;
mod config;
mod control;
mod device_id;
mod faults;
#[doc(hidden)]
pub mod fuzzing;
mod http_head;
mod hub_wire;
mod key_file;
mod limits;
mod log_limit;
mod logging;
mod mesh;
mod metrics;
mod paths;
mod public_key;
mod shared_chat;
mod shared_list;
mod signaling;
mod signals;
mod state_file;
mod supervisor;
mod sync;
mod systemd;
mod token_bucket;
mod web;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::config::{Config, ConfigLocation};

/// Runs meshd: parses the command line, loads the config, runs until a
/// signal stops it; the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let location = config_location(&cli);
    let config = match Config::load(&location) {
        Ok(config) => config,
        Err(error) => {
            for line in error.lines() {
                eprintln!("meshd: {line}");
            }
            if !cli.check_config {
                eprintln!(
                    "meshd: not started; fix the config and check it with: meshd --check-config"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        let origin = config
            .file
            .as_ref()
            .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
        println!(
            "# meshd {}: effective configuration from {origin}",
            env!("CARGO_PKG_VERSION")
        );
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }

    let log = logging::init(config.node.log_level);
    limits::raise_open_files();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshd-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(supervisor::run(config, location, log));
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "meshd failed to start");
            eprintln!("meshd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where the config comes from: `--config PATH` must exist; the default path
/// may be absent (then the built-in defaults apply).
fn config_location(cli: &Cli) -> ConfigLocation {
    match &cli.config {
        Some(path) => ConfigLocation {
            path: path.clone(),
            explicit: true,
        },
        None => ConfigLocation {
            path: std::path::PathBuf::from(paths::DEFAULT_CONFIG_PATH),
            explicit: false,
        },
    }
}
