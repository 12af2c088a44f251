//! Who the client is: the TCP peer, or, when the peer is a trusted proxy, the address the proxy
//! reports in `X-Forwarded-For` or `Forwarded` (RFC 7239).
//!
//! The header is read from the right: each proxy appends the address it received the request
//! from, so the rightmost entries were written by our own proxies and the first untrusted one
//! from the right is the client. Whatever the client itself put in the header stands to the left
//! of that and is never believed. From a peer that is not a trusted proxy the headers are
//! ignored entirely.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;

/// The header trusted proxies report the client's address in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The proxies whose forwarding headers are believed, and which header they write.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts peers in `networks` to report the client in `header`.
    pub fn new(networks: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self { networks, header }
    }

    /// Trusts no proxy: the client is always the TCP peer.
    pub fn none() -> Self {
        Self::new(Vec::new(), ForwardedHeader::XForwardedFor)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.networks
            .iter()
            .any(|network| network.contains(&address))
    }

    /// The client's address for a request from `peer` with these headers.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let name: HeaderName = match self.header {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => header::FORWARDED,
        };
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(&name) {
            let Ok(value) = value.to_str() else {
                // Unreadable: nothing in it can be believed, not even our proxies' part.
                return peer;
            };
            hops.extend(value.split(','));
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_node(hop.trim()),
                ForwardedHeader::Forwarded => forwarded_for(hop).and_then(parse_node),
            };
            // A hop that is not an address (`unknown`, an obfuscated name, garbage) ends what
            // can be known; the last trusted hop before it stands for the client.
            let Some(address) = parsed else {
                return client;
            };
            client = address;
            if !self.trusts(address) {
                return address;
            }
        }
        client
    }
}

/// The `for=` value of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// An address, optionally with a port, IPv6 optionally in brackets: `192.0.2.1`,
/// `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(|address| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    fn proxies(header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::new(
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            header,
        )
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let xff = headers("x-forwarded-for", &["198.51.100.7"]);
        let trusted = proxies(ForwardedHeader::XForwardedFor);
        assert_eq!(
            trusted.client_address(ip("10.1.2.3"), &xff),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.client_address(ip("192.0.2.1"), &xff),
            ip("192.0.2.1")
        );
        assert_eq!(
            TrustedProxies::none().client_address(ip("10.1.2.3"), &xff),
            ip("10.1.2.3")
        );
        // Without the header, the proxy itself is the client.
        assert_eq!(
            trusted.client_address(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
        // IPv4-mapped peers are matched as IPv4.
        assert_eq!(
            trusted.client_address(ip("::ffff:10.1.2.3"), &xff),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let trusted = proxies(ForwardedHeader::XForwardedFor);
        let peer = ip("10.0.0.1");
        for (values, expected) in [
            // The client forged a left part; our proxy appended the real address.
            (&["1.2.3.4, 198.51.100.7"][..], "198.51.100.7"),
            (&["1.2.3.4", "198.51.100.7, 10.9.9.9"][..], "198.51.100.7"),
            (&["198.51.100.7:4711"][..], "198.51.100.7"),
            (&["[2001:db9::1]:4711"][..], "2001:db9::1"),
            // Only proxies: the leftmost one is as far as is known.
            (&["10.2.2.2, 10.3.3.3"][..], "10.2.2.2"),
            // Garbage written right of the client ends the walk at the last trusted hop.
            (&["198.51.100.7, garbage, 10.3.3.3"][..], "10.3.3.3"),
            (&["garbage"][..], "10.0.0.1"),
        ] {
            let headers = headers("x-forwarded-for", values);
            assert_eq!(
                trusted.client_address(peer, &headers),
                ip(expected),
                "{values:?}"
            );
        }
    }

    #[test]
    fn forwarded_is_read_when_configured_and_only_then() {
        let trusted = proxies(ForwardedHeader::Forwarded);
        let peer = ip("10.0.0.1");
        let forwarded = headers(
            "forwarded",
            &[r#"for=1.2.3.4, for="[2001:db9::17]:4711";proto=https, For=10.1.1.1;by=10.0.0.1"#],
        );
        assert_eq!(trusted.client_address(peer, &forwarded), ip("2001:db9::17"));
        let unknown = headers("forwarded", &["for=unknown"]);
        assert_eq!(trusted.client_address(peer, &unknown), peer);
        // The other header is ignored, whatever it says.
        let xff = headers("x-forwarded-for", &["198.51.100.7"]);
        assert_eq!(trusted.client_address(peer, &xff), peer);
        assert_eq!(
            proxies(ForwardedHeader::XForwardedFor).client_address(peer, &forwarded),
            peer
        );
    }
}
