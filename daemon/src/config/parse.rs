//! From TOML text to [`RawConfig`], collecting every structural problem.
//!
//! serde stops at the first error, so each error is mapped back through its
//! byte span to the key that caused it; that key is recorded as a problem,
//! removed from the document, and deserialization runs again. The same spans
//! give the line of every key for the semantic checks in `validate.rs`.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::error::Problem;
use super::raw::RawConfig;

/// The line on which each dotted key's value starts.
#[derive(Debug, Default)]
pub struct KeyLines(HashMap<String, usize>);

impl KeyLines {
    /// The line of `key`, if the file has it.
    pub fn of(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }
}

/// Parses `text`; problems are appended, and what could be read is returned.
pub fn parse_document(text: &str, problems: &mut Vec<Problem>) -> (RawConfig, KeyLines) {
    let mut root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(error) => {
            problems.push(Problem {
                line: error.span().map(|span| line_of(text, span.start)),
                key: String::new(),
                message: format!("invalid TOML: {}", one_line(error.message())),
            });
            return (RawConfig::default(), KeyLines::default());
        }
    };
    let lines = index_lines(text, root.get_ref());

    // Each failed attempt removes one key, so this ends within the key count.
    loop {
        let attempt = RawConfig::deserialize(toml::de::Deserializer::from(root.clone()));
        let error = match attempt {
            Ok(raw) => return (raw, lines),
            Err(error) => error,
        };
        let span = error.span();
        let key = span
            .clone()
            .and_then(|span| remove_key_at(root.get_mut(), &span));
        problems.push(Problem {
            line: span.map(|span| line_of(text, span.start)),
            key: key.clone().unwrap_or_default(),
            message: humanize(error.message()),
        });
        if key.is_none() {
            return (RawConfig::default(), lines);
        }
    }
}

/// 1-based line number of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn index_lines(text: &str, root: &DeTable<'_>) -> KeyLines {
    let mut lines = HashMap::new();
    for (section, value) in root {
        lines.insert(
            section.get_ref().to_string(),
            line_of(text, section.span().start),
        );
        if let DeValue::Table(table) = value.get_ref() {
            for (key, value) in table {
                let dotted = format!("{}.{}", section.get_ref(), key.get_ref());
                lines.insert(dotted, line_of(text, value.span().start));
            }
        }
    }
    KeyLines(lines)
}

/// Removes the `section.key`, or else the section, whose key or value covers
/// `span`, and returns its dotted name.
///
/// Keys are searched first: a table opened by a `[header]` has a span that
/// covers only the header, not the keys below it.
fn remove_key_at(root: &mut DeTable<'_>, span: &Range<usize>) -> Option<String> {
    for (section, value) in root.iter_mut() {
        if let DeValue::Table(table) = value.get_mut() {
            let hit = table
                .iter()
                .find(|(key, value)| covers(&key.span(), span) || covers(&value.span(), span))
                .map(|(key, _)| key.clone());
            if let Some(key) = hit {
                table.remove(&key);
                return Some(format!("{}.{}", section.get_ref(), key.get_ref()));
            }
        }
    }
    let section = root
        .iter()
        .find(|(key, value)| covers(&key.span(), span) || covers(&value.span(), span))
        .map(|(key, _)| key.clone())?;
    root.remove(&section);
    Some(section.get_ref().to_string())
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.start < outer.end.max(outer.start + 1)
}

/// serde's "invalid type: string \"x\", expected u64" becomes
/// "expected an integer, found string \"x\"".
fn humanize(message: &str) -> String {
    let message = one_line(message);
    let message = match message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        Some((found, expected)) => format!("expected {expected}, found {found}"),
        None => message,
    };
    message
        .replace("u64", "an integer")
        .replace("unknown field", "unknown key")
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (RawConfig, Vec<Problem>) {
        let mut problems = Vec::new();
        let (raw, _) = parse_document(text, &mut problems);
        problems.sort_by_key(|problem| problem.line);
        (raw, problems)
    }

    #[test]
    fn collects_every_structural_problem() {
        let text =
            "[node]\nid = \"a\"\nbogus = 1\n\n[chat]\nmax_clients = \"many\"\nenabled = false\n";
        let (raw, problems) = parse(text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].key, "node.bogus");
        assert_eq!(problems[0].line, Some(3));
        assert!(problems[0].message.contains("unknown key"), "{problems:?}");
        assert_eq!(problems[1].key, "chat.max_clients");
        assert_eq!(problems[1].line, Some(6));
        assert!(
            problems[1].message.starts_with("expected an integer"),
            "{problems:?}"
        );
        // What was valid is kept.
        assert_eq!(raw.node.and_then(|n| n.id).as_deref(), Some("a"));
        assert_eq!(raw.chat.and_then(|c| c.enabled), Some(false));
    }

    #[test]
    fn unknown_section_is_named() {
        let (_, problems) = parse("[nodes]\nid = \"a\"\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "nodes");
        assert_eq!(problems[0].line, Some(1));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let (_, problems) = parse("[node]\nid = \n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.starts_with("invalid TOML"));
    }

    #[test]
    fn lines_are_indexed() {
        let mut problems = Vec::new();
        let (_, lines) = parse_document("\n[signaling]\n\nlisten = \"x\"\n", &mut problems);
        assert_eq!(lines.of("signaling.listen"), Some(4));
        assert_eq!(lines.of("signaling"), Some(2));
    }
}
