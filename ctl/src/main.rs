//! meshctl: the command-line client of meshd. It is synchronous and small:
//! it links no async runtime, HTTP stack, Noise or argon2 (a CI check proves
//! it), and talks to meshd only through the control socket, using the types
//! in meshd-ipc. The one crypto it links is rustls' blocking client, for
//! `meshctl chat --tls`.

// Everything on stdout goes through `stdout::out!` and `outln!`, which end
// meshctl quietly when the reader goes away; `println!` would panic then.
#![deny(clippy::print_stdout)]

mod cli;
mod client;
mod commands;
mod error;
mod output;
mod stdout;
mod tls;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, DevicesAction, HubsAction, UsersAction};
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
    // The chat client talks to a chat server, not to meshd's socket.
    if let Command::Chat {
        server,
        tls,
        fingerprint,
    } = cli.command
    {
        let trust = match (tls, fingerprint) {
            (false, _) => None,
            (true, None) => Some(tls::Trust::SystemRoots),
            (true, Some(text)) => match meshd_ipc::fingerprint::parse(&text) {
                Ok(digest) => Some(tls::Trust::Pinned(digest)),
                // A usage error (exit 2), like any malformed argument.
                Err(error) => Cli::command()
                    .error(clap::error::ErrorKind::ValueValidation, error)
                    .exit(),
            },
        };
        return commands::chat::run(server, trust, &socket);
    }
    // Ask for passwords before connecting, so a slow typist does not hold a
    // control connection open.
    let password = match &cli.command {
        Command::Users {
            action:
                UsersAction::Add { password_stdin, .. } | UsersAction::Passwd { password_stdin, .. },
        } => Some(commands::users::read_password(*password_stdin)?),
        _ => None,
    };
    if let Command::Send { all: false, words } = &cli.command
        && words.len() < 2
    {
        // A usage error (exit 2), found before meshd is asked anything.
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                commands::send::NO_TEXT,
            )
            .exit();
    }
    let mut client = Client::connect(&socket)?;
    match cli.command {
        Command::Status => commands::status::run(&mut client, cli.json),
        Command::Devices { action: None } => commands::devices::list(&mut client, cli.json),
        Command::Devices {
            action: Some(DevicesAction::Remove { id }),
        } => commands::devices::remove(&mut client, id, cli.json),
        Command::Hubs {
            action: HubsAction::Forget { url },
        } => commands::hubs::forget(&mut client, url, cli.json),
        Command::Reload => commands::reload::run(&mut client, cli.json),
        Command::Users { action } => commands::users::run(&mut client, action, password, cli.json),
        Command::Broadcast { text } => {
            commands::broadcast::run(&mut client, text.join(" "), cli.json)
        }
        Command::Send { all, words } => commands::send::run(&mut client, all, words, cli.json),
        Command::Messages { follow } => commands::messages::run(&mut client, follow, cli.json),
        Command::Ping { device, count } => {
            commands::ping::run(&mut client, device, count, cli.json)
        }
        Command::Netcheck => commands::netcheck::run(&mut client, cli.json),
        Command::Chat { .. } => Ok(()),
    }
}
