//! One module per subcommand; each sends its request and prints the answer.

pub mod devices;
pub mod reload;
pub mod status;
