//! Fuzz target `known_hubs_file`: see `meshd::fuzzing::known_hubs_file` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::known_hubs_file(data));
