//! Fuzz target `bindings_file`: see `meshd::fuzzing::bindings_file` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::bindings_file(data));
