//! The meshd binary: everything is in the library (`lib.rs`), so that its
//! parsers can be fuzzed; see docs/architecture.md.

fn main() -> std::process::ExitCode {
    meshd::run()
}
