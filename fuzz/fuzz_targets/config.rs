//! Fuzz target `config`: see `meshd::fuzzing::config` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::config(data));
