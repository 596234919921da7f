//! Fuzz target `chat_line`: see `meshd::fuzzing::chat_line` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::chat_line(data));
