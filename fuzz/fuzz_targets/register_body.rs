//! Fuzz target `register_body`: see `meshd::fuzzing::register_body` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::register_body(data));
