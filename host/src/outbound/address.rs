//! Which IP addresses a request may reach without being named: every public
//! unicast address. The others ([`refused`]) are the host's own machine, its
//! networks and the cloud's metadata service, which a plugin must not reach
//! unless an allow-list entry names that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The AWS instance metadata service over IPv6.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Why `ip` may not be reached unless named ("a loopback address", ...), or
/// `None` for a public unicast address. IPv6 forms that carry an IPv4
/// address (mapped, compatible, NAT64, 6to4) are judged by that address.
pub(super) fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "the cloud metadata address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if a == 0 {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "a broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a == 100 && (b & 0xc0) == 64 {
        "a shared (CGNAT) address"
    } else if a >= 240 {
        "a reserved address"
    } else {
        return None;
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    Some(if ip == AWS_METADATA_V6 {
        "the cloud metadata address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if let Some(mapped) = ip.to_ipv4_mapped() {
        return refused_v4(mapped);
    } else if s[..6] == [0; 6] {
        // IPv4-compatible (`::a.b.c.d`, deprecated).
        return refused_v4(v4(s[6], s[7]));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: the gateway connects to the IPv4 address inside.
        return refused_v4(v4(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address of the relay follows the prefix.
        return refused_v4(v4(s[1], s[2]));
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        "a local NAT64 address"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "a private (unique local) address"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "a link-local address"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "a site-local address"
    } else if s[0] & 0xff00 == 0xff00 {
        "a multicast address"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_off_the_public_internet_are_refused_with_their_kind() {
        let table: &[(&str, Option<&str>)] = &[
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("1.1.1.1", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.32.0.1", None),
            ("127.0.0.1", Some("a loopback address")),
            ("127.0.0.2", Some("a loopback address")),
            ("10.0.0.1", Some("a private address")),
            ("172.16.0.1", Some("a private address")),
            ("172.31.255.255", Some("a private address")),
            ("192.168.1.1", Some("a private address")),
            ("169.254.169.254", Some("the cloud metadata address")),
            ("169.254.0.1", Some("a link-local address")),
            ("0.0.0.0", Some("an unspecified address")),
            ("0.1.2.3", Some("an unspecified address")),
            ("255.255.255.255", Some("a broadcast address")),
            ("224.0.0.1", Some("a multicast address")),
            ("239.255.255.250", Some("a multicast address")),
            ("100.64.0.1", Some("a shared (CGNAT) address")),
            ("100.127.255.254", Some("a shared (CGNAT) address")),
            ("240.0.0.1", Some("a reserved address")),
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("::1", Some("a loopback address")),
            ("::", Some("an unspecified address")),
            ("fd00:ec2::254", Some("the cloud metadata address")),
            ("fd00::1", Some("a private (unique local) address")),
            ("fc00::1", Some("a private (unique local) address")),
            ("fe80::1", Some("a link-local address")),
            ("febf::1", Some("a link-local address")),
            ("fec0::1", Some("a site-local address")),
            ("ff02::1", Some("a multicast address")),
            ("::ffff:127.0.0.1", Some("a loopback address")),
            ("::ffff:169.254.169.254", Some("the cloud metadata address")),
            ("::ffff:10.1.2.3", Some("a private address")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("a loopback address")),
            ("64:ff9b::10.0.0.1", Some("a private address")),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::1", Some("a local NAT64 address")),
            ("2002:7f00:1::", Some("a loopback address")),
            ("2002:a9fe:a9fe::1", Some("the cloud metadata address")),
            ("2002:808:808::1", None),
        ];
        for (ip, expected) in table {
            let parsed: IpAddr = ip.parse().expect("an address");
            assert_eq!(refused(parsed), *expected, "{ip}");
        }
    }
}
