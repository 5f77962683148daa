//! Who may use the admin API. Every request passes three checks before it is
//! routed, in this order:
//!
//! 1. **Host** (DNS rebinding): the `Host` (or HTTP/2 authority) must name
//!    this listener: `localhost`, `127.0.0.1`, `[::1]`, the address the
//!    connection arrived on, or a name in `admin_hosts`, with the listener's
//!    port. A page on another site that rebinds its name to 127.0.0.1 sends
//!    its own name and gets 421.
//! 2. **Cross-site** (CSRF): a request that could change something (any
//!    method but `GET`/`HEAD`) is refused with 403 when the browser says it
//!    comes from another site (`Sec-Fetch-Site` other than `same-origin` or
//!    `none`) or another origin (`Origin` other than this listener's).
//!    Clients that send neither header (the CLI, scripts) are not browsers.
//! 3. **Token**: when `admin_token` or `admin_tokens` are set,
//!    `Authorization: Bearer <token>` with one of them (the scheme in any
//!    case), compared in constant time; never from the query string, which
//!    ends up in logs and browser history. The dashboard page itself
//!    (`GET /`) holds no data and is served without it; its script sends
//!    the header.
//!
//! A request that passes says who made it ([`Caller`]): the name of its
//! token (`admin` for `admin_token`), and whether the `baton` CLI sent it
//! (it says so in `X-Baton-Client`). The audit log records it.

use std::net::SocketAddr;

use http::{Method, Request, header};
use sha2::{Digest, Sha256};

use crate::error::Rejection;

/// What the checks compare requests with.
pub struct Guard {
    /// The bearer tokens, by name; none: no token is required.
    pub tokens: Vec<(String, String)>,
    /// Host names accepted beside the loopback names and the listener's own
    /// address.
    pub hosts: Vec<String>,
}

/// Who made a request that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The name of the token it carried (none when no token is required).
    pub token: Option<String>,
    /// Whether the `baton` command line sent it.
    pub cli: bool,
}

impl Caller {
    /// How the audit log names it: `ops`, `cli (ops)`, `cli`, `admin api`.
    pub fn who(&self) -> String {
        match (&self.token, self.cli) {
            (Some(name), true) => format!("cli ({name})"),
            (Some(name), false) => name.clone(),
            (None, true) => "cli".into(),
            (None, false) => "admin api".into(),
        }
    }
}

impl Guard {
    /// Checks `request`, which arrived on `local`; says who made it.
    pub fn check<B>(&self, request: &Request<B>, local: SocketAddr) -> Result<Caller, Rejection> {
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| request.headers().get(header::HOST)?.to_str().ok().map(str::to_owned))
            .unwrap_or_default();
        if !self.names_this_listener(&host, local) {
            return Err(Rejection::Misdirected(format!(
                "{host:?} is not this admin listener (add it to admin_hosts to allow it)"
            )));
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) && cross_site(request, &host) {
            return Err(Rejection::Forbidden(
                "cross-site requests may not change anything".into(),
            ));
        }
        let public = request.method() == Method::GET && request.uri().path() == "/";
        let cli = request.headers().get("x-baton-client").is_some_and(|v| v == "cli");
        if self.tokens.is_empty() || public {
            return Ok(Caller { token: None, cli });
        }
        match self.tokens.iter().find(|(_, token)| bearer_matches(request, token)) {
            Some((name, _)) => Ok(Caller {
                token: Some(name.clone()),
                cli,
            }),
            None => Err(Rejection::Unauthorized("missing or wrong bearer token".into())),
        }
    }

    fn names_this_listener(&self, host: &str, local: SocketAddr) -> bool {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if !port.contains(']') => (name, port.parse::<u16>().ok()),
            _ => (host, Some(80)),
        };
        if port != Some(local.port()) {
            return false;
        }
        let own = match local {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        ["localhost", "127.0.0.1", "[::1]", own.as_str()]
            .into_iter()
            .chain(self.hosts.iter().map(String::as_str))
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// Whether a browser says the request comes from another site or origin.
fn cross_site<B>(request: &Request<B>, host: &str) -> bool {
    let headers = request.headers();
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return true;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    origin.is_some_and(|origin| !origin.eq_ignore_ascii_case(&format!("http://{host}")))
}

/// Whether `Authorization` carries `token` as a bearer token.
fn bearer_matches<B>(request: &Request<B>, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = given.trim().split_once(' ') else {
        return false;
    };
    // Comparing digests takes the same time whatever the token's length.
    scheme.eq_ignore_ascii_case("bearer") && Sha256::digest(given.trim()) == Sha256::digest(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn guard(token: Option<&str>) -> Guard {
        Guard {
            tokens: token.map(|t| ("admin".to_owned(), t.to_owned())).into_iter().collect(),
            hosts: vec!["admin.example".into()],
        }
    }

    const LOCAL: &str = "127.0.0.1:8081";

    #[test]
    fn only_this_listeners_names_are_served() {
        let local = LOCAL.parse().expect("addr");
        for host in [
            "127.0.0.1:8081",
            "localhost:8081",
            "LOCALHOST:8081",
            "admin.example:8081",
        ] {
            assert!(
                guard(None)
                    .check(&request("GET", "/api/status", &[("host", host)]), local)
                    .is_ok(),
                "{host}"
            );
        }
        for host in ["evil.example:8081", "127.0.0.1:9999", "localhost", ""] {
            let refused = guard(None).check(&request("GET", "/api/status", &[("host", host)]), local);
            assert!(matches!(refused, Err(Rejection::Misdirected(_))), "{host}");
        }
    }

    #[test]
    fn cross_site_changes_are_refused() {
        let local = LOCAL.parse().expect("addr");
        let post = |extra: &[(&str, &str)]| {
            let mut headers = vec![("host", LOCAL)];
            headers.extend_from_slice(extra);
            guard(None).check(&request("POST", "/api/plugins/x/rollback", &headers), local)
        };
        assert!(matches!(
            post(&[("origin", "https://evil.example")]),
            Err(Rejection::Forbidden(_))
        ));
        assert!(matches!(
            post(&[("sec-fetch-site", "cross-site")]),
            Err(Rejection::Forbidden(_))
        ));
        assert!(matches!(post(&[("origin", "null")]), Err(Rejection::Forbidden(_))));
        assert!(post(&[("origin", "http://127.0.0.1:8081"), ("sec-fetch-site", "same-origin")]).is_ok());
        assert!(post(&[]).is_ok(), "the CLI sends neither");
    }

    #[test]
    fn the_token_comes_only_from_the_authorization_header() {
        let local = LOCAL.parse().expect("addr");
        let get = |path: &str, extra: &[(&str, &str)]| {
            let mut headers = vec![("host", LOCAL)];
            headers.extend_from_slice(extra);
            guard(Some("s3cret")).check(&request("GET", path, &headers), local)
        };
        assert!(get("/api/status", &[("authorization", "Bearer s3cret")]).is_ok());
        assert!(get("/api/status", &[("authorization", "bearer s3cret")]).is_ok());
        assert!(get("/api/status", &[("authorization", "Bearer wrong")]).is_err());
        assert!(get("/api/status", &[("authorization", "Basic s3cret")]).is_err());
        assert!(get("/api/status?token=s3cret", &[]).is_err());
        assert!(get("/", &[]).is_ok(), "the page holds no data");
    }

    #[test]
    fn a_request_says_whose_token_it_carries_and_whether_the_cli_sent_it() {
        let local = LOCAL.parse().expect("addr");
        let guard = Guard {
            tokens: vec![("ops".into(), "one".into()), ("ci".into(), "two".into())],
            hosts: Vec::new(),
        };
        let caller = |headers: &[(&str, &str)]| {
            let mut all = vec![("host", LOCAL)];
            all.extend_from_slice(headers);
            guard
                .check(&request("POST", "/api/plugins/x/promote", &all), local)
                .map(|c| c.who())
        };
        assert_eq!(caller(&[("authorization", "Bearer two")]).expect("ci"), "ci");
        assert_eq!(
            caller(&[("authorization", "Bearer one"), ("x-baton-client", "cli")]).expect("ops"),
            "cli (ops)"
        );
        assert!(caller(&[("authorization", "Bearer three")]).is_err());
    }
}
