//! Fuzz target `control_request`: see `meshd::fuzzing::control_request` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::control_request(data));
