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
mod settings;
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
use reader::NatsReader;
pub use settings::{NatsAuth, NatsOptionsError, NatsSettings, NatsTls, Transport};
use settings::{redacted_servers, validate};
pub use stream_config::StreamMismatch;

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
mod tests;
