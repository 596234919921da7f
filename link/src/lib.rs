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
//! [`channel`] reuses the record layer for a device's connection to a hub:
//! a `Noise_XN` handshake in which only the device proves a key, then
//! length-prefixed messages.

pub mod channel;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
mod identity;
mod link;
pub mod record;

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
}
