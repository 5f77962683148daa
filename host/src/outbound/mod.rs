//! Outbound HTTP: requests the host sends for a plugin
//! (`baton:plugin/outbound-http`) or on its own behalf (webhook deliveries),
//! confined to an allow-list.
//!
//! It owns one HTTP client per [`Outbound`] (reqwest over rustls with the
//! `ring` provider, HTTP/1.1 and HTTP/2) and its connection pool; a loaded
//! version whose settings grant `[capabilities] http` holds one, built on
//! its first request and dropped with the version. A request dropped
//! half-way (its instance trapped, the tenant was erased) drops its
//! connection; nothing else outlives it.
//!
//! The rules, in the order they apply:
//! 1. **Before anything is sent**: the URL is absolute `http://` or
//!    `https://`, the method and the header names and values are valid
//!    (`invalid` otherwise), and the body is at most 1 MiB (`too-large`).
//!    `host`, `content-length` and the hop-by-hop headers (`connection`,
//!    those it names, `transfer-encoding`, `upgrade`, ...) are the host's:
//!    the caller's are dropped, so the request goes where its URL says.
//! 2. **The URL** must match an allow-list entry by scheme, host and port
//!    ([`AllowList`]). An IP-address URL's address must also be public or
//!    named by an entry ([`address`]).
//! 3. **The resolved addresses** of a name are screened by the resolver
//!    (`resolve.rs`) the same way, and reqwest dials only what it returns:
//!    the address checked is the address connected to, so a name that
//!    resolves to `127.0.0.1`, `169.254.169.254` or a private network,
//!    or is rebound to one between two requests, gets no connection.
//! 4. **Every redirect** (at most 5) is checked as in 2 before it is
//!    followed, and its name resolved as in 3.
//! 5. **One wall-clock deadline** (at most 5 s) covers the whole exchange:
//!    resolution, connection, TLS, redirects and the body, which is read
//!    chunk by chunk and abandoned once above 1 MiB (`too-large`).
//!
//! Proxies from the environment are ignored; no cookies are kept, no
//! `Referer` is sent on redirects, and bodies are not decompressed.
//!
//! Why 3 and 4: the allow-list alone is a list of names, and a name or a
//! redirect can lead anywhere. In Spin (CVE-2024-32980) a request with a
//! relative URL and a `Host` header was sent wherever the header said,
//! past the allow-list; and a public name can resolve to the host's own
//! loopback or the cloud's metadata service. So the URL is taken only as
//! an absolute URL, the caller's `host` header is dropped, and the check
//! runs on what is dialled, at every hop.
//!
//! Files: `allow.rs` (entries and the URL check), `address.rs` (which
//! addresses are not public), `resolve.rs` (the screening resolver),
//! `error.rs` ([`FetchError`], and how a refusal travels through reqwest).

mod address;
mod allow;
mod error;
mod resolve;

use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use tokio::sync::OnceCell;

pub use allow::AllowList;
use allow::entry_for;
pub use error::FetchError;
use error::{Stop, address_refused};
use resolve::GuardedResolver;

use crate::text::ellipsized;

/// The largest request body and response body, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The longest deadline of one exchange.
pub const MAX_DEADLINE: Duration = Duration::from_secs(5);

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// The request's header names and values together, at most.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// The longest error text.
const MAX_MESSAGE_BYTES: usize = 1024;

/// How long an idle pooled connection is kept, and how many per host.
const POOL_IDLE: Duration = Duration::from_secs(30);
const POOL_IDLE_PER_HOST: usize = 4;

/// Headers the host writes itself: what a caller sends under these names is
/// dropped.
const HOST_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    /// The method (`GET`, `POST`, ...), as sent.
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Headers; `host`, `content-length` and hop-by-hop ones are dropped.
    pub headers: Vec<(String, String)>,
    /// At most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// The deadline of the whole exchange (at most [`MAX_DEADLINE`]).
    pub timeout: Duration,
}

/// The response to a request (any status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case (values not UTF-8 are converted lossily).
    pub headers: Vec<(String, String)>,
    /// At most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

/// Sends requests within an allow-list. Cheap to clone: the clones share
/// the client and its connections.
#[derive(Clone)]
pub struct Outbound {
    allow: Arc<AllowList>,
    /// Redirects followed at most (0: a 3xx is the answer).
    redirects: usize,
    /// The longest deadline of one exchange.
    max_deadline: Duration,
    /// Built on the first request (it reads the system's CA certificates),
    /// on the blocking pool; the error, if building it failed.
    client: Arc<OnceCell<Result<reqwest::Client, String>>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// A plugin's requests within `allow`: up to 5 redirects, each checked,
    /// and at most [`MAX_DEADLINE`].
    pub fn new(allow: AllowList) -> Outbound {
        Outbound {
            allow: Arc::new(allow),
            redirects: MAX_REDIRECTS,
            max_deadline: MAX_DEADLINE,
            client: Arc::new(OnceCell::new()),
        }
    }

    /// The host's own deliveries within `allow` (webhooks): a redirect is
    /// not followed (a 3xx is the answer) and a deadline may be up to
    /// `max_deadline`.
    pub fn without_redirects(allow: AllowList, max_deadline: Duration) -> Outbound {
        Outbound {
            redirects: 0,
            max_deadline,
            ..Outbound::new(allow)
        }
    }

    /// Whether a request to `url` may be sent (its scheme, host and port
    /// match an entry; an IP address is public or listed), or why not. A
    /// name's addresses are checked only when it is resolved, at the request.
    pub fn admits(&self, url: &str) -> Result<(), FetchError> {
        let url = Url::parse(url).map_err(|e| FetchError::Invalid(format!("{url:?} is not an absolute URL: {e}")))?;
        self.allow.admit(&url)
    }

    /// Sends `request`, follows the redirects this client follows, and
    /// returns the response, or why not, within the request's deadline (at
    /// most the client's longest).
    pub async fn fetch(&self, request: OutboundRequest) -> Result<OutboundResponse, FetchError> {
        let deadline = request.timeout.min(self.max_deadline);
        let prepared = self.prepare(request)?;
        tokio::time::timeout(deadline, self.exchange(prepared))
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    /// Checks `request` (rules 1 and 2) and turns it into reqwest's.
    fn prepare(&self, request: OutboundRequest) -> Result<reqwest::Request, FetchError> {
        if request.body.len() > MAX_BODY_BYTES {
            return Err(FetchError::TooLarge);
        }
        let url = Url::parse(&request.url).map_err(|e| {
            FetchError::Invalid(format!(
                "{:?} is not an absolute URL: {e}",
                ellipsized(request.url.clone(), 256)
            ))
        })?;
        let method = Method::from_bytes(request.method.as_bytes())
            .ok()
            .filter(|m| *m != Method::CONNECT)
            .ok_or_else(|| {
                let method = ellipsized(request.method.clone(), 64);
                FetchError::Invalid(format!("{method:?} is not a method it can send"))
            })?;
        let headers = headers(&request.headers)?;
        self.allow.admit(&url)?;
        let mut prepared = reqwest::Request::new(method, url);
        *prepared.headers_mut() = headers;
        *prepared.body_mut() = Some(request.body.into());
        Ok(prepared)
    }

    /// Sends a checked request and reads its response (rules 3 to 5; the
    /// caller bounds it with the deadline).
    async fn exchange(&self, request: reqwest::Request) -> Result<OutboundResponse, FetchError> {
        let url = request.url().clone();
        let client = self.client().await?;
        let mut response = client.execute(request).await.map_err(|e| failure(&url, e))?;
        if response.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(FetchError::TooLarge);
        }
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failure(&url, e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(OutboundResponse { status, headers, body })
    }

    async fn client(&self) -> Result<&reqwest::Client, FetchError> {
        let (allow, redirects) = (self.allow.clone(), self.redirects);
        let built = self
            .client
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || client(allow, redirects))
                    .await
                    .unwrap_or_else(|e| Err(format!("building it panicked: {e}")))
            })
            .await;
        built
            .as_ref()
            .map_err(|why| FetchError::Failed(format!("the host's HTTP client cannot be built: {why}")))
    }
}

/// The caller's headers as a map, without those the host writes.
fn headers(pairs: &[(String, String)]) -> Result<HeaderMap, FetchError> {
    let size: usize = pairs.iter().map(|(name, value)| name.len() + value.len()).sum();
    if size > MAX_HEADER_BYTES {
        return Err(FetchError::Invalid(format!(
            "the headers are above {} KiB",
            MAX_HEADER_BYTES >> 10
        )));
    }
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FetchError::Invalid(format!("{:?} is not a header name", ellipsized(name.clone(), 256))))?;
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| FetchError::Invalid(format!("the value of {name} is not a header value")))?;
        map.append(name, value);
    }
    // A header the caller's `connection` names is hop-by-hop too.
    let named: Vec<String> = map
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for name in HOST_HEADERS.iter().copied().chain(named.iter().map(String::as_str)) {
        map.remove(name);
    }
    Ok(map)
}

/// The client of one allow-list: its resolver and redirect policy check
/// every hop.
fn client(allow: Arc<AllowList>, max_redirects: usize) -> Result<reqwest::Client, String> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let builder = || {
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(GuardedResolver { allow: allow.clone() })
            .redirect(match max_redirects {
                0 => reqwest::redirect::Policy::none(),
                _ => redirects(allow.clone()),
            })
            .referer(false)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
    };
    match builder().build() {
        Ok(client) => Ok(client),
        Err(error) => {
            // The platform verifier refuses to start without the system's CA
            // certificates. Plain http still works then; https fails at its
            // handshake, the issuer unknown.
            let why = chain(&error);
            tracing::warn!("outbound https:// requests will fail: {why}");
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("{why}; without CA certificates: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder()
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| format!("{why}; without CA certificates: {}", chain(&e)))
        }
    }
}

/// Follows a redirect only to where the allow-list lets a request go
/// (rule 4), at most [`MAX_REDIRECTS`] times.
fn redirects(allow: Arc<AllowList>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` holds the first URL, then every URL redirected to.
        let from = attempt.previous().last().map(Url::to_string).unwrap_or_default();
        let refusal = if attempt.previous().len() > MAX_REDIRECTS {
            let first = attempt.previous().first().map(Url::as_str).unwrap_or_default();
            FetchError::Failed(format!("{first} redirects more than {MAX_REDIRECTS} times"))
        } else {
            match allow.admit(attempt.url()) {
                Ok(()) => return attempt.follow(),
                Err(FetchError::NotAllowed(why)) => FetchError::NotAllowed(format!("a redirect from {from}: {why}")),
                Err(other) => FetchError::Failed(format!("a redirect from {from} to {}: {other}", attempt.url())),
            }
        };
        attempt.error(Stop::Redirect(refusal))
    })
}

/// What a failed exchange of `url` comes to.
fn failure(url: &Url, error: reqwest::Error) -> FetchError {
    if let Some(stop) = Stop::find(&error) {
        return match stop {
            Stop::Redirect(answer) => answer.clone(),
            Stop::Address { name, ip, why } if url.host_str() == Some(name) => {
                let entry = entry_for(url.scheme(), *ip, url.port_or_known_default().unwrap_or_default());
                FetchError::NotAllowed(address_refused(url.as_str(), *ip, why, Some(entry)))
            }
            Stop::Address { name, ip, why } => {
                let reached = format!("{name} (reached by a redirect from {url})");
                FetchError::NotAllowed(address_refused(&reached, *ip, why, None))
            }
        };
    }
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    let builder = error.is_builder();
    let text = ellipsized(format!("{url}: {}", chain(&error.without_url())), MAX_MESSAGE_BYTES);
    if builder {
        FetchError::Invalid(text)
    } else {
        FetchError::Failed(text)
    }
}

/// An error and its sources, each once.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

#[cfg(test)]
mod tests;
