//! Outbound HTTP, within the allow-list the plugin is granted
//! (`[capabilities] http = ["https://api.partner.com:443"]` in its
//! `<name>.toml`). The call waits for the response, bounded by a deadline
//! of at most 5 s; the tenant's other work waits with it. For work that
//! should not wait, enqueue a [`crate::jobs`] job that makes the request.

use crate::__private::baton::plugin::outbound_http as host;
use crate::HttpResponse;

/// Why a request failed.
pub type Error = host::Error;

/// A request: see [`Request::get`] and [`Request::post`].
pub type Request = host::Request;

impl Request {
    /// A `GET` of `url`.
    pub fn get(url: &str) -> Request {
        Request {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A `POST` of `body` to `url`, with its content type.
    pub fn post(url: &str, content_type: &str, body: Vec<u8>) -> Request {
        Request {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("content-type".into(), content_type.into())],
            body,
            timeout_ms: None,
        }
    }

    /// With a header added.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// With a deadline for the whole exchange (at most 5000 ms).
    pub fn timeout_ms(mut self, ms: u32) -> Request {
        self.timeout_ms = Some(ms);
        self
    }
}

/// Sends `request` and returns the response (any status).
pub fn fetch(request: &Request) -> Result<HttpResponse, Error> {
    host::fetch(request).map(Into::into)
}
