//! Fuzz target `device_key_file`: see `meshd::fuzzing::device_key_file` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::device_key_file(data));
