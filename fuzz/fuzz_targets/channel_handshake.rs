//! Fuzz target `channel_handshake`: see `meshd_link::fuzzing::channel_handshake` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_link::fuzzing::channel_handshake(data));
