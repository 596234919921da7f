//! The roles stay apart (docs/architecture.md, "Module map"): no role's code
//! names another role, and config names none, so each can change without the
//! others. What two roles share (the hub wire, ids, keys) lives outside them.
//! The composition root (`supervisor.rs`), the control dispatcher and the
//! web console (a read-only view of the others) are the only places that
//! name roles; no role names the console.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

const ROLES: &[&str] = &["signaling", "mesh", "chat", "web"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The other modules `module` may not name.
fn forbidden(module: &str) -> Vec<String> {
    ROLES
        .iter()
        .filter(|role| **role != module)
        .flat_map(|role| {
            [
                format!("crate::{role}::"),
                format!("crate::{role};"),
                format!("crate::{role}::{{"),
            ]
        })
        .collect()
}

#[test]
fn no_role_and_not_config_imports_a_role() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for module in ["signaling", "mesh", "chat", "config"] {
        let mut files = Vec::new();
        sources(&src.join(module), &mut files);
        assert!(!files.is_empty(), "no sources under src/{module}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a readable source");
            for (number, line) in text.lines().enumerate() {
                for needle in forbidden(module) {
                    assert!(
                        !line.contains(&needle),
                        "{}:{}: {module} names another role ({needle}): move what both need out of the roles, e.g. into hub_wire",
                        file.display(),
                        number + 1
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} files checked");
}
