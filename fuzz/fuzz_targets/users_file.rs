//! Fuzz target `users_file`: see `meshd::fuzzing::users_file` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::users_file(data));
