//! meshd's integration tests: one binary, one module per area. Each test
//! starts real meshd processes (see the meshd-tests harness) and drives them
//! with the real meshctl and raw sockets.

// Tests and their helpers fail by panicking with a message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod browser;
mod chat;
mod chat_abuse;
mod chat_tls;
mod cluster;
mod config;
mod control;
mod deltas;
mod hostile_input;
mod hub_client;
mod lifecycle;
mod mesh;
mod nat;
mod signaling;
mod stdout_closed;
mod trust;
mod web;
