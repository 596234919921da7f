//! meshctl: the command-line client of meshd. It is synchronous and small:
//! it links no async runtime, HTTP stack or crypto (a CI check proves it), and
//! talks to meshd only through the control socket, using the types in
//! meshd-ipc.

mod cli;
mod client;
mod commands;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, DevicesAction};
use crate::client::Client;
use crate::error::CtlError;

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors, 0 for --help and --version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshctl: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CtlError> {
    let socket = cli.socket.unwrap_or_else(meshd_ipc::default_socket_path);
    let mut client = Client::connect(&socket)?;
    match cli.command {
        Command::Status => commands::status::run(&mut client, cli.json),
        Command::Devices { action: None } => commands::devices::list(&mut client, cli.json),
        Command::Devices {
            action: Some(DevicesAction::Remove { id }),
        } => commands::devices::remove(&mut client, id, cli.json),
        Command::Reload => commands::reload::run(&mut client, cli.json),
    }
}
