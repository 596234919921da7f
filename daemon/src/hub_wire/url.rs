//! A hub's address as `[mesh] signaling` names it, `http://HOST:PORT`, with
//! the hub's key after a `#` when the operator pins it
//! (`http://HOST:PORT#KEY`, docs/security.md): checked and parsed once,
//! when the config is loaded.

use std::fmt;

use crate::public_key::{PublicKey, PublicKeyError};

/// Why a `[mesh] signaling` entry is not a hub URL. Each message says what
/// to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubUrlError {
    /// Not a URL at all.
    #[error("{url:?} is not a URL ({reason}): write e.g. \"http://hub.example:8080\"")]
    NotAUrl {
        /// As written.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// Another scheme than `http`.
    #[error("{url:?}: only http:// signaling servers are supported")]
    NotHttp {
        /// As written.
        url: String,
    },
    /// No host or no port.
    #[error("{url:?} needs a host and a port, e.g. \"http://hub.example:8080\"")]
    NoHostOrPort {
        /// As written.
        url: String,
    },
    /// A path or a query after the port.
    #[error("{url:?} must not have a path: write just http://HOST:PORT")]
    HasPath {
        /// As written.
        url: String,
    },
    /// The text after `#` is not a hub key.
    #[error(
        "{url:?}: the hub key after '#' is not a key ({reason}); paste the key `meshctl status` prints on the hub (base64, 44 characters)"
    )]
    BadHubKey {
        /// As written.
        url: String,
        /// What is wrong with the key.
        reason: PublicKeyError,
    },
}

/// A signaling server from `[mesh] signaling`. Shared, not copied: hub
/// URLs travel inside errors, which stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrl(std::sync::Arc<Parts>);

#[derive(Debug, PartialEq, Eq)]
struct Parts {
    url: String,
    authority: String,
    pin: Option<PublicKey>,
}

impl HubUrl {
    /// Accepts `http://HOST:PORT`, with an optional trailing `/`, and
    /// optionally `#KEY` after it.
    pub fn parse(text: &str) -> Result<Self, HubUrlError> {
        let (url, pin) = match text.split_once('#') {
            Some((url, key)) => {
                let pin = PublicKey::from_base64(key).map_err(|reason| HubUrlError::BadHubKey {
                    url: text.to_owned(),
                    reason,
                })?;
                (url, Some(pin))
            }
            None => (text, None),
        };
        let uri: hyper::Uri =
            url.parse()
                .map_err(|error: hyper::http::uri::InvalidUri| HubUrlError::NotAUrl {
                    url: url.to_owned(),
                    reason: error.to_string(),
                })?;
        if uri.scheme_str() != Some("http") {
            return Err(HubUrlError::NotHttp {
                url: url.to_owned(),
            });
        }
        let authority = match uri.authority() {
            Some(authority) if !authority.host().is_empty() && authority.port_u16().is_some() => {
                authority.to_string()
            }
            _ => {
                return Err(HubUrlError::NoHostOrPort {
                    url: url.to_owned(),
                });
            }
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(HubUrlError::HasPath {
                url: url.to_owned(),
            });
        }
        Ok(HubUrl(std::sync::Arc::new(Parts {
            // One spelling per hub: pins and duplicates compare URLs.
            url: url.strip_suffix('/').unwrap_or(url).to_owned(),
            authority,
            pin,
        })))
    }

    /// `HOST:PORT`, to connect to and for the `Host` header.
    pub fn authority(&self) -> &str {
        &self.0.authority
    }

    /// The entry as the config writes it, `#KEY` included.
    pub fn as_written(&self) -> String {
        match self.0.pin {
            Some(key) => format!("{}#{key}", self.0.url),
            None => self.0.url.clone(),
        }
    }

    /// The hub key the config pins, if it names one.
    pub fn pin(&self) -> Option<PublicKey> {
        self.0.pin
    }
}

/// As written in the config without the key: what logs, `meshctl status`
/// and the known-hubs file show.
impl fmt::Display for HubUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_and_port_with_or_without_a_slash() {
        for url in [
            "http://hub.example:8080",
            "http://127.0.0.1:8080/",
            "http://[::1]:9",
        ] {
            let hub = HubUrl::parse(url).unwrap();
            assert_eq!(hub.to_string(), url.trim_end_matches('/'), "one spelling");
        }
        assert_eq!(
            HubUrl::parse("http://[::1]:9").unwrap().authority(),
            "[::1]:9"
        );
    }

    #[test]
    fn a_key_after_the_hash_is_the_pin() {
        let key = PublicKey::from([7; 32]);
        let hub = HubUrl::parse(&format!("http://hub.example:8080#{key}")).unwrap();
        assert_eq!(hub.pin(), Some(key));
        assert_eq!(hub.to_string(), "http://hub.example:8080");
        assert_eq!(hub.as_written(), format!("http://hub.example:8080#{key}"));
        assert_eq!(hub.authority(), "hub.example:8080");
        assert_eq!(
            HubUrl::parse("http://hub.example:8080").unwrap().pin(),
            None
        );
        for bad in [
            "http://hub:8080#",
            "http://hub:8080#AAAA",
            "http://hub:8080#not base64!",
        ] {
            let error = HubUrl::parse(bad).unwrap_err();
            assert!(
                matches!(error, HubUrlError::BadHubKey { .. }),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains("hub key"), "{error}");
        }
    }

    #[test]
    fn names_what_is_wrong() {
        let kind = |url: &str| match HubUrl::parse(url) {
            Err(HubUrlError::NotAUrl { .. }) => "not a url",
            Err(HubUrlError::NotHttp { .. }) => "not http",
            Err(HubUrlError::NoHostOrPort { .. }) => "no host or port",
            Err(HubUrlError::HasPath { .. }) => "has a path",
            Err(HubUrlError::BadHubKey { .. }) => "bad key",
            Ok(_) => "accepted",
        };
        assert_eq!(kind("not a url"), "not a url");
        assert_eq!(kind("https://hub:8080"), "not http");
        assert_eq!(kind("hub:8080"), "not http");
        assert_eq!(kind("http://hub"), "no host or port");
        assert_eq!(kind("http://hub:8080/api"), "has a path");
        assert_eq!(kind("http://hub:8080/?x=1"), "has a path");
        for url in [
            "not a url",
            "https://hub:8080",
            "http://hub",
            "http://hub:8080/api",
        ] {
            let error = HubUrl::parse(url).unwrap_err();
            assert!(error.to_string().contains(&format!("{url:?}")), "{error}");
        }
    }
}
