//! A device's static X25519 key pair, the identity its links prove.

use std::fmt;

/// Length of an X25519 key.
pub const KEY_LEN: usize = 32;

/// A static key pair. The private half never leaves this struct except to
/// build a Noise handshake or to be saved by its owner.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl StaticKey {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, String> {
        let keypair = snow::Builder::new(crate::handshake::params())
            .generate_keypair()
            .map_err(|error| format!("generating a key pair: {error}"))?;
        Self::from_parts(&keypair.private, &keypair.public)
    }

    /// A key pair from its private half; the public half is derived.
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(private).to_bytes();
        StaticKey { private, public }
    }

    fn from_parts(private: &[u8], public: &[u8]) -> Result<Self, String> {
        let private: [u8; KEY_LEN] = private
            .try_into()
            .map_err(|_| "private key has the wrong length".to_owned())?;
        let key = Self::from_private(private);
        if key.public[..] != public[..] {
            return Err("generated public key does not match its private key".to_owned());
        }
        Ok(key)
    }

    /// The private half, to be stored by the owner (mode 0600).
    pub fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The public half: the device's identity.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_half_is_derived_from_the_private_half() {
        let key = StaticKey::generate().unwrap();
        let again = StaticKey::from_private(*key.private());
        assert_eq!(key.public(), again.public());
        assert_ne!(key.public(), &[0; KEY_LEN]);
    }
}
