//! What the NATS log is opened with ([`NatsSettings`]), and the checks made before connecting:
//! credentials and plain text, the transport each server is reached over, and server lists
//! safe to show.

use std::{path::PathBuf, time::Duration};

use crate::auth::Secret;

/// How to reach NATS and which stream to use.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URLs (`nats://host:port` or `tls://host:port`); the client fails over between them.
    pub servers: Vec<String>,
    /// The stream's name: 1 to 64 of `A-Z a-z 0-9 - _`.
    pub stream: String,
    /// Replicas of the stream and of the state bucket (1, or 3 in a three-node cluster).
    pub replicas: usize,
    /// The stream's `duplicate_window`.
    pub dedup_window: Duration,
    /// The stream's `max_age`.
    pub retention: Duration,
    /// The stream's `max_msgs`; `None` for no limit.
    pub max_events: Option<u64>,
    /// How long an append may keep retrying (timeouts, leader elections) before it fails.
    pub publish_timeout: Duration,
    /// How long start-up waits for NATS before giving up.
    pub connect_timeout: Duration,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS to NATS.
    pub tls: NatsTls,
    /// Accept credentials sent in plain text to servers that are not on loopback (the network
    /// encrypts the traffic some other way).
    pub allow_plaintext: bool,
}

impl NatsSettings {
    /// The options for `servers` and `stream` with the gateway's defaults.
    pub fn new(servers: Vec<String>, stream: impl Into<String>) -> Self {
        Self {
            servers,
            stream: stream.into(),
            replicas: 1,
            dedup_window: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_events: None,
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            auth: NatsAuth::default(),
            tls: NatsTls::default(),
            allow_plaintext: false,
        }
    }

    /// Checks the options without connecting, and says how the connection will be protected.
    pub fn check(&self) -> Result<Transport, NatsOptionsError> {
        validate(self)
    }

    /// The subject the gateway publishes events to.
    pub fn subject(&self) -> String {
        format!("{}.events", self.stream)
    }

    pub(super) fn state_bucket(&self) -> String {
        format!("{}_STATE", self.stream)
    }
}

/// How the gateway authenticates to NATS: at most one of a credentials file, a user and
/// password, or a token.
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    /// A `.creds` file (user JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// A user name, with `password`.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// A token.
    pub token: Option<Secret>,
}

/// TLS to NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// CA certificates (PEM) that sign the servers' certificates; setting it requires TLS.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<PathBuf>,
}

/// How the connection to NATS is protected, as the options say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS to every server, and to the servers the cluster announces.
    Tls,
    /// Plain text, but every server is on loopback: nothing leaves the host. Servers the
    /// cluster announces are not used, so that it stays so.
    LoopbackPlaintext,
    /// Plain text across the network to these servers (credentials in the URLs blanked).
    Plaintext {
        /// The servers beyond loopback reached in plain text.
        servers: String,
    },
}

/// Why the NATS options are not usable, said before connecting. Messages never show a
/// password, a token or credentials inside a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsOptionsError {
    /// No server.
    #[error("no NATS server is configured (--nats-url)")]
    NoServers,
    /// A server URL that is not a NATS URL.
    #[error("--nats-url `{url}` is not a NATS server URL (nats://, tls://, ws:// or wss://)")]
    InvalidUrl {
        /// The URL, credentials blanked.
        url: String,
    },
    /// A stream name JetStream would refuse.
    #[error("--nats-stream `{stream}` must be 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidStream {
        /// The name.
        stream: String,
    },
    /// A replica count JetStream would refuse.
    #[error("--nats-replicas must be between 1 and 5 (JetStream's limit), not {replicas}")]
    InvalidReplicas {
        /// The count.
        replicas: usize,
    },
    /// A deduplication window that outlives the messages.
    #[error(
        "--dedup-window ({}) must not be longer than --retention ({}): JetStream keeps message \
         ids only while it keeps the messages",
        humantime::format_duration(*dedup_window),
        humantime::format_duration(*retention)
    )]
    DedupWindowBeyondRetention {
        /// The deduplication window.
        dedup_window: Duration,
        /// The retention.
        retention: Duration,
    },
    /// More than one way to authenticate.
    #[error(
        "give one NATS authentication: --nats-credentials, --nats-user with --nats-password, or \
         --nats-token"
    )]
    SeveralAuthentications,
    /// A user without a password, or the reverse.
    #[error("--nats-user and --nats-password go together")]
    HalfUser,
    /// A client certificate without its key, or the reverse.
    #[error("--nats-tls-cert and --nats-tls-key go together")]
    HalfClientCertificate,
    /// Credentials that would cross the network in clear text.
    #[error(
        "NATS credentials would travel in clear text to {servers}, and the events (personal \
         data) with them. Use TLS (tls:// URLs, or --nats-tls-ca), or pass \
         --nats-allow-plaintext if the network between the gateway and NATS encrypts the \
         traffic itself"
    )]
    PlaintextCredentials {
        /// The servers beyond loopback reached in plain text, credentials in the URLs blanked.
        servers: String,
    },
}

pub(super) fn validate(options: &NatsSettings) -> Result<Transport, NatsOptionsError> {
    if options.servers.is_empty() {
        return Err(NatsOptionsError::NoServers);
    }
    let name_ok = !options.stream.is_empty()
        && options.stream.len() <= 64
        && options
            .stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !name_ok {
        return Err(NatsOptionsError::InvalidStream {
            stream: options.stream.clone(),
        });
    }
    if !(1..=5).contains(&options.replicas) {
        return Err(NatsOptionsError::InvalidReplicas {
            replicas: options.replicas,
        });
    }
    if options.dedup_window > options.retention {
        return Err(NatsOptionsError::DedupWindowBeyondRetention {
            dedup_window: options.dedup_window,
            retention: options.retention,
        });
    }
    let auth = &options.auth;
    let methods = [
        auth.credentials_file.is_some(),
        auth.user.is_some() || auth.password.is_some(),
        auth.token.is_some(),
    ];
    if methods.iter().filter(|&&set| set).count() > 1 {
        return Err(NatsOptionsError::SeveralAuthentications);
    }
    if auth.user.is_some() != auth.password.is_some() {
        return Err(NatsOptionsError::HalfUser);
    }
    if options.tls.cert_file.is_some() != options.tls.key_file.is_some() {
        return Err(NatsOptionsError::HalfClientCertificate);
    }
    transport(options)
}

/// How the connection will be protected. TLS is forced for every server once a CA or a client
/// certificate is configured; otherwise `tls://` and `wss://` servers speak TLS and the others
/// plain text (unless the server insists on TLS, which cannot be known before connecting).
/// Plain text to loopback is accepted: the traffic never leaves the host, and whoever can watch
/// the loopback interface can read the gateway's configuration too.
fn transport(options: &NatsSettings) -> Result<Transport, NatsOptionsError> {
    let tls_forced = options.tls.ca_file.is_some() || options.tls.cert_file.is_some();
    let mut credentials = options.auth.credentials_file.is_some()
        || options.auth.user.is_some()
        || options.auth.token.is_some();
    let mut plaintext = false;
    let mut exposed = Vec::new();
    for url in &options.servers {
        let server: async_nats::ServerAddr =
            url.parse().map_err(|_| NatsOptionsError::InvalidUrl {
                url: redacted_servers(std::slice::from_ref(url)),
            })?;
        credentials |= server.has_user_pass();
        let tls = match server.scheme() {
            "tls" | "wss" => true,
            "ws" => false,
            _ => tls_forced,
        };
        if !tls {
            plaintext = true;
            if !is_loopback_host(server.host()) {
                exposed.push(url.clone());
            }
        }
    }
    if !plaintext {
        return Ok(Transport::Tls);
    }
    if exposed.is_empty() {
        return Ok(Transport::LoopbackPlaintext);
    }
    let servers = redacted_servers(&exposed);
    if credentials && !options.allow_plaintext {
        return Err(NatsOptionsError::PlaintextCredentials { servers });
    }
    Ok(Transport::Plaintext { servers })
}

/// Whether `host` (an address or a name, as in a URL) is this machine's loopback interface.
/// Only the name `localhost` counts among names: others are not resolved here.
fn is_loopback_host(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The server URLs for messages, with any credentials in them (`nats://user:pass@host`)
/// replaced by `***`.
pub(super) fn redacted_servers(servers: &[String]) -> String {
    servers
        .iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            (None, Some(at)) => format!("***{}", &url[at..]),
            _ => url.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
