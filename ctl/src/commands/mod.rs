//! One module per subcommand; each sends its request and prints the answer.

pub mod broadcast;
pub mod chat;
pub mod devices;
pub mod hubs;
pub mod messages;
pub mod netcheck;
pub mod ping;
pub mod reload;
pub mod send;
pub mod status;
pub mod users;
