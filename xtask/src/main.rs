//! Build tasks that need the code's own definitions, so that what ships
//! never drifts from it (ripgrep generates its man page the same way).
//!
//! `cargo run -p xtask -- dist [DIR]` writes into DIR (default `target/dist`):
//! - `man/meshd.8` and `man/meshctl.1` from the clap definitions, which this
//!   crate includes straight from `daemon/src/cli.rs` and `ctl/src/cli.rs`;
//! - `man/meshd.toml.5` from `etc/meshd.toml`, the annotated example config
//!   that a test keeps complete;
//! - `completions/` for bash, zsh and fish.

#[path = "../../daemon/src/cli.rs"]
#[allow(dead_code)]
mod meshd_cli;

#[path = "../../ctl/src/cli.rs"]
#[allow(dead_code)]
mod meshctl_cli;

mod config_page;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let result = match args.first().map(String::as_str) {
        Some("dist") => {
            let out = args
                .get(1)
                .map_or_else(|| workspace.join("target/dist"), PathBuf::from);
            dist(&workspace, &out)
        }
        _ => {
            eprintln!("usage: cargo run -p xtask -- dist [OUT_DIR]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

fn dist(workspace: &Path, out: &Path) -> Result<(), String> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }

    let meshd = meshd_cli::Cli::command().name("meshd");
    write_man(&man.join("meshd.8"), meshd, "8")?;
    let meshctl = meshctl_cli::Cli::command().name("meshctl");
    write_man(&man.join("meshctl.1"), meshctl, "1")?;

    let example = workspace.join("etc/meshd.toml");
    let text =
        fs::read_to_string(&example).map_err(|e| format!("reading {}: {e}", example.display()))?;
    let page = config_page::render(&text, env!("CARGO_PKG_VERSION"));
    write(&man.join("meshd.toml.5"), page.as_bytes())?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = meshctl_cli::Cli::command().name("meshctl");
        clap_complete::generate_to(shell, &mut command, "meshctl", &completions)
            .map_err(|e| format!("writing {shell} completions: {e}"))?;
    }
    println!("wrote man pages and completions to {}", out.display());
    Ok(())
}

fn write_man(path: &Path, command: clap::Command, section: &str) -> Result<(), String> {
    let mut buffer = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .source(format!("meshd {}", env!("CARGO_PKG_VERSION")))
        .manual("meshd manual")
        .render(&mut buffer)
        .map_err(|e| format!("rendering {}: {e}", path.display()))?;
    write(path, &buffer)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(command: clap::Command, section: &str) -> String {
        let dir = std::env::temp_dir().join(format!("xtask-man-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("page.{section}"));
        write_man(&path, command, section).unwrap();
        let page = fs::read_to_string(&path).unwrap();
        let _ = fs::remove_dir_all(&dir);
        page
    }

    /// The text of a man page section, from its `.SH` to the next.
    fn section<'a>(page: &'a str, name: &str) -> &'a str {
        let start = page
            .find(&format!(".SH {name}\n"))
            .unwrap_or_else(|| panic!("no {name} section in\n{page}"));
        let rest = &page[start + name.len() + 5..];
        &rest[..rest.find("\n.SH ").unwrap_or(rest.len())]
    }

    #[test]
    fn the_man_pages_name_and_describe_their_own_program() {
        let meshd = render(meshd_cli::Cli::command().name("meshd"), "8");
        assert_eq!(
            section(&meshd, "NAME").trim(),
            "meshd \\- A self\\-hosted mesh of devices, its signaling hub and a chat server"
        );
        assert!(section(&meshd, "DESCRIPTION").contains("/etc/meshd/meshd.toml"));
        let meshctl = render(meshctl_cli::Cli::command().name("meshctl"), "1");
        assert_eq!(
            section(&meshctl, "NAME").trim(),
            "meshctl \\- Control a running meshd over its local socket"
        );
        for page in [&meshd, &meshctl] {
            assert!(
                !page.contains("build tasks"),
                "xtask's description leaked:\n{page}"
            );
        }
    }
}
