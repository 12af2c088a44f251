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
pub struct NatsOptions {
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
}

impl NatsOptions {
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
        }
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

/// Why the NATS log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsOpenError {
    /// The options are not usable.
    #[error("{0}")]
    Options(String),
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
    pub async fn connect(options: NatsOptions) -> Result<Self, NatsOpenError> {
        validate(&options)?;
        let client = connect(&options).await?;
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

fn validate(options: &NatsOptions) -> Result<(), NatsOpenError> {
    let invalid = |message: String| Err(NatsOpenError::Options(message));
    if options.servers.is_empty() {
        return invalid("no NATS server is configured (--nats-url)".to_owned());
    }
    let name_ok = !options.stream.is_empty()
        && options.stream.len() <= 64
        && options
            .stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !name_ok {
        return invalid(format!(
            "--nats-stream `{}` must be 1 to 64 ASCII letters, digits, '-' or '_'",
            options.stream
        ));
    }
    if !(1..=5).contains(&options.replicas) {
        return invalid(format!(
            "--nats-replicas must be between 1 and 5 (JetStream's limit), not {}",
            options.replicas
        ));
    }
    if options.dedup_window > options.retention {
        return invalid(format!(
            "--dedup-window ({}) must not be longer than --retention ({}): JetStream keeps message ids only while it keeps the messages",
            humantime::format_duration(options.dedup_window),
            humantime::format_duration(options.retention)
        ));
    }
    let auth = &options.auth;
    let methods = [
        auth.credentials_file.is_some(),
        auth.user.is_some() || auth.password.is_some(),
        auth.token.is_some(),
    ];
    if methods.iter().filter(|&&set| set).count() > 1 {
        return invalid(
            "give one NATS authentication: --nats-credentials, --nats-user with --nats-password, or --nats-token"
                .to_owned(),
        );
    }
    if auth.user.is_some() != auth.password.is_some() {
        return invalid("--nats-user and --nats-password go together".to_owned());
    }
    if options.tls.cert_file.is_some() != options.tls.key_file.is_some() {
        return invalid("--nats-tls-cert and --nats-tls-key go together".to_owned());
    }
    Ok(())
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

async fn connect(options: &NatsOptions) -> Result<async_nats::Client, NatsOpenError> {
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
