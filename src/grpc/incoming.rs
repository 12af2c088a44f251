//! The accept loops of the internal listener: TCP connections with the listener's socket
//! options, and on top of them TLS handshakes, each in its own task with a deadline so that a
//! slow or silent client holds up nobody.
//!
//! Neither stream ever yields an error: tonic's server stops serving on an accept error it
//! does not consider transient (running out of file descriptors, for one), so failures are
//! logged here, with a short pause when the listener itself fails, and accepting goes on.

use std::{convert::Infallible, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tokio::{net::TcpListener, net::TcpStream, sync::mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use super::tls::ReloadingTls;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after the listener fails to accept (e.g. out of file descriptors), so that the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepted TCP connections, with `TCP_NODELAY` and TCP keepalive (`None`: off).
pub fn tcp(
    listener: TcpListener,
    keepalive: Option<Duration>,
) -> impl Stream<Item = TcpStream> + Send + 'static {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(keepalive)
        .filter_map(|accepted| async move {
            match accepted {
                Ok(stream) => Some(stream),
                Err(error) => {
                    if !is_transient(&error) {
                        tracing::warn!(%error, "the internal listener cannot accept connections");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    None
                }
            }
        })
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | BrokenPipe | Interrupted | WouldBlock | TimedOut
    )
}

/// Plain connections, in the shape tonic serves.
pub fn plain(
    tcp: impl Stream<Item = TcpStream> + Send + 'static,
) -> impl Stream<Item = Result<TcpStream, Infallible>> + Send + 'static {
    tcp.map(Ok)
}

/// TLS connections: every TCP connection is handshaken with the configuration current at its
/// accept. Connections that fail the handshake (a plaintext client, an untrusted client
/// certificate, a timeout) are logged and closed. Stops accepting when `shutdown` is cancelled,
/// closing the listening socket.
pub fn tls(
    tcp: impl Stream<Item = TcpStream> + Send + 'static,
    tls: Arc<ReloadingTls>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, Infallible>> + Send + 'static {
    // Handshaken connections wait here until the server takes them.
    let (ready, connections) = mpsc::channel::<TlsStream<TcpStream>>(64);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                () = ready.closed() => return,
                stream = tcp.next() => match stream {
                    Some(stream) => stream,
                    None => return,
                },
            };
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(connection)) => {
                        // Fails only when the server stopped: the connection is dropped.
                        let _ = ready.send(connection).await;
                    }
                    Ok(Err(error)) => tracing::info!(
                        peer = peer.map(tracing::field::display),
                        %error,
                        "TLS handshake on the internal listener failed"
                    ),
                    Err(_) => tracing::info!(
                        peer = peer.map(tracing::field::display),
                        timeout = ?HANDSHAKE_TIMEOUT,
                        "TLS handshake on the internal listener timed out"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(connections).map(Ok)
}
