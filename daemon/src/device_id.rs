//! Device ids: the names devices register under and `[node] id` holds.

use std::fmt;

/// A validated device id: 1-64 characters of `[A-Za-z0-9._-]` (docs/config.md,
/// `[node] id`), so it is safe in logs, file names and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a text is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Empty or too long.
    #[error("device id must be 1-{MAX_ID_LEN} characters, got {0}")]
    Length(usize),
    /// A character outside the id alphabet.
    #[error("device id may only hold A-Z, a-z, 0-9, '.', '_' and '-', found {0:?}")]
    Char(char),
}

impl DeviceId {
    /// Checks `text` against the id syntax.
    pub fn parse(text: &str) -> Result<Self, DeviceIdError> {
        if text.is_empty() || text.len() > MAX_ID_LEN {
            return Err(DeviceIdError::Length(text.len()));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(DeviceIdError::Char(bad));
        }
        Ok(DeviceId(text.to_owned()))
    }

    /// A valid id made from a host name: invalid characters become '-' and the
    /// result is cut to the maximum length.
    pub fn from_hostname(host: &str) -> Self {
        let cleaned: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_ID_LEN)
            .collect();
        if cleaned.is_empty() {
            DeviceId("meshd".to_owned())
        } else {
            DeviceId(cleaned)
        }
    }
}

impl DeviceId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_syntax() {
        assert!(DeviceId::parse("laptop").is_ok());
        assert!(DeviceId::parse("a.b_c-D9").is_ok());
        assert!(DeviceId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "has space", "slash/", "ü", &"x".repeat(65)] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostnames_become_valid_ids() {
        assert_eq!(DeviceId::from_hostname("my host").to_string(), "my-host");
        assert_eq!(DeviceId::from_hostname("").to_string(), "meshd");
        assert_eq!(
            DeviceId::from_hostname(&"h".repeat(80)).to_string().len(),
            64
        );
    }
}
