//! Fuzz target `relay_join_handshake`: see `meshd_link::fuzzing::relay_join_handshake` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_link::fuzzing::relay_join_handshake(data));
