//! Fuzz target `link_records`: see `meshd_link::fuzzing::records` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_link::fuzzing::records(data));
