//! meshd's peer link: what two devices speak once a byte stream joins them.
//!
//! Three layers, each in its own module, none of which knows where the stream
//! came from (a dialled TCP connection, an accepted one, or a stream spliced
//! through a relay):
//!
//! - [`handshake`]: Noise_IK over X25519 with AES-256-GCM and BLAKE2s (via
//!   `snow` and its ring backend), then a key confirmation from the dialler.
//!   Both sides prove their static keys; each also names itself and the
//!   device it expects, so a caller can check the key against the one
//!   registered for that id before any message flows.
//! - [`record`]: the encrypted byte stream: records of at most 65,535 bytes,
//!   each `u16` length-prefixed and sealed with its own nonce.
//! - [`frame`]: messages, acknowledgements, pings and closes, `u32`
//!   length-prefixed inside the decrypted stream, at most [`MAX_FRAME_BYTES`].
//!
//! [`Link`] puts them together and splits into a reader and a writer that can
//! live in different tasks.
//!
//! A device's connections to a hub begin with the hub handshake
//! (`Noise_XX`, both keys proven, the hub's first): [`channel`] then reuses
//! the record layer for length-prefixed messages; [`relay_join`] hands the
//! stream back for a link through the hub's relay.

pub mod channel;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
mod hub_handshake;
mod identity;
mod link;
pub mod record;
pub mod relay_join;

pub use frame::{Frame, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES};
pub use handshake::{Hello, Inbound, accept, connect};
pub use identity::{KEY_LEN, StaticKey};
pub use link::{Link, LinkReader, LinkWriter};

/// Everything that can go wrong on a link; each ends that link only.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The stream failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The stream closed cleanly between frames.
    #[error("closed by the peer")]
    Closed,
    /// The Noise handshake failed: wrong key, tampering, or not a meshd peer.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A record did not decrypt: tampering, a wrong key, or a broken stream.
    #[error("record failed to decrypt; the stream was altered or is not from this peer")]
    Decrypt,
    /// The peer broke the framing rules.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A send exceeded the limits of the protocol.
    #[error("frame too large: {size} bytes, at most {MAX_FRAME_BYTES}")]
    TooLarge {
        /// The frame's encoded size.
        size: usize,
    },
    /// The handshake took too long.
    #[error("handshake timed out")]
    Timeout,
    /// A hub proved a key other than the one expected (pinned).
    #[error("the hub proved another key than the one expected")]
    UnexpectedHubKey {
        /// The key it proved (boxed: errors stay small).
        proved: Box<[u8; KEY_LEN]>,
    },
    /// The hub refused a relay join.
    #[error("the hub refused: {0}")]
    Refused(String),
}
