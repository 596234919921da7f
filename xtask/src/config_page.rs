//! meshd.toml(5), rendered from the annotated example config.
//!
//! The example lists every key with its default and a comment saying what
//! it does and whether a reload applies it; the page repeats exactly that,
//! section by section.

use roff::{Roff, bold, italic, roman};

/// One key of the example config.
struct Key {
    name: String,
    default: String,
    comment: Vec<String>,
}

/// One `[section]`.
struct Section {
    name: String,
    keys: Vec<Key>,
}

/// Splits the example into its header comment and its sections.
fn parse(text: &str) -> (Vec<String>, Vec<Section>) {
    let mut header = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    let mut comment = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            sections.push(Section {
                name: name.to_owned(),
                keys: Vec::new(),
            });
            comment.clear();
        } else if let Some((name, default)) = key_line(line) {
            if let Some(section) = sections.last_mut() {
                section.keys.push(Key {
                    name,
                    default,
                    comment: std::mem::take(&mut comment),
                });
            }
        } else if let Some(text) = line.strip_prefix('#') {
            let text = text.strip_prefix(' ').unwrap_or(text).to_owned();
            if sections.is_empty() {
                header.push(text);
            } else {
                comment.push(text);
            }
        }
    }
    (header, sections)
}

/// `key = value` or a commented-out `#key = value`.
fn key_line(line: &str) -> Option<(String, String)> {
    let line = line.strip_prefix('#').unwrap_or(line);
    let (name, value) = line.split_once(" = ")?;
    let is_key = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    is_key.then(|| (name.to_owned(), value.to_owned()))
}

/// The roff source of meshd.toml(5).
pub fn render(example: &str, version: &str) -> String {
    let (header, sections) = parse(example);
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            "MESHD.TOML",
            "5",
            "",
            &format!("meshd {version}"),
            "meshd manual",
        ],
    );
    page.control("SH", ["NAME"]);
    page.text([roman("meshd.toml - configuration file of meshd")]);
    page.control("SH", ["SYNOPSIS"]);
    page.text([bold("/etc/meshd/meshd.toml")]);
    page.control("SH", ["DESCRIPTION"]);
    page.text([
        roman("meshd(8) reads this TOML file at start and on reload. Its sections switch on and configure the roles. Without the file meshd runs on built-in defaults. "),
    ]);
    let skip = |l: &&String| {
        l.is_empty() || l.starts_with("meshd configuration") || l.starts_with("Reference:")
    };
    for line in header.iter().filter(|l| !skip(l)) {
        page.text([roman(line.clone())]);
        page.control("br", [] as [&str; 0]);
    }
    for section in &sections {
        page.control("SH", [format!("[{}]", section.name).as_str()]);
        for key in &section.keys {
            page.control("TP", [] as [&str; 0]);
            page.text([
                bold(key.name.clone()),
                roman(" = "),
                italic(key.default.clone()),
            ]);
            page.text([roman(key.comment.join(" "))]);
        }
    }
    page.control("SH", ["SEE ALSO"]);
    page.text([roman("meshd(8), meshctl(1)")]);
    page.to_roff()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_with_their_comments() {
        let example = "# header\n\n[node]\n# The id. restart\n#id = \"laptop\"\n\n# Level. reload\nlog_level = \"info\"\n";
        let (header, sections) = parse(example);
        assert_eq!(header, ["header"]);
        assert_eq!(sections[0].name, "node");
        assert_eq!(sections[0].keys[0].name, "id");
        assert_eq!(sections[0].keys[0].comment, ["The id. restart"]);
        assert_eq!(sections[0].keys[1].default, "\"info\"");
        let page = render(example, "0.1.0");
        assert!(page.contains("log_level"));
    }
}
