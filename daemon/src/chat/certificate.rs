//! The chat port's certificate and private key (docs/chat-protocol.md#tls):
//! the operator's PEM files (`[chat] tls_cert`, `tls_key`), or meshd's own
//! self-signed pair in the state directory, `chat-cert.pem` (0644) and
//! `chat-key.pem` (0600), created on first start and kept.
//!
//! Blocking file work only; the caller runs it on the blocking pool once,
//! before any role starts. Like the device key (`key_file.rs`), meshd never
//! replaces a file it finds: clients pin the certificate's fingerprint, so a
//! new certificate would lock them out. A damaged or missing file, or a key
//! that others can read, stops the start with the path and the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::atomic_file::{create_private_dir, write_atomically};
use crate::config::ChatTls;
use crate::state_file::{self, StateFileError};

/// The self-signed certificate's file in the state directory.
pub const SELF_SIGNED_CERT: &str = "chat-cert.pem";
/// Its private key's file.
pub const SELF_SIGNED_KEY: &str = "chat-key.pem";

/// What to do about a bad file of the operator's.
const FIX_FILES: &str = "point chat.tls_cert and chat.tls_key at PEM files (the certificate chain, end-entity first, and its private key)";
/// What to do about a bad file of meshd's own pair.
const FIX_SELF_SIGNED: &str = "meshd will not replace it on its own: restore it, or delete chat-cert.pem and chat-key.pem in the state directory to make a new certificate (clients that pinned the old fingerprint must then pin the new one)";

/// A certificate chain and its key, ready for rustls.
#[derive(Debug)]
pub struct CertifiedKey {
    /// End-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where they came from, for errors about the pair.
    pub cert_path: PathBuf,
    /// The key's file.
    pub key_path: PathBuf,
    /// What to do when rustls refuses the pair.
    pub fix: &'static str,
}

/// Why the certificate or key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The file could not be read or written.
    #[error("{}: {source}; check that it exists and that meshd's user may read it", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not UTF-8, or a dangling symbolic link.
    #[error("{0}")]
    Unreadable(#[from] StateFileError),
    /// The file is not PEM, or holds no item of the kind wanted.
    #[error("{}: {what}; {fix}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
        /// What to do.
        fix: &'static str,
    },
    /// Others than meshd's user may read the private key.
    #[error("{}: the chat TLS key can be read by others (mode {mode:04o}); a private key must be readable by meshd's user only: chmod 600 {}", path.display(), path.display())]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// meshd's own certificate is there but its key is not.
    #[error("{}: the certificate's key {} is missing; {FIX_SELF_SIGNED}", cert.display(), key.display())]
    KeyMissing {
        /// The certificate file.
        cert: PathBuf,
        /// The missing key file.
        key: PathBuf,
    },
    /// rcgen could not make a certificate.
    #[error("making a self-signed chat certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Loads the certificate and key `tls` names, creating meshd's own pair in
/// `state_dir` on first start.
pub fn load(tls: &ChatTls, state_dir: &Path) -> Result<CertifiedKey, CertificateError> {
    match tls {
        ChatTls::Files { cert, key } => load_pair(cert, key, FIX_FILES),
        ChatTls::SelfSigned => load_or_create_self_signed(state_dir),
    }
}

fn load_pair(cert: &Path, key: &Path, fix: &'static str) -> Result<CertifiedKey, CertificateError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertificateError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let cert_text = read(cert)?;
    let key_text = read(key)?;
    check_private(key)?;
    let invalid = |path: &Path, what: String| CertificateError::Invalid {
        path: path.to_owned(),
        what,
        fix,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(cert, format!("not a PEM certificate ({error})")))?;
    if chain.is_empty() {
        return Err(invalid(
            cert,
            "no PEM CERTIFICATE block in the file".to_owned(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_text).map_err(|error| {
        invalid(
            key,
            format!("no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file ({error})"),
        )
    })?;
    Ok(CertifiedKey {
        chain,
        key: private,
        cert_path: cert.to_owned(),
        key_path: key.to_owned(),
        fix,
    })
}

/// A private key that others can read is refused, as OpenSSH refuses one:
/// whoever read it can be this server.
fn check_private(key: &Path) -> Result<(), CertificateError> {
    let mode = std::fs::metadata(key)
        .map_err(|source| CertificateError::Io {
            path: key.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CertificateError::Exposed {
            path: key.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

fn load_or_create_self_signed(state_dir: &Path) -> Result<CertifiedKey, CertificateError> {
    let cert = state_dir.join(SELF_SIGNED_CERT);
    let key = state_dir.join(SELF_SIGNED_KEY);
    let cert_text = state_file::read_text(&cert)?;
    let key_text = state_file::read_text(&key)?;
    match (cert_text, key_text) {
        (Some(_), Some(_)) => load_pair(&cert, &key, FIX_SELF_SIGNED),
        (Some(_), None) => Err(CertificateError::KeyMissing { cert, key }),
        // The key is written first; a start that stopped before the
        // certificate was written left a key that no client has pinned yet.
        (None, Some(key_pem)) => {
            check_private(&key)?;
            let pair =
                rcgen::KeyPair::from_pem(&key_pem).map_err(|error| CertificateError::Invalid {
                    path: key.clone(),
                    what: format!("not a PEM private key meshd can use ({error})"),
                    fix: FIX_SELF_SIGNED,
                })?;
            create(state_dir, &cert, &key, pair, false)
        }
        (None, None) => create(state_dir, &cert, &key, rcgen::KeyPair::generate()?, true),
    }
}

/// Makes a self-signed certificate for `pair` (ECDSA P-256, valid until
/// 4096: it is pinned, not trusted through a chain) and writes it, and the
/// key when `write_key`, atomically.
fn create(
    state_dir: &Path,
    cert: &Path,
    key: &Path,
    pair: rcgen::KeyPair,
    write_key: bool,
) -> Result<CertifiedKey, CertificateError> {
    create_private_dir(state_dir).map_err(|source| CertificateError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshd chat (self-signed)");
    let certificate = params.self_signed(&pair)?;
    if write_key {
        write_atomically(key, pair.serialize_pem().as_bytes(), 0o600).map_err(|source| {
            CertificateError::Io {
                path: key.to_owned(),
                source,
            }
        })?;
    }
    write_atomically(cert, certificate.pem().as_bytes(), 0o644).map_err(|source| {
        CertificateError::Io {
            path: cert.to_owned(),
            source,
        }
    })?;
    tracing::info!(path = %cert.display(), "created a self-signed chat certificate");
    Ok(CertifiedKey {
        chain: vec![certificate.der().clone()],
        key: PrivateKeyDer::Pkcs8(pair.serialize_der().into()),
        cert_path: cert.to_owned(),
        key_path: key.to_owned(),
        fix: FIX_SELF_SIGNED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_self_signed_pair_is_created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load(&ChatTls::SelfSigned, &state).unwrap();
        assert_eq!(mode(&state.join(SELF_SIGNED_KEY)), 0o600);
        assert_eq!(mode(&state.join(SELF_SIGNED_CERT)), 0o644);
        let again = load(&ChatTls::SelfSigned, &state).unwrap();
        assert_eq!(first.chain, again.chain, "the same certificate");
    }

    #[test]
    fn a_key_without_its_certificate_gets_one_and_the_reverse_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load(&ChatTls::SelfSigned, dir.path()).unwrap();
        let key_before = std::fs::read(dir.path().join(SELF_SIGNED_KEY)).unwrap();
        std::fs::remove_file(dir.path().join(SELF_SIGNED_CERT)).unwrap();
        load(&ChatTls::SelfSigned, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(SELF_SIGNED_KEY)).unwrap(),
            key_before,
            "the key is kept"
        );
        std::fs::remove_file(dir.path().join(SELF_SIGNED_KEY)).unwrap();
        let error = load(&ChatTls::SelfSigned, dir.path()).unwrap_err();
        assert!(
            matches!(error, CertificateError::KeyMissing { .. }),
            "{error}"
        );
        assert!(
            dir.path().join(SELF_SIGNED_CERT).exists(),
            "the certificate is not replaced"
        );
    }

    #[test]
    fn damaged_files_name_their_path_and_are_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        load(&ChatTls::SelfSigned, dir.path()).unwrap();
        let cert = dir.path().join(SELF_SIGNED_CERT);
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let error = load(&ChatTls::SelfSigned, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!("{}: not a PEM certificate", cert.display()))
                && error.contains("delete chat-cert.pem and chat-key.pem"),
            "{error}"
        );
        std::fs::write(&cert, "nothing here\n").unwrap();
        let error = load(&ChatTls::SelfSigned, dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("no PEM CERTIFICATE block"), "{error}");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "nothing here\n");
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let own = load(&ChatTls::SelfSigned, dir.path()).unwrap();
        for mode in [0o644, 0o640] {
            std::fs::set_permissions(&own.key_path, std::fs::Permissions::from_mode(mode)).unwrap();
            let files = ChatTls::Files {
                cert: own.cert_path.clone(),
                key: own.key_path.clone(),
            };
            let error = load(&files, dir.path()).unwrap_err();
            assert!(matches!(error, CertificateError::Exposed { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .contains(&format!("chmod 600 {}", own.key_path.display())),
                "{error}"
            );
        }
    }

    #[test]
    fn missing_operator_files_are_named() {
        let files = ChatTls::Files {
            cert: "/nonexistent/chat.pem".into(),
            key: "/nonexistent/chat.key".into(),
        };
        let error = load(&files, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/nonexistent/chat.pem: "), "{error}");
    }
}
