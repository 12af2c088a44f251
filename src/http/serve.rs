//! The public listener's accept loop: hyper's HTTP/1.1 and HTTP/2 server over the router, with
//! what the internet requires on top.
//!
//! - **Timeouts.** A connection must deliver each request head within the header read timeout
//!   (the first from the moment it is accepted), each request must finish within the request
//!   timeout, and an idle kept-alive connection is closed after the idle timeout. A watchdog per
//!   connection enforces them for both protocols, whatever state the connection is in.
//! - **A connection limit that spares Incode.** At the limit, a new connection closes another
//!   first, chosen so that the slow, idle and unauthenticated go before anyone who has proven
//!   who they are: a connection becomes *authenticated* once a request on it passes the webhook
//!   guard or obtains a token. Only when every connection is busy with an authenticated request
//!   is the newcomer refused.
//! - **Graceful shutdown.** When `shutdown` fires, the loop stops accepting, asks every
//!   connection to finish (HTTP/1.1 closes once idle, HTTP/2 sends GOAWAY) and returns when all
//!   have. The caller bounds the wait: when it fires `give_up`, every request still in flight is
//!   answered `503` at once (so a webhook waiting for the log is told to retry, not left without
//!   an answer), and its connection then closes.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderValue, Request, Response, Version, header},
    response::IntoResponse,
};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{
    ClientAddress, TrustedProxies,
    error::ListenerError,
    rejections::{Rejection, RejectionLog},
};

/// Largest HTTP/1.1 request head (request line and headers), and HTTP/2 header list, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in an HTTP/1.1 request.
const MAX_HEADERS: usize = 64;
/// HTTP/2 flow control: what one stream, and one connection, may have in flight unread.
const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// HTTP/2 keep-alive: a PING after this much silence, and the connection closed when it is not
/// answered in time.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Least time between two warnings that the connection limit is reached.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The timeouts and limits of the public listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// Time to deliver a complete request head.
    pub header_read_timeout: Duration,
    /// Time for one request once its head is in (body and answer).
    pub request_timeout: Duration,
    /// Time a connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
}

/// A handle on the connection a request came in on, in the request's extensions.
#[derive(Clone)]
pub(crate) struct ConnectionHandle(Arc<Connection>);

impl ConnectionHandle {
    /// Records that a request on this connection authenticated: it is closed for room last.
    pub(crate) fn mark_authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Relaxed);
    }
}

/// "Not set" for the millisecond timestamps below.
const NEVER: u64 = u64::MAX;

/// One open connection, as the watchdog and the limit see it.
struct Connection {
    id: u64,
    accepted_at: Instant,
    /// Requests being processed now.
    in_flight: AtomicUsize,
    /// Requests answered so far.
    answered: AtomicU64,
    authenticated: AtomicBool,
    http2: AtomicBool,
    /// Milliseconds after `accepted_at` at which the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds after `accepted_at` at which the first byte of the next request head came,
    /// while idle; [`NEVER`] when none has.
    head_started: AtomicU64,
    /// Woken when a deadline may have moved.
    changed: Notify,
    /// Cancelled to close the connection at once.
    close: CancellationToken,
}

impl Connection {
    fn new(id: u64) -> Self {
        Self {
            id,
            accepted_at: Instant::now(),
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            authenticated: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NEVER),
            changed: Notify::new(),
            close: CancellationToken::new(),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.accepted_at.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.accepted_at + Duration::from_millis(millis)
    }

    fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When the connection must have made progress, or `None` while a request is in flight (the
    /// request timeout covers that).
    fn deadline(&self, limits: &ListenerSettings) -> Option<Instant> {
        if self.is_busy() {
            return None;
        }
        if self.answered.load(Ordering::Acquire) == 0 {
            return Some(self.accepted_at + limits.header_read_timeout);
        }
        let head_started = self.head_started.load(Ordering::Acquire);
        if head_started != NEVER && !self.http2.load(Ordering::Relaxed) {
            return Some(self.at(head_started) + limits.header_read_timeout);
        }
        Some(self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout)
    }

    /// Bytes arrived: if the connection was idle, a request head has started.
    fn on_read(&self) {
        if !self.is_busy()
            && self.answered.load(Ordering::Relaxed) > 0
            && self.head_started.load(Ordering::Relaxed) == NEVER
        {
            self.head_started.store(self.millis(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        // No wake-up: a busy connection has no deadline, and a timer that fires meanwhile finds
        // none and is set again when the request ends.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How readily this connection is closed to make room: lower goes first; `None` never.
    fn eviction_rank(&self) -> Option<(u8, Instant)> {
        let busy = self.is_busy();
        match (self.authenticated.load(Ordering::Relaxed), busy) {
            // Oldest first: a slow client has had the longest.
            (false, false) => Some((0, self.accepted_at)),
            (false, true) => Some((1, self.accepted_at)),
            // Longest idle first.
            (true, false) => Some((2, self.at(self.idle_since.load(Ordering::Relaxed)))),
            (true, true) => None,
        }
    }
}

/// A request in flight on a connection; when dropped, the connection may be idle again.
struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let connection = &self.0;
        connection.answered.fetch_add(1, Ordering::AcqRel);
        if connection.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            connection
                .idle_since
                .store(connection.millis(), Ordering::Release);
            connection.head_started.store(NEVER, Ordering::Release);
        }
        connection.changed.notify_one();
    }
}

/// What every connection task shares.
struct Shared {
    app: Router,
    limits: ListenerSettings,
    proxies: TrustedProxies,
    builder: auto::Builder<TokioExecutor>,
    shutdown: CancellationToken,
    give_up: CancellationToken,
    registry: Mutex<Registry>,
    /// The refusals the listener answers itself, outside the router (see [`timed_out`]).
    rejections: RejectionLog,
}

struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
    last_warning: Option<Instant>,
    closed_for_room: u64,
    refused: u64,
}

impl Shared {
    /// Registers a new connection, closing another first at the limit; `None` if it must be
    /// refused.
    fn admit(&self) -> Option<Arc<Connection>> {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.open.len() >= self.limits.max_connections {
            let victim = registry
                .open
                .values()
                .filter_map(|connection| Some((connection.eviction_rank()?, connection.id)))
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, id)| id);
            let made_room = match victim.and_then(|id| registry.open.remove(&id)) {
                Some(victim) => {
                    victim.close.cancel();
                    registry.closed_for_room += 1;
                    true
                }
                None => {
                    registry.refused += 1;
                    false
                }
            };
            let now = Instant::now();
            if registry
                .last_warning
                .is_none_or(|last| now.duration_since(last) >= LIMIT_WARNING_INTERVAL)
            {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    closed_for_room = registry.closed_for_room,
                    refused = registry.refused,
                    "the public listener is at its connection limit; closing unauthenticated and idle connections first"
                );
                registry.last_warning = Some(now);
                registry.closed_for_room = 0;
                registry.refused = 0;
            }
            if !made_room {
                return None;
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let connection = Arc::new(Connection::new(id));
        registry.open.insert(id, connection.clone());
        Some(connection)
    }

    fn forget(&self, connection: &Connection) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .remove(&connection.id);
    }
}

/// Serves `app` on `listener` until `shutdown` fires and every connection has finished. Once
/// `give_up` fires too, the requests still in flight are answered `503` and their connections
/// closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerSettings,
    proxies: TrustedProxies,
    shutdown: CancellationToken,
    give_up: CancellationToken,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        app,
        limits,
        proxies,
        builder: builder(&limits),
        shutdown: shutdown.clone(),
        give_up,
        rejections: RejectionLog::default(),
        registry: Mutex::new(Registry {
            next_id: 0,
            open: HashMap::new(),
            last_warning: None,
            closed_for_room: 0,
            refused: 0,
        }),
    });
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Refused: dropping the stream closes it.
                    if let Some(connection) = shared.admit() {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve_connection(stream, peer, connection, shared.clone()));
                    }
                }
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::error!(%error, "the public listener cannot accept connections");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn builder(limits: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // The watchdog times heads from the first byte; hyper's own timer would also run while
        // the connection is idle.
        .header_read_timeout(None)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX))
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    builder
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    connection: Arc<Connection>,
    shared: Arc<Shared>,
) {
    let io = TokioIo::new(Watched {
        inner: stream,
        connection: connection.clone(),
    });
    let service = ConnectionService {
        shared: shared.clone(),
        connection: connection.clone(),
        peer,
        // A child per connection, so that its requests' waits touch nothing other connections
        // contend on.
        give_up: shared.give_up.child_token(),
    };
    let served = shared.builder.serve_connection(io, service);
    tokio::pin!(served);
    // The watchers are made once and polled in place: `select!` polls every branch whenever the
    // connection's I/O wakes the task, so each must be cheap to poll and touch nothing other
    // connections contend on (hence a child of the shutdown token, not the shared token itself).
    let shutdown = shared.shutdown.child_token();
    let shutdown_requested = shutdown.cancelled();
    let closed = connection.close.cancelled();
    let changed = connection.changed.notified();
    let mut deadline = connection.deadline(&shared.limits);
    let expired = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
    tokio::pin!(shutdown_requested, closed, changed, expired);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "public connection ended with an error");
                }
                break;
            }
            () = &mut closed => {
                tracing::debug!(%peer, "public connection closed to make room");
                break;
            }
            () = &mut shutdown_requested, if !draining => {
                // Nothing in flight: nothing to lose, and a half-sent head must not hold up
                // the shutdown. Otherwise finish what is in flight (HTTP/2: GOAWAY), then close.
                if !connection.is_busy() {
                    break;
                }
                served.as_mut().graceful_shutdown();
                draining = true;
            }
            () = &mut changed => changed.set(connection.changed.notified()),
            () = &mut expired, if deadline.is_some() => {
                if connection.deadline(&shared.limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "public connection timed out");
                    break;
                }
            }
        }
        let now_due = connection.deadline(&shared.limits);
        if let Some(at) = now_due
            && (now_due != deadline || expired.is_elapsed())
        {
            expired.as_mut().reset(at.into());
        }
        deadline = now_due;
    }
    shared.forget(&connection);
}

/// The TCP stream, telling the watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    connection: Arc<Connection>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.connection.on_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router as hyper calls it for one connection: adds the peer, the client's address and
/// the connection handle to each request, and bounds its time.
#[derive(Clone)]
struct ConnectionService {
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    peer: SocketAddr,
    give_up: CancellationToken,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let version = request.version();
        let in_flight = self.connection.request_started(version == Version::HTTP_2);
        let client = self
            .shared
            .proxies
            .client_address(self.peer.ip(), request.headers());
        let body_done = Arc::new(AtomicBool::new(false));
        let mut request = request.map(|body| {
            Body::new(WatchedBody {
                inner: body,
                done: body_done.clone(),
            })
        });
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(self.peer));
        extensions.insert(ClientAddress(client));
        extensions.insert(ConnectionHandle(self.connection.clone()));
        let shared = self.shared.clone();
        let timeout = self.shared.limits.request_timeout;
        let give_up = self.give_up.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            tokio::select! {
                // An answer ready at the deadline is given: it may be a `200`.
                biased;
                answer = tokio::time::timeout(timeout, shared.app.clone().oneshot(request)) => {
                    match answer {
                        Ok(answer) => answer,
                        Err(_) => {
                            let mut answer = timed_out(body_done.load(Ordering::Acquire), version);
                            if let Some(rejection) = answer.extensions_mut().remove::<Rejection>() {
                                shared.rejections.record(&rejection, Some(client));
                            }
                            Ok(answer)
                        }
                    }
                }
                // Dropping the handler drops its append: whether the log stored the
                // notification is unknown, and Incode's retry is deduplicated.
                () = give_up.cancelled() => Ok(closing(ListenerError::ShuttingDown, version)),
            }
        })
    }
}

/// The answer to a request that ran out of time: 408 if its body never fully arrived, else 503
/// (the gateway was too slow; whether it stored the notification is unknown, and Incode's retry
/// is deduplicated). The connection is closed after it.
fn timed_out(body_done: bool, version: Version) -> Response<Body> {
    let error = if body_done {
        tracing::warn!("a request took longer than the request timeout to answer");
        ListenerError::AnswerTimeout
    } else {
        ListenerError::BodyTimeout
    };
    closing(error, version)
}

/// The answer for `error`, after which the connection is closed.
fn closing(error: ListenerError, version: Version) -> Response<Body> {
    let mut response = error.into_response();
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to the end.
struct WatchedBody {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
