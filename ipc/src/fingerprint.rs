//! The chat certificate's fingerprint as `meshctl status` shows it and
//! `meshctl chat --fingerprint` takes it: `sha256:` and 64 lower-case hex
//! digits of the SHA-256 of the DER certificate (docs/chat-protocol.md#tls).
//!
//! Only the text form lives here, so that the daemon and meshctl agree on it;
//! the hashing is each side's, with the crypto it already links (for TLS
//! clients, `tls::sha256` behind the `tls` feature).

use std::fmt::Write;

/// The prefix naming the hash.
pub const PREFIX: &str = "sha256:";

/// Length of a SHA-256 digest.
pub const SHA256_LEN: usize = 32;

/// Why a `--fingerprint` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// No `sha256:` in front.
    #[error("{0:?} does not start with sha256:; copy it from `meshctl status` on the server")]
    Prefix(String),
    /// The rest is not 64 hex digits.
    #[error("{0:?} is not sha256: and 64 hex digits; copy it from `meshctl status` on the server")]
    Digits(String),
}

/// `sha256:` and the digest in lower-case hex.
pub fn format(sha256: &[u8; SHA256_LEN]) -> String {
    let mut text = String::with_capacity(PREFIX.len() + 2 * SHA256_LEN);
    text.push_str(PREFIX);
    for byte in sha256 {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Parses what [`format()`] writes; upper-case hex and `:` between the bytes
/// (as `openssl x509 -fingerprint` prints them) are accepted too.
pub fn parse(text: &str) -> Result<[u8; SHA256_LEN], FingerprintError> {
    let trimmed = text.trim();
    let Some(hex) = trimmed
        .get(..PREFIX.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(PREFIX))
        .map(|_| &trimmed[PREFIX.len()..])
    else {
        return Err(FingerprintError::Prefix(text.to_owned()));
    };
    let digits: Vec<u8> = hex.bytes().filter(|&byte| byte != b':').collect();
    let digits_error = || FingerprintError::Digits(text.to_owned());
    if digits.len() != 2 * SHA256_LEN {
        return Err(digits_error());
    }
    let mut out = [0u8; SHA256_LEN];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = hex_value(pair[0]).ok_or_else(digits_error)?;
        let low = hex_value(pair[1]).ok_or_else(digits_error)?;
        *byte = (high << 4) | low;
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lower_case_hex_after_the_prefix() {
        let mut digest = [0u8; SHA256_LEN];
        digest[0] = 0xab;
        digest[31] = 0x0f;
        let text = format(&digest);
        assert_eq!(text.len(), 7 + 64);
        assert!(text.starts_with("sha256:ab00"), "{text}");
        assert!(text.ends_with("000f"), "{text}");
        assert_eq!(parse(&text).unwrap(), digest);
    }

    #[test]
    fn parses_the_forms_people_paste() {
        let digest = [0x5a; SHA256_LEN];
        let colons = format!("SHA256:{}", ["5A"; SHA256_LEN].join(":"));
        assert_eq!(parse(&colons).unwrap(), digest);
        assert_eq!(parse(&format!(" {} \n", format(&digest))).unwrap(), digest);
    }

    #[test]
    fn refuses_what_is_not_a_fingerprint() {
        assert!(matches!(parse("5a5a"), Err(FingerprintError::Prefix(_))));
        assert!(matches!(
            parse("sha1:5a5a"),
            Err(FingerprintError::Prefix(_))
        ));
        assert!(matches!(
            parse("sha256:5a5a"),
            Err(FingerprintError::Digits(_))
        ));
        let bad_digit = format!("sha256:{}zz", "00".repeat(31));
        assert!(matches!(
            parse(&bad_digit),
            Err(FingerprintError::Digits(_))
        ));
        let error = parse("md5:x").unwrap_err().to_string();
        assert!(error.contains("meshctl status"), "{error}");
    }
}
