//! Who may see the console (docs/web.md, "Access"): with `[web] token` set,
//! a request needs `Authorization: Bearer TOKEN` or the session cookie the
//! page's login sets; without a token (loopback only, the config ensures),
//! a request must name this host by a loopback or IP address, so a web page
//! elsewhere cannot read the console through DNS rebinding.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, COOKIE, HOST};
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::sync::lock;
use crate::token_bucket::{PerSource, TokenBucket};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "meshd_session";

/// How long the page's login lasts.
pub const SESSION_SECS: u64 = 12 * 3600;

/// Tokens the login checks per second from one client address (ten at
/// once): guessing a token of any length this way is hopeless, and one
/// client's guessing holds off no other address.
const LOGINS_PER_SEC_PER_SOURCE: u64 = 2;
const LOGIN_BURST_PER_SOURCE: u64 = 10;

/// Tokens the login checks per second over all clients, so many addresses
/// together cannot guess much faster either.
const LOGINS_PER_SEC: u64 = 20;
const LOGIN_BURST: u64 = 50;

/// Client addresses whose login budget is remembered at most.
const MAX_LOGIN_SOURCES: usize = 4096;

/// The page's sessions. A session is a MAC of the token under a key made
/// at start: nothing is stored per session, a restart ends them all, and
/// so does a new token.
pub struct Sessions {
    key: hmac::Key,
    logins: Mutex<LoginBudget>,
}

/// What the login may still check: per client address, and in all.
struct LoginBudget {
    per_source: PerSource,
    all: TokenBucket,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Go ahead.
    Granted,
    /// A token is needed and none (or a wrong one) came.
    NeedsToken,
    /// No token is set, and the Host header does not name this host by a
    /// loopback or IP address.
    ForeignHost,
}

impl Sessions {
    /// Sessions under a fresh random key.
    pub fn new() -> Sessions {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            logins: Mutex::new(LoginBudget {
                per_source: PerSource::new(MAX_LOGIN_SOURCES),
                all: TokenBucket::full(Instant::now()),
            }),
        }
    }

    /// The cookie value of a session under `token`.
    pub fn session_for(&self, token: &str) -> String {
        let tag = hmac::sign(&self.key, token.as_bytes());
        tag.as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Decides on a request's headers, given the token in force.
    pub fn check(&self, headers: &HeaderMap, token: &str) -> Access {
        if token.is_empty() {
            return match host_is_local(headers) {
                true => Access::Granted,
                false => Access::ForeignHost,
            };
        }
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if bearer.is_some_and(|sent| matches(sent.trim(), token)) {
            return Access::Granted;
        }
        let session = self.session_for(token);
        let cookies = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='));
        for (name, value) in cookies {
            if name == SESSION_COOKIE && matches(value, &session) {
                return Access::Granted;
            }
        }
        Access::NeedsToken
    }

    /// Checks a token typed into the login form from `source`; `None` when
    /// that address, or all together, tried too many lately (the caller
    /// answers 429).
    pub fn login(&self, sent: &str, token: &str, source: IpAddr) -> Option<bool> {
        let now = Instant::now();
        let mut budget = lock(&self.logins);
        // Every attempt is paid for before it is checked; right ones are
        // rare enough not to matter.
        let admitted = budget.per_source.try_take(
            source,
            1,
            LOGINS_PER_SEC_PER_SOURCE,
            LOGIN_BURST_PER_SOURCE,
            now,
        ) && budget.all.try_take(1, LOGINS_PER_SEC, LOGIN_BURST, now);
        if !admitted {
            return None;
        }
        Some(!token.is_empty() && matches(sent, token))
    }
}

/// Constant-time equality, so a token cannot be guessed byte by byte from
/// response times.
fn matches(sent: &str, expected: &str) -> bool {
    bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

/// The Host header names a loopback address, `localhost`, or an IP
/// address (a name that resolved to this host would be a rebinding).
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|value| value.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser.
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(hyper::header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_token_is_taken_as_bearer_or_as_the_session_cookie() {
        let sessions = Sessions::new();
        let token = "s3cret";
        assert_eq!(sessions.check(&headers(&[]), token), Access::NeedsToken);
        let bearer = headers(&[(AUTHORIZATION, "Bearer s3cret")]);
        assert_eq!(sessions.check(&bearer, token), Access::Granted);
        let wrong = headers(&[(AUTHORIZATION, "Bearer s3cre")]);
        assert_eq!(sessions.check(&wrong, token), Access::NeedsToken);
        let basic = headers(&[(AUTHORIZATION, "Basic s3cret")]);
        assert_eq!(sessions.check(&basic, token), Access::NeedsToken);
        let cookie = format!(
            "theme=dark; {SESSION_COOKIE}={}",
            sessions.session_for(token)
        );
        let with_cookie = headers(&[(COOKIE, &cookie)]);
        assert_eq!(sessions.check(&with_cookie, token), Access::Granted);
        // A new token ends the sessions of the old one; so does a restart.
        assert_eq!(sessions.check(&with_cookie, "other"), Access::NeedsToken);
        assert_eq!(
            Sessions::new().check(&with_cookie, token),
            Access::NeedsToken
        );
        let forged = headers(&[(COOKIE, &format!("{SESSION_COOKIE}=s3cret"))]);
        assert_eq!(sessions.check(&forged, token), Access::NeedsToken);
    }

    #[test]
    fn without_a_token_only_local_host_names_are_served() {
        let sessions = Sessions::new();
        for host in [
            "127.0.0.1:8083",
            "localhost:8083",
            "LOCALHOST",
            "[::1]:8083",
            "10.0.0.7",
        ] {
            assert_eq!(
                sessions.check(&headers(&[(HOST, host)]), ""),
                Access::Granted,
                "{host}"
            );
        }
        for host in ["evil.example:8083", "evil.example", "127.0.0.1.nip.io:8083"] {
            assert_eq!(
                sessions.check(&headers(&[(HOST, host)]), ""),
                Access::ForeignHost,
                "{host}"
            );
        }
    }

    #[test]
    fn logins_are_limited_per_address_and_in_all() {
        let sessions = Sessions::new();
        let guesser: IpAddr = "203.0.113.9".parse().unwrap();
        let outcomes: Vec<Option<bool>> = (0..20)
            .map(|_| sessions.login("guess", "s3cret", guesser))
            .collect();
        let refused = outcomes.iter().filter(|outcome| outcome.is_none()).count();
        assert!(refused >= 9, "{outcomes:?}");
        assert_eq!(outcomes[0], Some(false));
        // Another address is not held off by the guesser.
        let user: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(sessions.login("s3cret", "s3cret", user), Some(true));
        // Many addresses together meet the limit over all clients.
        let spread = (0..100u8)
            .map(|last| sessions.login("guess", "s3cret", IpAddr::from([10, 0, 1, last])))
            .filter(Option::is_none)
            .count();
        assert!(spread >= 40, "{spread} of 100 refused");
        assert_eq!(
            Sessions::new().login("", "", user),
            Some(false),
            "no token, no login"
        );
    }
}
