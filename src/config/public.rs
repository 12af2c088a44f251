//! The public listener's arguments: its timeouts and limits, the proxies it trusts, and whether
//! it believes the trace context callers send; and the listener's settings.

use std::time::Duration;

use clap::{Args, ValueEnum, builder::PossibleValue};
use ipnet::IpNet;

use super::parse_positive_duration;
use crate::http::{ForwardedHeader, ListenerSettings, TrustedProxies};

/// Arguments of the public listener.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Public listener")]
pub struct PublicListenerArgs {
    /// How long a client has to send a complete request head (request line and headers): from
    /// the connection's start for its first request, from the first byte for later ones. Slower
    /// connections are closed.
    #[arg(long, env = "INCODE_GATEWAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_header_timeout)]
    pub header_read_timeout: Duration,

    /// How long one request may take once its head is in: reading the body and answering.
    /// Past it the answer is 408 (body still incomplete) or 503, and the connection is closed.
    #[arg(long, env = "INCODE_GATEWAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// How long a kept-alive connection may wait, idle, for its next request (HTTP/1.1), or
    /// stay without open streams (HTTP/2).
    #[arg(long, env = "INCODE_GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Most connections open at once. A new connection over the limit closes another first:
    /// one that has not authenticated and is idle or still sending its head, oldest first; then
    /// one that has not authenticated; then an idle authenticated one. Connections serving an
    /// authenticated request are never closed for room.
    #[arg(long, env = "INCODE_GATEWAY_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most concurrent requests (streams) on one HTTP/2 connection.
    #[arg(long, env = "INCODE_GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub http2_max_concurrent_streams: u32,

    /// Networks of the proxies in front of the gateway (CIDRs or addresses, comma-separated),
    /// e.g. `10.0.0.0/8,192.168.1.7`. Only from these peers is the client's address taken from
    /// --client-address-header; from anyone else that header is ignored.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// The header the trusted proxies put the client's address in. Configure the proxies to
    /// append to it (or overwrite it); a header of the other kind is ignored.
    #[arg(long, env = "INCODE_GATEWAY_CLIENT_ADDRESS_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub client_address_header: ForwardedHeader,

    /// Continue the trace of an incoming `traceparent`. By default a request from the internet
    /// starts a new trace, linked to the caller's; set this when only your own infrastructure
    /// can reach the listener and its trace context is yours.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TRUST_INCOMING_TRACE_CONTEXT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub trust_incoming_trace_context: bool,
}

/// Longest accepted header read timeout.
const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn parse_header_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_positive_duration(text)?;
    if duration > MAX_HEADER_READ_TIMEOUT {
        return Err("must be at most 30s: a longer one lets slow clients hold connections".into());
    }
    Ok(duration)
}

/// A CIDR, or a single address (a /32 or /128).
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|network| network.trunc())
        .map_err(|_| format!("`{text}` is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
}

impl ValueEnum for ForwardedHeader {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::XForwardedFor, Self::Forwarded]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::XForwardedFor => PossibleValue::new("x-forwarded-for")
                .help("`X-Forwarded-For: client, proxy1, proxy2`"),
            Self::Forwarded => PossibleValue::new("forwarded")
                .help("`Forwarded: for=client, for=proxy1` (RFC 7239)"),
        })
    }
}

impl PublicListenerArgs {
    /// The listener's timeouts and limits.
    pub fn listener_settings(&self) -> ListenerSettings {
        ListenerSettings {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
        }
    }

    /// The trusted proxies.
    pub fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.clone(), self.client_address_header)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{config::Cli, http::ForwardedHeader};

    fn parse(args: &[&str]) -> Result<super::PublicListenerArgs, clap::Error> {
        let mut all = vec!["incode-gateway"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|cli| cli.serve.public_listener)
    }

    #[test]
    fn defaults_and_bounds() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.header_read_timeout.as_secs(), 10);
        assert_eq!(args.request_timeout.as_secs(), 30);
        assert_eq!(args.idle_timeout.as_secs(), 60);
        assert_eq!(args.max_connections, 512);
        assert_eq!(args.http2_max_concurrent_streams, 32);
        assert!(args.trusted_proxies.is_empty());
        assert!(!args.trust_incoming_trace_context);

        let error = parse(&["--header-read-timeout", "31s"]).unwrap_err();
        assert!(error.to_string().contains("at most 30s"), "{error}");
        assert!(parse(&["--header-read-timeout", "0s"]).is_err());
        assert!(parse(&["--max-connections", "0"]).is_err());
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let args = parse(&["--trusted-proxies", "10.0.0.0/8, 192.168.1.7,2001:db8::/32"]).unwrap();
        let networks: Vec<String> = args.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(networks, ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]);
        let error = parse(&["--trusted-proxies", "10.0.0.0/33"]).unwrap_err();
        assert!(error.to_string().contains("is not a CIDR"), "{error}");
        let args = parse(&["--client-address-header", "forwarded"]).unwrap();
        assert_eq!(args.client_address_header, ForwardedHeader::Forwarded);
    }
}
