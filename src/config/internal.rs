//! The internal listener's arguments, and its settings: transport limits, TLS and who may
//! subscribe (the `[[subscribers]]` of the config file).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    ServeArgs,
    file::{FileSections, SubscriberEntry},
    parse_duration, parse_positive_duration,
};
use crate::grpc::{
    GrpcSettings, SecuritySettings, TransportSettings, identity::SubscriberSettings,
};

/// The internal listener: TLS (reloaded when the files change or on SIGHUP), mutual TLS, who may
/// subscribe without credentials, and HTTP/2 and TCP limits. Subscriber identities (names,
/// tokens, the consumers each may use) are `[[subscribers]]` in the --config file. See
/// docs/internal-listener.md.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Internal listener")]
pub struct InternalListenerArgs {
    /// PEM certificate chain of the internal listener (server certificate first). With
    /// --internal-tls-key, the listener speaks TLS only.
    #[arg(long, env = "INCODE_GATEWAY_INTERNAL_TLS_CERT", value_name = "FILE")]
    pub internal_tls_cert: Option<PathBuf>,

    /// PEM private key of --internal-tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "INCODE_GATEWAY_INTERNAL_TLS_KEY", value_name = "FILE")]
    pub internal_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that sign subscribers' client certificates: turns on mutual TLS.
    /// Every call then needs a client certificate signed by one of them, except gRPC health
    /// checks.
    #[arg(long, env = "INCODE_GATEWAY_INTERNAL_CLIENT_CA", value_name = "FILE")]
    pub internal_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes (they are also reloaded on SIGHUP).
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_TLS_RELOAD_INTERVAL",
        default_value = "5s",
        value_parser = parse_positive_duration
    )]
    pub internal_tls_reload_interval: Duration,

    /// Let the internal listener start on a non-loopback address although nothing
    /// authenticates subscribers: anyone who can reach it can then read every event and move
    /// every durable consumer.
    #[arg(
        long,
        env = "INCODE_GATEWAY_ALLOW_UNAUTHENTICATED_SUBSCRIBERS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unauthenticated_subscribers: bool,

    /// With subscribers configured, still let callers without credentials subscribe without a
    /// consumer (the plain stream), and use reflection and /metrics. Durable consumers always
    /// need a subscriber identity.
    #[arg(
        long,
        env = "INCODE_GATEWAY_ALLOW_ANONYMOUS_READS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_anonymous_reads: bool,

    /// Most concurrent streams (calls) a client may open on one HTTP/2 connection.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_MAX_CONCURRENT_STREAMS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub internal_max_concurrent_streams: u32,

    /// How often an HTTP/2 PING is sent to each client to find dead connections; `0s` turns it
    /// off.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_HTTP2_KEEPALIVE_INTERVAL",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub internal_http2_keepalive_interval: Duration,

    /// How long an unanswered HTTP/2 keepalive PING waits before the connection is closed.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_HTTP2_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = parse_positive_duration
    )]
    pub internal_http2_keepalive_timeout: Duration,

    /// Idle time before TCP keepalive probes start on internal connections; `0s` turns them
    /// off.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_TCP_KEEPALIVE",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub internal_tcp_keepalive: Duration,

    /// Largest gRPC request message accepted, in bytes (decoded); larger ones are refused with
    /// OUT_OF_RANGE.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_MAX_MESSAGE_BYTES",
        default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u32).range(1024..)
    )]
    pub internal_max_message_bytes: u32,
}

impl ServeArgs {
    /// Settings of the internal listener; `trace_deliveries` when traces are exported.
    pub fn grpc_settings(&self, trace_deliveries: bool) -> GrpcSettings {
        let args = &self.internal;
        let nonzero = |duration: Duration| (!duration.is_zero()).then_some(duration);
        GrpcSettings {
            heartbeat_interval: self.heartbeat_interval,
            trace_deliveries,
            limits: TransportSettings {
                max_concurrent_streams: args.internal_max_concurrent_streams,
                http2_keepalive_interval: nonzero(args.internal_http2_keepalive_interval),
                http2_keepalive_timeout: args.internal_http2_keepalive_timeout,
                tcp_keepalive: nonzero(args.internal_tcp_keepalive),
                max_message_bytes: usize::try_from(args.internal_max_message_bytes)
                    .unwrap_or(usize::MAX),
            },
        }
    }

    /// Who may use the internal listener, and its TLS: the flags, and the subscribers of the
    /// config file's `sections`.
    pub fn security_settings(&self, sections: &FileSections) -> SecuritySettings {
        let args = &self.internal;
        SecuritySettings {
            tls_cert: args.internal_tls_cert.clone(),
            tls_key: args.internal_tls_key.clone(),
            client_ca: args.internal_client_ca.clone(),
            tls_reload_interval: args.internal_tls_reload_interval,
            allow_unauthenticated_subscribers: args.allow_unauthenticated_subscribers,
            allow_anonymous_reads: args.allow_anonymous_reads,
            subscribers: sections.subscriber_settings(),
        }
    }
}

impl FileSections {
    /// The subscribers of `[[subscribers]]`.
    pub fn subscriber_settings(&self) -> Vec<SubscriberSettings> {
        self.subscribers
            .iter()
            .map(SubscriberSettings::from)
            .collect()
    }
}

impl From<&SubscriberEntry> for SubscriberSettings {
    fn from(entry: &SubscriberEntry) -> Self {
        Self {
            name: entry.name.clone(),
            tokens: entry.tokens.clone(),
            consumers: entry.consumers.clone(),
            read_stream: entry.read_stream,
        }
    }
}
