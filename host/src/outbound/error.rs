//! How an outbound request fails ([`FetchError`]), and the reasons the host
//! stops one from inside reqwest ([`Stop`]): the redirect policy and the
//! resolver can only answer reqwest with an error, which comes back as the
//! source of a `reqwest::Error` and is found again by [`Stop::find`].

use std::net::IpAddr;

/// Why an outbound request failed. The texts name the URL or address and,
/// for a refusal, the entry that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL, a redirect, or an address a name resolves to is not allowed
    /// by the allow-list; says which and how to allow it.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The request cannot be sent as given (a bad URL, method or header).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No full response within the deadline.
    #[error("no full response within the deadline")]
    Timeout,
    /// The request or the response body is above 1 MiB.
    #[error("the request or response body is above 1 MiB")]
    TooLarge,
    /// The exchange failed (refused, reset, TLS, DNS, too many redirects).
    #[error("failed: {0}")]
    Failed(String),
}

/// A request the host stopped from inside reqwest.
#[derive(Debug, thiserror::Error)]
pub(super) enum Stop {
    /// From the redirect policy: the answer, complete.
    #[error("{0}")]
    Redirect(FetchError),
    /// From the resolver: `name` resolves only to addresses that are not
    /// allowed; `ip` is the first of them.
    #[error("{name} resolves to {ip}, {why}")]
    Address {
        name: String,
        ip: IpAddr,
        why: &'static str,
    },
}

impl Stop {
    /// The stop somewhere in `error`'s chain of sources, if the host stopped it.
    pub(super) fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Stop> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(stop) = error.downcast_ref::<Stop>() {
                return Some(stop);
            }
            next = error.source();
        }
        None
    }
}

/// The refusal of `ip` (`why`) for `url`, naming the entry that would allow
/// it when `entry` knows it.
pub(super) fn address_refused(url: &str, ip: IpAddr, why: &str, entry: Option<String>) -> String {
    let fix = match entry {
        Some(entry) => format!("list it by address in [capabilities] http (\"{entry}\") to allow it"),
        None => "list it by address in [capabilities] http to allow it".to_owned(),
    };
    format!("{url} resolves to {ip}, {why}: {fix}")
}
