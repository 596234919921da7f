//! `meshctl users add|passwd|remove|list`

use std::io::BufRead;

use meshd_ipc::{Request, Response};

use crate::cli::UsersAction;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::outln;

/// Reads a new password: one line from stdin, or twice from the terminal
/// without echo.
pub fn read_password(from_stdin: bool) -> Result<String, CtlError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CtlError::Input(format!("reading the password from stdin: {e}")))?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(CtlError::Input("no password on stdin".to_owned()));
        }
        return Ok(password);
    }
    let no_terminal = |e: std::io::Error| {
        CtlError::Input(format!(
            "cannot prompt for a password ({e}); pipe it in with --password-stdin"
        ))
    };
    let first = rpassword::prompt_password("Password: ").map_err(no_terminal)?;
    let second = rpassword::prompt_password("Retype password: ").map_err(no_terminal)?;
    if first != second {
        return Err(CtlError::Input(
            "the passwords differ; nothing changed".to_owned(),
        ));
    }
    Ok(first)
}

/// Runs a users subcommand; `password` is set for add and passwd.
pub fn run(
    client: &mut Client,
    action: UsersAction,
    password: Option<String>,
    json: bool,
) -> Result<(), CtlError> {
    let request = match action {
        UsersAction::List => Request::UsersList,
        UsersAction::Add { name, .. } => Request::UsersAdd {
            name,
            password: password.unwrap_or_default(),
        },
        UsersAction::Passwd { name, .. } => Request::UsersPasswd {
            name,
            password: password.unwrap_or_default(),
        },
        UsersAction::Remove { name } => Request::UsersRemove { name },
    };
    match client.call(request)? {
        Response::Users(users) if json => print_json(&users),
        Response::Users(users) if users.is_empty() => outln!("no chat users"),
        Response::Users(users) => {
            for user in users {
                outln!("{}", user.name);
            }
        }
        Response::UserChanged(change) if json => print_json(&change),
        Response::UserChanged(change) => outln!("chat user {} {}", change.name, change.action),
        other => return Err(client.unexpected(&other)),
    }
    Ok(())
}
