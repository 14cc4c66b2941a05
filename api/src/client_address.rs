//! Who the client is. The TCP peer, unless that peer is a reverse proxy the
//! operator trusts (`--trusted-proxies`): then the right-most
//! `X-Forwarded-For` entry that is not itself a trusted proxy. Entries
//! further left are whatever the client wrote, so they are never believed,
//! and without trusted proxies the header is ignored: a client cannot pick
//! its own address, and with it a fresh sign-in limit or a false `ip` in
//! the audit trail.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header proxies append the address they received a request from to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address as resolved when the request arrived (see
/// `serve.rs`); `RequestOrigin` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The proxies whose `X-Forwarded-For` is believed; none by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of them (an IPv4-mapped IPv6 address, as a
    /// dual-stack listener reports IPv4 peers, counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.0
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// `10.0.0.0/8, 2001:db8::/32, 192.0.2.7`: CIDR blocks or single
    /// addresses, comma-separated; empty means none.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("`{entry}` is neither an address nor a CIDR block (10.0.0.0/8)")
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

/// Stands for a header value that is not text: it names no address.
const UNREADABLE: &str = "?";

/// The client of a request that came from `peer` with these headers.
///
/// Walks `X-Forwarded-For` from the right (the entry the nearest proxy
/// wrote) while the address in hand is a trusted proxy; stops at the first
/// address that is not, or at an entry that is no address (then the last
/// trusted proxy is the best that is known for sure).
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    let entries = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or(UNREADABLE).rsplit(','));
    for entry in entries {
        if !trusted.contains(client) {
            break;
        }
        match parse_entry(entry) {
            Some(ip) => client = ip,
            None => break,
        }
    }
    client
}

/// One hop: a bare address, or one with a port as some proxies write it
/// (`192.0.2.1:443`, `[2001:db8::1]:443`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|address| address.ip()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use std::net::Ipv6Addr;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted(text: &str) -> TrustedProxies {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let headers = forwarded(&["203.0.113.9"]);
        let peer = ip("198.51.100.1");
        assert_eq!(resolve(peer, &headers, &TrustedProxies::default()), peer);
        assert_eq!(resolve(peer, &headers, &trusted("10.0.0.0/8")), peer);
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_entry_it_appended() {
        let proxies = trusted("10.0.0.0/8");
        let headers = forwarded(&["1.1.1.1, 203.0.113.9"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers, &proxies),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_address() {
        let proxies = trusted("10.0.0.0/8, 192.0.2.7");
        // Over two header lines, as RFC 9110 allows: one list in order.
        let headers = forwarded(&["6.6.6.6, 203.0.113.9", "192.0.2.7, 10.9.9.9"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers, &proxies),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_without_the_header_is_the_client() {
        let proxies = trusted("10.0.0.0/8");
        let peer = ip("10.1.2.3");
        assert_eq!(resolve(peer, &HeaderMap::new(), &proxies), peer);
    }

    #[test]
    fn an_entry_that_is_no_address_stops_the_walk_at_the_last_trusted_hop() {
        let proxies = trusted("10.0.0.0/8");
        let headers = forwarded(&["203.0.113.9, unknown, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.1.2.3"), &headers, &proxies), ip("10.0.0.5"));
        let empty = forwarded(&["203.0.113.9,"]);
        assert_eq!(resolve(ip("10.1.2.3"), &empty, &proxies), ip("10.1.2.3"));
    }

    #[test]
    fn entries_with_ports_and_ipv6_are_read() {
        let proxies = trusted("2001:db8:ffff::/48");
        let headers = forwarded(&["[2001:db8::42]:4711"]);
        assert_eq!(
            resolve(ip("2001:db8:ffff::1"), &headers, &proxies),
            ip("2001:db8::42")
        );
        let proxies = trusted("10.0.0.0/8");
        let headers = forwarded(&["203.0.113.9:443"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &headers, &proxies),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_matches_an_ipv4_block() {
        let proxies = trusted("10.0.0.0/8");
        assert!(proxies.contains(ip("::ffff:10.0.0.1")));
        assert!(!proxies.contains(ip("::ffff:11.0.0.1")));
    }

    #[test]
    fn trusted_proxies_are_parsed_from_a_comma_separated_list() {
        assert_eq!(trusted(""), TrustedProxies::default());
        assert_eq!(trusted(" , "), TrustedProxies::default());
        let parsed = trusted("10.1.2.3/8, 192.0.2.7 ,2001:db8::/32");
        assert!(parsed.contains(ip("10.200.0.1")));
        assert!(parsed.contains(ip("192.0.2.7")));
        assert!(!parsed.contains(ip("192.0.2.8")));
        assert!(parsed.contains(ip("2001:db8:1::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.example".parse::<TrustedProxies>().is_err());
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|bits| IpAddr::from(std::net::Ipv4Addr::from(bits))),
            any::<u128>().prop_map(|bits| IpAddr::from(Ipv6Addr::from(bits))),
        ]
    }

    fn in_ten_slash_eight(ip: IpAddr) -> bool {
        trusted("10.0.0.0/8").contains(ip)
    }

    proptest! {
        /// Whatever the header holds, parsing it never panics, and the
        /// answer is the peer or an address that appears in the header.
        #[test]
        fn any_header_gives_the_peer_or_one_of_its_addresses(
            text in "[0-9a-f:.,\\[\\] ]{0,80}",
            peer in any_ip(),
        ) {
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(FORWARDED_FOR, value);
            let everyone = trusted("0.0.0.0/0, ::/0");
            let client = resolve(peer, &headers, &everyone);
            prop_assert!(
                client == peer || text.split(',').filter_map(parse_entry).any(|entry| entry == client)
            );
        }

        /// A client behind trusted proxies is found whatever it wrote
        /// itself to the left of the hops the proxies appended.
        #[test]
        fn the_client_behind_trusted_proxies_is_found_whatever_it_wrote(
            forged in proptest::collection::vec(any_ip(), 0..4),
            client in any_ip().prop_filter("not a proxy", |ip| !in_ten_slash_eight(*ip)),
            hops in proptest::collection::vec(any::<u32>(), 0..4),
        ) {
            let proxies = trusted("10.0.0.0/8");
            let hops: Vec<IpAddr> = hops
                .into_iter()
                .map(|bits| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | (bits & 0x00ff_ffff))))
                .collect();
            let list: Vec<String> = forged
                .iter()
                .chain(std::iter::once(&client))
                .chain(&hops)
                .map(IpAddr::to_string)
                .collect();
            let headers = forwarded(&[&list.join(", ")]);
            prop_assert_eq!(resolve(ip("10.0.0.1"), &headers, &proxies), client);
        }

        /// From a peer that is not trusted, nothing the header says counts.
        #[test]
        fn an_untrusted_peer_is_the_client_whatever_the_header_says(
            text in "\\PC{0,60}",
            peer in any_ip().prop_filter("not a proxy", |ip| !in_ten_slash_eight(*ip)),
        ) {
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(FORWARDED_FOR, value);
            prop_assert_eq!(resolve(peer, &headers, &trusted("10.0.0.0/8")), peer);
        }
    }
}
