//! Replays every stored fuzz input (`fuzz/corpus/<target>/`, seeded from the
//! tests and grown by fuzzing runs; docs/testing.md) through the same entry
//! points the fuzz targets call, so stable CI checks them all on every run.
//! A target without inputs fails: a lost corpus must not pass quietly.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("config", meshd::fuzzing::config),
    ("control_request", meshd::fuzzing::control_request),
    ("register_body", meshd::fuzzing::register_body),
    ("chat_line", meshd::fuzzing::chat_line),
    ("to_hub", meshd::fuzzing::to_hub),
    ("from_hub", meshd::fuzzing::from_hub),
    ("users_file", meshd::fuzzing::users_file),
    ("bindings_file", meshd::fuzzing::bindings_file),
    ("device_key_file", meshd::fuzzing::device_key_file),
    ("link_frames", meshd_link::fuzzing::frames),
    ("link_records", meshd_link::fuzzing::records),
    ("link_handshake", meshd_link::fuzzing::link_handshake),
    ("channel_handshake", meshd_link::fuzzing::channel_handshake),
    (
        "relay_join_handshake",
        meshd_link::fuzzing::relay_join_handshake,
    ),
    ("known_hubs_file", meshd::fuzzing::known_hubs_file),
];

#[test]
fn every_stored_fuzz_input_passes_its_target() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = corpora.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
        for input in inputs {
            let data = std::fs::read(&input).expect("an input file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{} fails {name}", input.display());
            replayed += 1;
        }
    }
    eprintln!(
        "replayed {replayed} inputs through {} targets",
        TARGETS.len()
    );
}

#[test]
fn every_fuzz_target_is_replayed() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&targets)
        .expect("fuzz/fuzz_targets")
        .map(|entry| {
            let path = entry.expect("an entry").path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    let mut replayed: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    replayed.sort();
    assert_eq!(names, replayed);
}
