//! The allow-list of `[capabilities] http`: Spin-style `scheme://host[:port]`
//! entries, and the check of a URL against them ([`AllowList::admit`]).
//!
//! An entry's scheme is `http` or `https`; its host an exact name, `*.name`
//! (any subdomain of `name`, not `name` itself), `*` (any host), or an IP
//! address (IPv6 in brackets); its port a number or `*`, and the scheme's
//! default when omitted. Hosts are normalized as URLs are (lower case,
//! punycode, `127.1` is `127.0.0.1`, `[::ffff:127.0.0.1]` is `127.0.0.1`),
//! so an entry and a URL for the same host always compare equal.

use std::net::{IpAddr, Ipv4Addr};

use reqwest::Url;

use super::address;
use super::error::{FetchError, address_refused};

/// Which URLs a plugin may fetch: the parsed entries of its
/// `[capabilities] http`. Empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// One entry: `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: &'static str,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`, kept as `.example.com`.
    Subdomains(String),
    Name(String),
    Ip(IpAddr),
}

/// A URL's host: a name or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Host {
    Name(String),
    Ip(IpAddr),
}

/// Where a URL points, as entries are matched against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    scheme: &'static str,
    host: Host,
    port: u16,
}

impl Target {
    /// The target of `url`; invalid unless it is `http://` or `https://`
    /// with a host.
    pub(super) fn of(url: &Url) -> Result<Target, FetchError> {
        let scheme = scheme(url.scheme())
            .ok_or_else(|| FetchError::Invalid(format!("{url} is not an http:// or https:// URL")))?;
        let host = host_of(url).ok_or_else(|| FetchError::Invalid(format!("{url} has no host")))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| FetchError::Invalid(format!("{url} has no port")))?;
        Ok(Target { scheme, host, port })
    }

    /// The entry that allows exactly this target, for messages.
    fn entry(&self) -> String {
        match self.host {
            Host::Name(ref name) => format!("{}://{name}:{}", self.scheme, self.port),
            Host::Ip(ip) => entry_for(self.scheme, ip, self.port),
        }
    }
}

/// The entry naming `ip`, for messages: `http://127.0.0.1:8080`, `http://[::1]:8080`.
pub(super) fn entry_for(scheme: &str, ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
    }
}

impl AllowList {
    /// Parses the entries of `[capabilities] http`; the error names the
    /// first bad entry and what is wrong with it.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let entries = entries
            .iter()
            .map(|text| {
                parse_entry(text).map_err(|why| {
                    format!(
                        "{text:?}: {why}; an entry is scheme://host[:port], e.g. \"https://api.example.com\", \
                         \"https://*.example.com:8443\", \"http://127.0.0.1:8080\" or \"https://*:*\""
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { entries })
    }

    /// Whether `url` may be requested: an entry matches its scheme, host and
    /// port, and, when its host is an IP address, that address is public or
    /// named by an entry. Names are checked again once resolved (by the
    /// resolver, [`super::resolve`]).
    pub(super) fn admit(&self, url: &Url) -> Result<(), FetchError> {
        let target = Target::of(url)?;
        if !self.entries.iter().any(|entry| entry.matches(&target)) {
            return Err(FetchError::NotAllowed(format!(
                "{url} is not allowed by [capabilities] http: add \"{}\" to allow it",
                target.entry()
            )));
        }
        if let Host::Ip(ip) = target.host
            && let Some(why) = address::refused(ip)
            && !self.names(ip)
        {
            let entry = entry_for(target.scheme, ip, target.port);
            return Err(FetchError::NotAllowed(address_refused(
                url.as_str(),
                ip,
                why,
                Some(entry),
            )));
        }
        Ok(())
    }

    /// Whether an entry names `ip` as its host: then the plugin may reach it
    /// even where it is not public.
    pub(super) fn names(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.entries.iter().any(|entry| entry.host == HostPattern::Ip(ip))
    }
}

impl Entry {
    fn matches(&self, target: &Target) -> bool {
        if self.scheme != target.scheme || self.port.is_some_and(|port| port != target.port) {
            return false;
        }
        match (&self.host, &target.host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Name(name), Host::Name(host)) => name == host,
            (HostPattern::Subdomains(suffix), Host::Name(host)) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            (HostPattern::Ip(ip), Host::Ip(host)) => ip == host,
            _ => false,
        }
    }
}

fn scheme(text: &str) -> Option<&'static str> {
    match text.to_ascii_lowercase().as_str() {
        "http" => Some("http"),
        "https" => Some("https"),
        _ => None,
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

fn parse_entry(text: &str) -> Result<Entry, String> {
    let (scheme_text, rest) = text.split_once("://").ok_or("it has no scheme (http:// or https://)")?;
    let scheme = scheme(scheme_text).ok_or_else(|| format!("the scheme {scheme_text:?} is neither http nor https"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("only a scheme, a host and a port: no path, query or user".into());
    }
    let (host, port) = split_host_port(rest)?;
    let port = match port {
        None => Some(default_port(scheme)),
        Some("*") => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("the port {port:?} is neither a number (1-65535) nor *"))?,
        ),
    };
    Ok(Entry {
        scheme,
        host: parse_host(host)?,
        port,
    })
}

/// `host[:port]`, the host of an IPv6 address in brackets.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if text.starts_with('[') {
        let end = text.find(']').ok_or("an IPv6 address without its closing ]")?;
        let (host, after) = text.split_at(end + 1);
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or_else(|| format!("{after:?} after the address is not a port")),
        };
    }
    match text.split_once(':') {
        None => Ok((text, None)),
        Some((_, port)) if port.contains(':') => Err("an IPv6 address goes in brackets: [::1]".into()),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

fn parse_host(text: &str) -> Result<HostPattern, String> {
    if text.is_empty() {
        return Err("it has no host".into());
    }
    if text == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(domain) = text.strip_prefix("*.")
        && !domain.contains('*')
    {
        return match normalized(domain)? {
            Host::Name(name) => Ok(HostPattern::Subdomains(format!(".{name}"))),
            Host::Ip(_) => Err("*. goes before a domain name, not an address".into()),
        };
    }
    if text.contains('*') {
        return Err("a wildcard host is * or starts with *. (*.example.com)".into());
    }
    Ok(match normalized(text)? {
        Host::Name(name) => HostPattern::Name(name),
        Host::Ip(ip) => HostPattern::Ip(ip),
    })
}

/// A host as a URL's host is normalized.
fn normalized(text: &str) -> Result<Host, String> {
    let url = Url::parse(&format!("http://{text}/")).map_err(|e| format!("the host {text:?} is not valid: {e}"))?;
    host_of(&url).ok_or_else(|| format!("the host {text:?} is not valid"))
}

fn host_of(url: &Url) -> Option<Host> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    // `Url` writes IPv4 addresses in dotted form whatever the input was, and
    // IPv6 ones in brackets.
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<IpAddr>().ok().map(|ip| Host::Ip(ip.to_canonical()));
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(v4)));
    }
    Some(Host::Name(host.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        AllowList::parse(&entries).unwrap_or_else(|e| panic!("{entries:?}: {e}"))
    }

    fn admitted(allow: &AllowList, url: &str) -> Result<(), FetchError> {
        allow.admit(&Url::parse(url).expect("a URL"))
    }

    #[test]
    fn entries_parse_into_scheme_host_and_port() {
        let table: &[(&str, &str, HostPattern, Option<u16>)] = &[
            (
                "https://api.example.com",
                "https",
                HostPattern::Name("api.example.com".into()),
                Some(443),
            ),
            (
                "http://api.example.com",
                "http",
                HostPattern::Name("api.example.com".into()),
                Some(80),
            ),
            (
                "HTTPS://API.Example.COM:8443/",
                "https",
                HostPattern::Name("api.example.com".into()),
                Some(8443),
            ),
            (
                "https://*.example.com",
                "https",
                HostPattern::Subdomains(".example.com".into()),
                Some(443),
            ),
            ("http://*:*", "http", HostPattern::Any, None),
            ("https://*", "https", HostPattern::Any, Some(443)),
            (
                "http://127.0.0.1:8080",
                "http",
                HostPattern::Ip("127.0.0.1".parse().expect("ip")),
                Some(8080),
            ),
            (
                "http://127.1:*",
                "http",
                HostPattern::Ip("127.0.0.1".parse().expect("ip")),
                None,
            ),
            (
                "http://[::1]:9000",
                "http",
                HostPattern::Ip("::1".parse().expect("ip")),
                Some(9000),
            ),
            (
                "http://[::ffff:10.0.0.1]",
                "http",
                HostPattern::Ip("10.0.0.1".parse().expect("ip")),
                Some(80),
            ),
            (
                "https://bücher.example",
                "https",
                HostPattern::Name("xn--bcher-kva.example".into()),
                Some(443),
            ),
        ];
        for (text, scheme, host, port) in table {
            let parsed = parse_entry(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                parsed,
                Entry {
                    scheme,
                    host: host.clone(),
                    port: *port
                },
                "{text}"
            );
        }
    }

    #[test]
    fn bad_entries_are_refused_saying_what_is_wrong() {
        let table: &[(&str, &str)] = &[
            ("api.example.com", "no scheme"),
            ("ftp://example.com", "neither http nor https"),
            ("https://", "no host"),
            ("https://:443", "no host"),
            ("https://example.com/path", "no path"),
            ("https://example.com?q", "no path, query"),
            ("https://user@example.com", "no path, query or user"),
            ("https://example.com:", "neither a number"),
            ("https://example.com:0", "neither a number"),
            ("https://example.com:65536", "neither a number"),
            ("https://example.com:http", "neither a number"),
            ("https://a*.example.com", "a wildcard host"),
            ("https://*.*.example.com", "a wildcard host"),
            ("https://example.*", "a wildcard host"),
            ("https://*.10.0.0.1", "not an address"),
            ("http://::1", "in brackets"),
            ("http://[::1", "closing ]"),
            ("http://[::1]x", "not a port"),
            ("http://exa mple.com", "not valid"),
        ];
        for (text, says) in table {
            let error = AllowList::parse(&[(*text).to_owned()]).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
            assert!(error.contains(&format!("{text:?}")), "names the entry: {error}");
        }
    }

    #[test]
    fn urls_match_entries_by_scheme_host_and_port() {
        let allow = list(&[
            "https://api.example.com",
            "https://*.hooks.example.com:8443",
            "http://127.0.0.1:8080",
            "http://[::1]:*",
        ]);
        let table: &[(&str, bool)] = &[
            ("https://api.example.com/v1?x=1", true),
            ("https://API.EXAMPLE.COM:443/", true),
            ("http://api.example.com/", false),
            ("https://api.example.com:8443/", false),
            ("https://other.example.com/", false),
            ("https://api.example.com.evil.net/", false),
            ("https://a.hooks.example.com:8443/", true),
            ("https://a.b.hooks.example.com:8443/", true),
            ("https://hooks.example.com:8443/", false),
            ("https://evilhooks.example.com:8443/", false),
            ("https://a.hooks.example.com/", false),
            ("http://127.0.0.1:8080/", true),
            ("http://127.1:8080/", true),
            ("http://2130706433:8080/", true),
            ("http://[::ffff:127.0.0.1]:8080/", true),
            ("http://127.0.0.1:8081/", false),
            ("http://localhost:8080/", false),
            ("http://[::1]:1/", true),
            ("http://[0:0:0:0:0:0:0:1]:65535/", true),
            ("https://[::1]:1/", false),
        ];
        for (url, allowed) in table {
            assert_eq!(
                admitted(&allow, url).is_ok(),
                *allowed,
                "{url}: {:?}",
                admitted(&allow, url)
            );
        }
    }

    #[test]
    fn a_refused_url_names_the_entry_that_would_allow_it() {
        let allow = list(&["https://api.example.com"]);
        let error = admitted(&allow, "http://example.org/x").expect_err("not listed");
        assert_eq!(
            error,
            FetchError::NotAllowed(
                "http://example.org/x is not allowed by [capabilities] http: add \"http://example.org:80\" to allow it"
                    .into()
            )
        );
        assert!(matches!(
            admitted(&allow, "file:///etc/passwd"),
            Err(FetchError::Invalid(_))
        ));
    }

    #[test]
    fn an_address_off_the_internet_must_be_named_even_when_a_wildcard_matches() {
        let allow = list(&["http://*:*", "http://10.1.2.3:*"]);
        assert_eq!(admitted(&allow, "http://93.184.216.34/"), Ok(()));
        assert_eq!(admitted(&allow, "http://10.1.2.3:81/"), Ok(()));
        assert_eq!(
            admitted(&allow, "http://127.0.0.1:9/"),
            Err(FetchError::NotAllowed(
                "http://127.0.0.1:9/ resolves to 127.0.0.1, a loopback address: list it by address in \
                 [capabilities] http (\"http://127.0.0.1:9\") to allow it"
                    .into()
            ))
        );
        for (url, why) in [
            ("http://169.254.169.254/latest/meta-data/", "the cloud metadata address"),
            ("http://[fd00:ec2::254]/", "the cloud metadata address"),
            ("http://[::ffff:a9fe:a9fe]/", "the cloud metadata address"),
            ("http://0x7f000001/", "a loopback address"),
            ("http://10.0.0.1/", "a private address"),
            ("http://100.64.0.1/", "a shared (CGNAT) address"),
            ("http://0.0.0.0:80/", "an unspecified address"),
        ] {
            match admitted(&allow, url) {
                Err(FetchError::NotAllowed(message)) => assert!(message.contains(why), "{url}: {message}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(allow.names("10.1.2.3".parse().expect("ip")));
        assert!(allow.names("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!allow.names("10.1.2.4".parse().expect("ip")));
    }
}
