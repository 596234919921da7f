//! Device public keys: X25519, 32 bytes, base64 (standard alphabet, padded)
//! on the wire (docs/signaling-api.md).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

/// Why a text is not a public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// Not standard padded base64.
    #[error("not base64 ({0})")]
    NotBase64(#[from] base64::DecodeError),
    /// Base64 of another length than a key's.
    #[error("expected 32 bytes, got {0}")]
    Length(usize),
}

impl PublicKey {
    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, PublicKeyError> {
        let bytes = STANDARD.decode(text.trim())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| PublicKeyError::Length(bytes.len()))?;
        Ok(PublicKey(bytes))
    }

    /// The base64 form.
    pub fn to_base64(self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_length() {
        let key = PublicKey([7; 32]);
        assert_eq!(PublicKey::from_base64(&key.to_base64()).unwrap(), key);
        assert!(
            PublicKey::from_base64("AAAA")
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
        assert!(
            PublicKey::from_base64("***")
                .unwrap_err()
                .to_string()
                .contains("base64")
        );
    }
}
