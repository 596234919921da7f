//! The console's routes (docs/web.md): one function per endpoint; every
//! answer, errors included, carries headers that keep the page to itself
//! (no framing, no other hosts, nothing cached).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, HeaderValue,
    LOCATION, SET_COOKIE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};

use super::WebState;
use super::api;
use super::auth::{Access, SESSION_COOKIE, SESSION_SECS};
use super::server::MAX_HEAD_BYTES;
use crate::http_head::head_bytes;
use crate::metrics::{Format, metrics};

/// The live page, embedded: it polls `api/v1/mesh` and needs nothing else.
const PAGE: &str = include_str!("page/index.html");
/// The login form, with `<!--MESSAGE-->` where a refusal is said.
const LOGIN_PAGE: &str = include_str!("page/login.html");

/// The refusal of a request whose Host names the machine otherwise than by
/// address (auth.rs: DNS rebinding), with what to do.
const FOREIGN_HOST: &str = "the Host header does not name this machine by address: open the console at http://127.0.0.1:PORT/, or set [web] token\n";

/// The login form's body is one short field.
const MAX_LOGIN_BODY: usize = 4096;

/// The page runs its own inline script and style, talks only to this
/// origin, and may not be framed.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

type Answer = Response<Full<Bytes>>;

/// Dispatches one request from `peer`. Never fails: every error is an
/// answer.
pub async fn route(
    request: Request<Incoming>,
    state: Arc<WebState>,
    peer: SocketAddr,
) -> Result<Answer, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if head_bytes(&request) > MAX_HEAD_BYTES {
        return Ok(text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large\n",
        ));
    }
    let format = Format::from_accept(
        request
            .headers()
            .get(ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    let token = state.token();
    let access = state.sessions.check(request.headers(), &token);
    let readable = matches!(method, Method::GET | Method::HEAD);
    let mut answer = if path == "/login" {
        match method {
            Method::POST => login(request, &state, &token, access, peer).await,
            _ => redirect_home(),
        }
    } else if !known(&path) {
        text(
            StatusCode::NOT_FOUND,
            "not found: the console serves /, /metrics and /api/v1/mesh\n",
        )
    } else if !readable {
        let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        answer
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        answer
    } else {
        match (access, path.as_str()) {
            (Access::ForeignHost, _) => text(StatusCode::FORBIDDEN, FOREIGN_HOST),
            (Access::NeedsToken, "/") => login_page(StatusCode::UNAUTHORIZED, ""),
            (Access::NeedsToken, _) => needs_token(&path),
            (Access::Granted, "/") => html(StatusCode::OK, PAGE.to_owned()),
            (Access::Granted, "/metrics") => scrape(&state, format).await,
            (Access::Granted, _) => mesh_json(&state).await,
        }
    };
    if method == Method::HEAD {
        *answer.body_mut() = Full::new(Bytes::new());
    }
    secure(&mut answer);
    Ok(answer)
}

fn known(path: &str) -> bool {
    matches!(path, "/" | "/metrics" | "/api/v1/mesh")
}

/// `GET /metrics`, in the format the `Accept` header asks for.
async fn scrape(state: &Arc<WebState>, format: Format) -> Answer {
    let state = state.clone();
    let render = move || metrics().render(api::snapshot(&state.roles), format);
    match tokio::task::spawn_blocking(render).await {
        Ok(body) => {
            let mut answer = Response::new(Full::new(Bytes::from(body)));
            answer.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            answer
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("rendering the metrics failed: {error}\n"),
        ),
    }
}

/// `GET /api/v1/mesh`.
async fn mesh_json(state: &Arc<WebState>) -> Answer {
    let state = state.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        serde_json::to_vec(&api::mesh(&state.node, &state.roles))
    })
    .await;
    match rendered {
        Ok(Ok(body)) => json(StatusCode::OK, body),
        Ok(Err(error)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

/// `POST /login`: the form's token, checked; a session cookie when right.
async fn login(
    request: Request<Incoming>,
    state: &WebState,
    token: &str,
    access: Access,
    peer: SocketAddr,
) -> Answer {
    if access == Access::ForeignHost {
        return text(StatusCode::FORBIDDEN, FOREIGN_HOST);
    }
    if token.is_empty() {
        // Nothing to log in to.
        return redirect_home();
    }
    let body = match Limited::new(request.into_body(), MAX_LOGIN_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return login_page(StatusCode::PAYLOAD_TOO_LARGE, "That was not a token."),
    };
    let sent = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    match state.sessions.login(sent.trim(), token, peer.ip()) {
        None => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many tokens tried lately; wait a few seconds and try again.",
        ),
        Some(false) => {
            tracing::info!("web console login with a wrong token");
            login_page(StatusCode::UNAUTHORIZED, "Wrong token.")
        }
        Some(true) => {
            let mut answer = redirect_home();
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}",
                state.sessions.session_for(token)
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                answer.headers_mut().insert(SET_COOKIE, value);
            }
            answer
        }
    }
}

/// Back to the page, relative, so a console behind a proxy under a path
/// prefix lands on its own page.
fn redirect_home() -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::SEE_OTHER;
    answer
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static("./"));
    answer
}

/// 401 for the API and the metrics, saying how to authenticate.
fn needs_token(path: &str) -> Answer {
    let message = "this console needs its token: send Authorization: Bearer TOKEN ([web] token in the config)";
    let mut answer = if path == "/metrics" {
        text(StatusCode::UNAUTHORIZED, &format!("{message}\n"))
    } else {
        json_error(StatusCode::UNAUTHORIZED, message)
    };
    answer.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"meshd\""),
    );
    answer
}

fn login_page(status: StatusCode, message: &str) -> Answer {
    let page = LOGIN_PAGE.replace("<!--MESSAGE-->", &escape_html(message));
    let mut answer = html(status, page);
    if status == StatusCode::UNAUTHORIZED {
        answer.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"meshd\""),
        );
    }
    answer
}

fn html(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    answer
}

fn text(status: StatusCode, body: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.to_owned())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn json_error(status: StatusCode, message: &str) -> Answer {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .unwrap_or_else(|_| b"{}".to_vec());
    json(status, body)
}

/// A JSON document, one line.
fn json(status: StatusCode, mut body: Vec<u8>) -> Answer {
    body.push(b'\n');
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

/// Headers every answer carries.
fn secure(answer: &mut Answer) {
    let headers = answer.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_page_says_the_message_escaped() {
        let page = login_page(StatusCode::UNAUTHORIZED, "<b>Wrong</b> & \"x\"");
        let body = page.into_body();
        let text = format!("{body:?}");
        assert!(
            text.contains("&lt;b&gt;Wrong&lt;/b&gt; &amp; &quot;x&quot;"),
            "{text}"
        );
        assert!(
            LOGIN_PAGE.contains("<!--MESSAGE-->"),
            "the placeholder is in the page"
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for page in [PAGE, LOGIN_PAGE] {
            for needle in ["http://", "https://", "//cdn", "src=\"//"] {
                assert!(!page.contains(needle), "{needle} in a page");
            }
        }
        assert!(PAGE.len() < 64 * 1024, "the page is {} bytes", PAGE.len());
    }
}
