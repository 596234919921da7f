//! The size of an HTTP request's head, for the listeners' limits.
//!
//! hyper's read buffer bounds what it holds, but a head that arrives in one
//! read can still pass it, so each listener checks the parsed head too.

use hyper::Request;

/// The size of a request's line and headers on the wire.
pub fn head_bytes<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 11;
    request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    }) + 2
}
