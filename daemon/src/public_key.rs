//! Device public keys: X25519, 32 bytes, base64 (standard alphabet, padded)
//! on the wire (docs/signaling-api.md).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|error| format!("not base64 ({error})"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| format!("expected 32 bytes, got {}", bytes.len()))?;
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
                .contains("32 bytes")
        );
        assert!(
            PublicKey::from_base64("***")
                .unwrap_err()
                .contains("base64")
        );
    }
}
