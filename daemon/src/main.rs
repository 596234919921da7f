//! meshd: the daemon.
mod config;
mod device_id;
mod paths;
fn main() {}
