//! Fuzz target `link_handshake`: see `meshd_link::fuzzing::link_handshake` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_link::fuzzing::link_handshake(data));
