//! Fuzz target `link_frames`: see `meshd_link::fuzzing::frames` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_link::fuzzing::frames(data));
