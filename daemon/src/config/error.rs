//! Configuration errors: every problem found, each with file, line and key.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// Dotted key such as `chat.max_clients`; empty for file-level problems.
    pub key: String,
    /// What is wrong, lower-case, with a hint where one helps.
    pub message: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named explicitly) but cannot be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read and has one or more problems.
    #[error("{}", Rendered { origin, problems })]
    Invalid {
        /// The file name, or `<built-in defaults>`.
        origin: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// One line per problem, as `--check-config` prints them.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid { origin, problems } => problems
                .iter()
                .map(|problem| format_problem(origin, problem))
                .collect(),
        }
    }
}

struct Rendered<'a> {
    origin: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|problem| format_problem(self.origin, problem))
            .collect();
        f.write_str(&lines.join("; "))
    }
}

/// `/etc/meshd/meshd.toml:12: chat.max_clients: expected integer, found string`
fn format_problem(origin: &str, problem: &Problem) -> String {
    let mut out = String::from(origin);
    if let Some(line) = problem.line {
        out.push_str(&format!(":{line}"));
    }
    if !problem.key.is_empty() {
        out.push_str(": ");
        out.push_str(&problem.key);
    }
    out.push_str(": ");
    out.push_str(&problem.message);
    out
}
