//! The resolver of outbound requests: the system's (`getaddrinfo`, on
//! tokio's blocking pool), keeping only the addresses a plugin may reach.
//! reqwest connects only to what a resolver returns, so the check is on the
//! address actually dialled, for the first request and every redirect: a
//! name that resolves to `127.0.0.1` today or after a rebinding gets no
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::address;
use super::allow::AllowList;
use super::error::Stop;

/// Resolves names to the addresses of them that `allow` lets a plugin
/// reach: public ones, and those an entry names.
pub(super) struct GuardedResolver {
    pub(super) allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let (kept, refused) = screen(&allow, found);
            match refused {
                Some((ip, why)) if kept.is_empty() => Err(Box::new(Stop::Address { name, ip, why }) as _),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// The addresses of `found` a plugin may reach, and the first it may not
/// (with why).
fn screen(allow: &AllowList, found: Vec<SocketAddr>) -> (Vec<SocketAddr>, Option<(std::net::IpAddr, &'static str)>) {
    let mut refused = None;
    let kept = found
        .into_iter()
        .filter(|addr| match address::refused(addr.ip()) {
            Some(why) if !allow.names(addr.ip()) => {
                refused.get_or_insert((addr.ip(), why));
                false
            }
            _ => true,
        })
        .collect();
    (kept, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reachable_addresses_are_kept() {
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter()
                .map(|ip| SocketAddr::new(ip.parse().expect("ip"), 0))
                .collect()
        };
        let allow = AllowList::parse(&["http://*:*".into(), "http://10.0.0.7".into()]).expect("valid");
        let (kept, refused) = screen(&allow, addrs(&["127.0.0.1", "93.184.216.34", "::1", "10.0.0.7"]));
        assert_eq!(kept, addrs(&["93.184.216.34", "10.0.0.7"]));
        assert_eq!(refused, Some(("127.0.0.1".parse().expect("ip"), "a loopback address")));
        let (kept, refused) = screen(&allow, addrs(&["169.254.169.254"]));
        assert!(kept.is_empty());
        assert_eq!(refused.map(|r| r.1), Some("the cloud metadata address"));
    }
}
