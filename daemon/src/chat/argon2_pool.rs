//! argon2id into reusable memory.
//!
//! argon2id at OWASP's cost fills 19 MiB per hash. Allocated per call, glibc
//! serves each from the calling thread's malloc arena and keeps it there after
//! the free, so a storm of parallel logins on the blocking pool's threads left
//! meshd holding 19 MiB per thread for good (27 MiB to 455 MiB after 200
//! logins). Here the memory is a fixed set of buffers, one per permitted
//! concurrent hash ([`Argon2Pool::new`]'s `slots`), allocated on first use and
//! reused after: RSS is bounded by the permits, not by the threads.

use std::sync::Mutex;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

use crate::sync::lock;

/// The cost of every hash meshd makes: OWASP's argon2id minimum (19 MiB, 2
/// passes, 1 lane).
fn params() -> Params {
    Params::new(
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
        None,
    )
    .unwrap_or(Params::DEFAULT)
}

/// Why a hash could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused its inputs (it never does for meshd's parameters).
    #[error("cannot hash the password: {0}")]
    Argon2(String),
}

/// Memory buffers for argon2, at most one per concurrent caller.
pub struct Argon2Pool {
    free: Mutex<Vec<Vec<Block>>>,
    /// Buffers kept at most; callers beyond it are the semaphore's to stop.
    slots: usize,
}

impl Argon2Pool {
    /// A pool that keeps at most `slots` buffers.
    pub fn new(slots: usize) -> Argon2Pool {
        Argon2Pool {
            free: Mutex::new(Vec::with_capacity(slots)),
            slots,
        }
    }

    /// Runs `f` with a buffer of exactly `blocks` blocks: a kept one when
    /// one fits, a new one otherwise. Buffers of meshd's own cost go back to
    /// the pool; a larger one (a hash made elsewhere with a higher cost) is
    /// freed after use.
    fn with_memory<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let standard = params().block_count();
        let kept = if blocks == standard {
            lock(&self.free).pop()
        } else {
            None
        };
        let mut memory = kept.unwrap_or_else(|| vec![Block::new(); blocks]);
        let result = f(&mut memory);
        if memory.len() == standard {
            let mut free = lock(&self.free);
            if free.len() < self.slots {
                free.push(memory);
            }
        }
        result
    }

    /// Hashes `password` into a PHC string with a fresh random salt
    /// (blocking: call it on the blocking pool).
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let params = params();
        let salt_bytes: [u8; Salt::RECOMMENDED_LENGTH] = rand::random();
        let salt = Salt::new(&salt_bytes).map_err(|e| HashError::Argon2(e.to_string()))?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        self.with_memory(params.block_count(), |memory| {
            argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, memory)
        })
        .map_err(|e| HashError::Argon2(e.to_string()))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params)
                .map_err(|e| HashError::Argon2(e.to_string()))?,
            salt: Some(salt),
            hash: Some(Output::new(&out).map_err(|e| HashError::Argon2(e.to_string()))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string `hash` (blocking). A hash
    /// that does not parse matches nothing.
    pub fn verify(&self, hash: &str, password: &str) -> bool {
        let Ok(phc) = PasswordHash::new(hash) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
            return false;
        };
        let version = phc
            .version
            .map_or(Ok(Version::V0x13), Version::try_from)
            .unwrap_or(Version::V0x13);
        let Ok(params) = Params::try_from(&phc) else {
            return false;
        };
        let expected = expected.as_bytes();
        let mut out = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let hashed = self.with_memory(params.block_count(), |memory| {
            argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, memory)
        });
        hashed.is_ok() && bool::from(out.ct_eq(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_are_argon2id_with_owasp_cost_and_verify() {
        let pool = Argon2Pool::new(1);
        let hash = pool.hash("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(pool.verify(&hash, "correct horse"));
        assert!(!pool.verify(&hash, "wrong"));
        assert_ne!(hash, pool.hash("correct horse").unwrap(), "salted");
        assert_eq!(lock(&pool.free).len(), 1, "one buffer, reused");
    }

    #[test]
    fn agrees_with_the_argon2_crate_both_ways() {
        let pool = Argon2Pool::new(1);
        let ours = pool.hash("pw").unwrap();
        let theirs = Argon2::default().hash_password(b"pw").unwrap().to_string();
        assert!(
            Argon2::default()
                .verify_password(b"pw", ours.as_str())
                .is_ok()
        );
        assert!(pool.verify(&theirs, "pw"));
        // Another cost (a hash made elsewhere) verifies too, in memory of
        // its own that is not kept.
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(pool.verify(&cheap, "pw"));
        assert!(!pool.verify(&cheap, "nope"));
        assert_eq!(lock(&pool.free).len(), 1);
    }

    #[test]
    fn garbage_matches_nothing() {
        let pool = Argon2Pool::new(1);
        assert!(!pool.verify("", "pw"));
        assert!(!pool.verify("$argon2id$v=19$m=19456,t=2,p=1$", "pw"));
        assert!(!pool.verify("$scrypt$ln=1,r=8,p=1$c2FsdHNhbHQ$aGFzaA", "pw"));
    }
}
