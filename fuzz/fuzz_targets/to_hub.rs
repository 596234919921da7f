//! Fuzz target `to_hub`: see `meshd::fuzzing::to_hub` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::to_hub(data));
