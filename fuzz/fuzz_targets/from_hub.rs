//! Fuzz target `from_hub`: see `meshd::fuzzing::from_hub` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::from_hub(data));
