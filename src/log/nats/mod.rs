//! The event log on a NATS JetStream stream, for several gateway replicas sharing one replicated
//! log (`--storage nats`).
//!
//! How the log maps onto JetStream:
//! - an append is a publish with `Nats-Msg-Id` set to the deduplication key, answered only once
//!   the PubAck arrives (a quorum of the stream's replicas stored it); a duplicate PubAck carries
//!   the sequence of the stored original, and the stream's `duplicate_window` is the gateway's
//!   deduplication window. Timeouts and "no responders" (a leader election) are retried with the
//!   same message id until the publish timeout, so a retry can never store a second copy;
//! - an event's sequence is the stream sequence and its `received_at` the stream's timestamp:
//!   the stored message is the event without them, and the reader fills them in;
//! - each reader is an ordered (ephemeral, flow-controlled) consumer started at a sequence;
//!   `caught up` comes from its pending count, gaps from jumps in the stream sequence;
//! - retention is the stream's `max_age` and `max_msgs`, enforced by NATS;
//! - the [`StateStore`] is a JetStream key-value bucket, `<stream>_STATE`, whose revisions give
//!   compare-and-set.
//!
//! Only features of nats-server 2.9 are used.

mod reader;
mod stream_config;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_nats::{
    ConnectOptions,
    connection::State as ConnectionState,
    jetstream::{
        self,
        context::PublishErrorKind,
        kv,
        message::PublishMessage,
        stream::{self, Stream},
    },
};
use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::{
    AppendOutcome, Bounds, BoxError, EventLog, LogError, LogReader, NewEvent, PutOutcome, Revision,
    Sequence, StateStore, Versioned,
};
use crate::auth::Secret;
use reader::NatsReader;
pub use stream_config::StreamMismatch;

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

    fn state_bucket(&self) -> String {
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

/// Why the NATS log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsOpenError {
    /// The options are not usable.
    #[error(transparent)]
    Options(#[from] NatsOptionsError),
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// NATS could not be reached in time.
    #[error("cannot connect to NATS at {servers}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The stream or the state bucket could not be set up.
    #[error("cannot set up the JetStream stream `{stream}`")]
    Setup {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The existing stream's settings conflict with the gateway's and cannot be updated.
    #[error(transparent)]
    Mismatch(#[from] StreamMismatch),
}

/// Why the log cannot reach JetStream now: the cause of a [`LogError::Unavailable`].
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    /// The client is not connected.
    #[error("not connected to NATS ({0})")]
    NotConnected(ConnectionState),
    /// Every publish of an event failed or went unanswered until the publish timeout.
    #[error("no PubAck from JetStream within {}", humantime::format_duration(*timeout))]
    NoPubAck {
        /// The publish timeout.
        timeout: Duration,
        /// What the last attempt met.
        #[source]
        last: BoxError,
    },
}

/// An [`EventLog`] and [`StateStore`] on NATS JetStream.
pub struct NatsLog {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: Stream,
    /// The stream through a context with shorter request timeouts, for readers and the head
    /// refresher (see [`READ_REQUEST_TIMEOUT`]).
    read_stream: Stream<()>,
    subject: String,
    state: kv::Store,
    state_stream: Stream,
    state_prefix: String,
    publish_timeout: Duration,
    known_head: Arc<AtomicU64>,
    closed: AtomicBool,
    /// Stops the head refresher when the log is dropped.
    _refresher: tokio_util::sync::DropGuard,
}

/// One JetStream API request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for readers' requests (stream info, consumer creation). Right after a node is lost,
/// a new ephemeral consumer can be placed on the lost node, and its creation then never gets an
/// answer while the next attempt lands on a live one: failing such an attempt soon and trying
/// again brings a reader back sooner than waiting long for it.
const READ_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the known head is refreshed from the stream: it feeds the metrics, and readers
/// compare their position with it to notice a consumer that went silent (see `reader`).
const HEAD_REFRESH: Duration = Duration::from_secs(1);

impl NatsLog {
    /// Connects to NATS, creates the stream and the state bucket if they are missing, updates
    /// their settings where that is safe, and refuses a stream whose settings conflict.
    pub async fn connect(options: NatsSettings) -> Result<Self, NatsOpenError> {
        let transport = validate(&options)?;
        let client = connect(&options, &transport).await?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .ack_timeout(options.publish_timeout)
            .build(client.clone());
        let setup_error = |source: BoxError| NatsOpenError::Setup {
            stream: options.stream.clone(),
            source,
        };
        let stream = tokio::time::timeout(
            options.connect_timeout,
            stream_config::ensure_stream(&jetstream, &options),
        )
        .await
        .map_err(|elapsed| setup_error(elapsed.into()))??;
        let bucket = options.state_bucket();
        let state = tokio::time::timeout(
            options.connect_timeout,
            stream_config::ensure_bucket(&jetstream, &bucket, options.replicas),
        )
        .await
        .map_err(|elapsed| setup_error(elapsed.into()))?
        .map_err(&setup_error)?;
        let state_stream = jetstream
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|error| setup_error(error.into()))?;

        let head = stream.cached_info().state.last_sequence;
        tracing::info!(
            stream = %options.stream,
            replicas = options.replicas,
            first = stream.cached_info().state.first_sequence,
            head,
            "event log opened on NATS JetStream"
        );
        let read_stream = jetstream::ContextBuilder::new()
            .timeout(READ_REQUEST_TIMEOUT)
            .build(client.clone())
            .get_stream_no_info(&options.stream)
            .await
            .map_err(|error| setup_error(error.into()))?;
        let known_head = Arc::new(AtomicU64::new(head));
        let stop = CancellationToken::new();
        tokio::spawn(refresh_head(
            read_stream.clone(),
            known_head.clone(),
            stop.clone(),
        ));
        Ok(Self {
            client,
            jetstream,
            subject: options.subject(),
            stream,
            read_stream,
            state,
            state_stream,
            state_prefix: format!("$KV.{bucket}."),
            publish_timeout: options.publish_timeout,
            known_head,
            closed: AtomicBool::new(false),
            _refresher: stop.drop_guard(),
        })
    }

    fn connected(&self) -> Result<(), LogError> {
        match self.client.connection_state() {
            ConnectionState::Connected => Ok(()),
            state => Err(LogError::unavailable(Unreachable::NotConnected(state))),
        }
    }

    async fn stream_info(&self) -> Result<stream::Info, LogError> {
        self.connected()?;
        self.stream.get_info().await.map_err(LogError::unavailable)
    }

    async fn stream_state(&self) -> Result<stream::State, LogError> {
        Ok(self.stream_info().await?.state)
    }

    /// One publish and its PubAck.
    async fn publish_once(
        &self,
        id: &str,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let publish = PublishMessage::build().payload(payload).message_id(id);
        self.jetstream
            .send_publish(self.subject.clone(), publish)
            .await?
            .await
    }
}

fn validate(options: &NatsSettings) -> Result<Transport, NatsOptionsError> {
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
fn redacted_servers(servers: &[String]) -> String {
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

async fn connect(
    options: &NatsSettings,
    transport: &Transport,
) -> Result<async_nats::Client, NatsOpenError> {
    let servers = redacted_servers(&options.servers);
    let mut connect = ConnectOptions::new()
        .name("incode-gateway")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                other => tracing::info!(event = %other, "NATS client event"),
            }
        });
    let auth = &options.auth;
    if let Some(path) = &auth.credentials_file {
        connect =
            connect
                .credentials_file(path)
                .await
                .map_err(|source| NatsOpenError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        connect = connect.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &auth.token {
        connect = connect.token(token.expose().to_owned());
    }
    if let Some(ca) = &options.tls.ca_file {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&options.tls.cert_file, &options.tls.key_file) {
        connect = connect
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    match transport {
        // Servers the cluster announces are plain `host:port`: TLS to them too.
        Transport::Tls => connect = connect.require_tls(true),
        Transport::LoopbackPlaintext => {
            // An announced server may be on another machine, where plain text would leave the
            // host after all.
            connect = connect.ignore_discovered_servers();
            tracing::info!(
                servers = %servers,
                "the connection to NATS is not encrypted; its servers are on loopback, so it \
                 stays on this host (servers the cluster announces are not used: list every \
                 server in --nats-url)"
            );
        }
        Transport::Plaintext { servers } => tracing::warn!(
            servers = %servers,
            allow_plaintext = options.allow_plaintext,
            "THE CONNECTION TO NATS IS NOT ENCRYPTED: events (personal data) cross the network \
             in clear text. Use TLS (tls:// URLs or --nats-tls-ca) unless the network encrypts \
             the traffic itself"
        ),
    }
    let connect_error = |source: BoxError| NatsOpenError::Connect {
        servers: servers.clone(),
        source,
    };
    let client = connect
        .connect(options.servers.as_slice())
        .await
        .map_err(|error| connect_error(error.into()))?;
    // With `retry_on_initial_connect`, the client connects in the background: wait for it, for
    // at most the connect timeout, so that a wrong address fails start-up with a clear error.
    let deadline = tokio::time::Instant::now() + options.connect_timeout;
    while client.connection_state() != ConnectionState::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(connect_error(
                format!(
                    "not connected after {}",
                    humantime::format_duration(options.connect_timeout)
                )
                .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// Keeps `known_head` close to the stream's head, which other replicas move too.
async fn refresh_head(stream: Stream<()>, known_head: Arc<AtomicU64>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(HEAD_REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Ok(info) = stream.get_info().await {
            known_head.fetch_max(info.state.last_sequence, Ordering::Relaxed);
        }
    }
}

/// Whether a failed publish may succeed when retried with the same message id.
fn is_transient(kind: &PublishErrorKind) -> bool {
    !matches!(kind, PublishErrorKind::MaxPayloadExceeded)
}

#[async_trait]
impl EventLog for NatsLog {
    async fn append(&self, new: NewEvent) -> Result<AppendOutcome, LogError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        let mut event = new.event;
        // The stream assigns both; the reader fills them in.
        event.sequence = 0;
        event.received_at = None;
        let payload = Bytes::from(event.encode_to_vec());
        let id = new.dedup_key.to_hex();
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut backoff = Duration::from_millis(25);
        let mut first = true;
        loop {
            // The client bounds one attempt by the publish timeout already (its ack timeout);
            // retries get what is left of it.
            let attempt = self.publish_once(&id, payload.clone());
            let result = if first {
                first = false;
                Ok(attempt.await)
            } else {
                tokio::time::timeout_at(deadline, attempt).await
            };
            let error: BoxError = match result {
                Ok(Ok(ack)) => {
                    self.known_head.fetch_max(ack.sequence, Ordering::Relaxed);
                    return Ok(if ack.duplicate {
                        AppendOutcome::Duplicate(ack.sequence)
                    } else {
                        AppendOutcome::Appended(ack.sequence)
                    });
                }
                Ok(Err(error)) if !is_transient(&error.kind()) => {
                    return Err(LogError::unavailable(error));
                }
                Ok(Err(error)) => error.into(),
                Err(elapsed) => elapsed.into(),
            };
            if tokio::time::Instant::now() + backoff >= deadline {
                return Err(LogError::unavailable(Unreachable::NoPubAck {
                    timeout: self.publish_timeout,
                    last: error,
                }));
            }
            tracing::debug!(%error, "publish to JetStream failed; retrying with the same message id");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let state = self.stream_state().await?;
        self.known_head
            .fetch_max(state.last_sequence, Ordering::Relaxed);
        Ok(bounds_of(&state))
    }

    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError> {
        let Bounds { first, head } = self.bounds().await?;
        let wanted = nanos_since_epoch(time);
        // Binary search over the stream's timestamps, which grow with the sequence. A message
        // removed meanwhile counts as older than anything asked for.
        let (mut low, mut high) = (first, head + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            let at = match self.stream.get_raw_message(middle).await {
                Ok(message) => message.time.unix_timestamp_nanos(),
                Err(error)
                    if error.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    0
                }
                Err(error) => return Err(LogError::unavailable(error)),
            };
            if at < wanted {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(NatsReader::new(
            self.read_stream.clone(),
            from,
            self.known_head.clone(),
        )))
    }

    fn known_head(&self) -> Sequence {
        self.known_head.load(Ordering::Relaxed)
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        let info = self.stream_info().await?;
        match &info.cluster {
            Some(cluster) if cluster.leader.as_deref().is_none_or(str::is_empty) => {
                Err(LogError::unavailable(
                    "the JetStream stream has no leader (an election is under way)",
                ))
            }
            _ => Ok(()),
        }
    }

    async fn close(&self) -> Result<(), LogError> {
        self.closed.store(true, Ordering::SeqCst);
        // Every append waited for its PubAck; flushing sends whatever else is buffered (nothing
        // that matters for durability).
        let _ = self.client.flush().await;
        Ok(())
    }
}

#[async_trait]
impl StateStore for NatsLog {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, LogError> {
        self.connected()?;
        let entry = self.state.entry(key).await.map_err(LogError::unavailable)?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| Versioned {
                value: entry.value,
                revision: entry.revision,
            }))
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<PutOutcome, LogError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        self.connected()?;
        match expected {
            None => match self.state.create(key, value).await {
                Ok(revision) => Ok(PutOutcome::Stored(revision)),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Ok(PutOutcome::Conflict)
                }
                Err(error) => Err(LogError::unavailable(error)),
            },
            Some(revision) => match self.state.update(key, value, revision).await {
                Ok(revision) => Ok(PutOutcome::Stored(revision)),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Ok(PutOutcome::Conflict)
                }
                Err(error) => Err(LogError::unavailable(error)),
            },
        }
    }

    async fn count(&self, prefix: &str) -> Result<usize, LogError> {
        use futures::TryStreamExt;
        self.connected()?;
        let filter = format!("{}{prefix}>", self.state_prefix);
        let subjects = self
            .state_stream
            .info_with_subjects(filter)
            .await
            .map_err(LogError::unavailable)?;
        let subjects: Vec<_> = subjects
            .try_collect()
            .await
            .map_err(LogError::unavailable)?;
        Ok(subjects.len())
    }
}

fn bounds_of(state: &stream::State) -> Bounds {
    let head = state.last_sequence;
    // An empty new stream reports 0 as its first sequence; one emptied by retention reports
    // `last + 1`.
    Bounds {
        first: state.first_sequence.clamp(1, head + 1),
        head,
    }
}

fn nanos_since_epoch(time: SystemTime) -> i128 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(servers: &[&str]) -> NatsSettings {
        NatsSettings::new(servers.iter().map(|s| (*s).to_owned()).collect(), "EVENTS")
    }

    fn with(change: impl FnOnce(&mut NatsSettings)) -> Result<Transport, NatsOptionsError> {
        let mut options = options(&["nats://127.0.0.1:4222"]);
        change(&mut options);
        options.check()
    }

    #[test]
    fn options_that_cannot_work_are_refused_before_connecting() {
        use NatsOptionsError::*;
        fn path() -> Option<PathBuf> {
            Some(PathBuf::from("/etc/nats/file"))
        }
        /// A change to valid options, the refusal it must meet, and words of its message.
        type Case = (
            Box<dyn FnOnce(&mut NatsSettings)>,
            NatsOptionsError,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (Box::new(|o| o.servers.clear()), NoServers, "--nats-url"),
            (
                Box::new(|o| o.servers = vec!["http://u:hunter2@nats:4222".into()]),
                InvalidUrl {
                    url: "http://***@nats:4222".into(),
                },
                "not a NATS server URL",
            ),
            (
                Box::new(|o| o.stream = "has.dot".into()),
                InvalidStream {
                    stream: "has.dot".into(),
                },
                "--nats-stream",
            ),
            (
                Box::new(|o| o.stream = "S".repeat(65)),
                InvalidStream {
                    stream: "S".repeat(65),
                },
                "1 to 64",
            ),
            (
                Box::new(|o| o.stream = String::new()),
                InvalidStream {
                    stream: String::new(),
                },
                "--nats-stream",
            ),
            (
                Box::new(|o| o.replicas = 0),
                InvalidReplicas { replicas: 0 },
                "between 1 and 5",
            ),
            (
                Box::new(|o| o.replicas = 6),
                InvalidReplicas { replicas: 6 },
                "not 6",
            ),
            (
                Box::new(|o| {
                    o.dedup_window = Duration::from_secs(7200);
                    o.retention = Duration::from_secs(3600);
                }),
                DedupWindowBeyondRetention {
                    dedup_window: Duration::from_secs(7200),
                    retention: Duration::from_secs(3600),
                },
                "--dedup-window (2h) must not be longer than --retention (1h)",
            ),
            (
                Box::new(|o| {
                    o.auth.token = Some(Secret::new("token-hunter2"));
                    o.auth.credentials_file = path();
                }),
                SeveralAuthentications,
                "give one NATS authentication",
            ),
            (
                Box::new(|o| {
                    o.auth.token = Some(Secret::new("token-hunter2"));
                    o.auth.user = Some("gateway".into());
                    o.auth.password = Some(Secret::new("hunter2"));
                }),
                SeveralAuthentications,
                "--nats-token",
            ),
            (
                Box::new(|o| o.auth.password = Some(Secret::new("hunter2"))),
                HalfUser,
                "--nats-user and --nats-password",
            ),
            (
                Box::new(|o| o.auth.user = Some("gateway".into())),
                HalfUser,
                "go together",
            ),
            (
                Box::new(|o| o.tls.cert_file = path()),
                HalfClientCertificate,
                "--nats-tls-cert and --nats-tls-key",
            ),
            (
                Box::new(|o| o.tls.key_file = path()),
                HalfClientCertificate,
                "go together",
            ),
        ];
        for (change, expected, message) in cases {
            let error = with(change).unwrap_err();
            assert_eq!(error, expected);
            let text = NatsOpenError::from(error).to_string();
            assert!(text.contains(message), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        // The defaults, and a usable set of everything.
        assert_eq!(with(|_| {}), Ok(Transport::LoopbackPlaintext));
        let all = with(|o| {
            o.servers = vec!["tls://nats-1:4222".into(), "tls://nats-2:4222".into()];
            o.stream = "INCODE_EVENTS-2".into();
            o.replicas = 5;
            o.auth.user = Some("gateway".into());
            o.auth.password = Some(Secret::new("hunter2"));
            o.tls.ca_file = path();
            o.tls.cert_file = path();
            o.tls.key_file = path();
        });
        assert_eq!(all, Ok(Transport::Tls));
    }

    #[test]
    fn credentials_never_cross_the_network_in_clear_text_unless_allowed() {
        let token = |o: &mut NatsSettings| o.auth.token = Some(Secret::new("token-hunter2"));
        let user = |o: &mut NatsSettings| {
            o.auth.user = Some("gateway".into());
            o.auth.password = Some(Secret::new("hunter2"));
        };
        let creds = |o: &mut NatsSettings| o.auth.credentials_file = Some("/x.creds".into());
        let credentials: [&dyn Fn(&mut NatsSettings); 3] = [&token, &user, &creds];
        for add in credentials {
            // Loopback: the traffic stays on the host.
            for server in [
                "nats://127.0.0.1:4222",
                "127.0.0.2:4222",
                "nats://[::1]:4222",
                "nats://localhost:4222",
                "ws://LOCALHOST:8080",
            ] {
                let mut options = options(&[server]);
                add(&mut options);
                assert_eq!(
                    options.check(),
                    Ok(Transport::LoopbackPlaintext),
                    "{server}"
                );
            }
            // TLS, by scheme or forced by a CA or a client certificate.
            for (servers, ca) in [
                (
                    &["tls://nats.internal:4222", "wss://nats.internal:443"][..],
                    false,
                ),
                (&["nats://nats.internal:4222", "nats-2.internal"][..], true),
            ] {
                let mut options = options(servers);
                add(&mut options);
                if ca {
                    options.tls.ca_file = Some("/ca.pem".into());
                }
                assert_eq!(options.check(), Ok(Transport::Tls), "{servers:?}");
            }
            // One server in plain text on the network is one too many.
            let mut options = options(&[
                "tls://nats-1.internal:4222",
                "nats://nats-2.internal:4222",
                "nats://127.0.0.1:4222",
            ]);
            add(&mut options);
            let error = options.check().unwrap_err();
            assert_eq!(
                error,
                NatsOptionsError::PlaintextCredentials {
                    servers: "nats://nats-2.internal:4222".into()
                }
            );
            let text = error.to_string();
            assert!(text.contains("--nats-allow-plaintext"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
            options.allow_plaintext = true;
            assert!(matches!(options.check(), Ok(Transport::Plaintext { .. })));
        }
        // Credentials in a URL count as credentials, and are blanked.
        let mut options = options(&["nats://gateway:hunter2@10.0.0.7:4222"]);
        assert_eq!(
            options.check(),
            Err(NatsOptionsError::PlaintextCredentials {
                servers: "nats://***@10.0.0.7:4222".into()
            })
        );
        options.servers = vec!["nats://token-hunter2@10.0.0.7:4222".into()];
        assert!(options.check().is_err());
        // Plain text without credentials is allowed (with a warning at connection), as is a
        // name that only resolves to loopback: names other than `localhost` are not resolved.
        for server in [
            "nats://10.0.0.7:4222",
            "nats://nats.internal:4222",
            "ws://[::ffff:10.0.0.1]:80",
        ] {
            assert!(
                matches!(options_check(server), Ok(Transport::Plaintext { .. })),
                "{server}"
            );
        }
        assert_eq!(
            options_check("nats://[::ffff:127.0.0.1]:4222"),
            Ok(Transport::LoopbackPlaintext)
        );
    }

    fn options_check(server: &str) -> Result<Transport, NatsOptionsError> {
        options(&[server]).check()
    }

    #[test]
    fn credentials_in_server_urls_are_not_shown() {
        let servers = [
            "nats://gateway:s3cret@nats-1:4222".to_owned(),
            "tls://token@nats-2:4222".to_owned(),
            "nats-3:4222".to_owned(),
        ];
        assert_eq!(
            redacted_servers(&servers),
            "nats://***@nats-1:4222,tls://***@nats-2:4222,nats-3:4222"
        );
    }
}
