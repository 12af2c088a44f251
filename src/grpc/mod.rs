//! The internal listener: `EventStreamService`, `grpc.health.v1.Health`, server reflection and
//! `GET /metrics`. Never exposed to the internet.
//!
//! - [`access`]: who may call what (the guard in front of every route, and the checks the rpcs
//!   make).
//! - [`identity`]: the configured subscribers, their tokens and consumer patterns, and the
//!   names of client certificates.
//! - [`tls`]: TLS and mutual TLS, reloaded when the files change or on SIGHUP.
//!
//! The subscribers ([`SubscriberReloader`]) and the TLS files can change while the listener
//! runs; everything else is fixed at start-up.
//! - `incoming`: the accept loops (TCP, then TLS handshakes).

pub mod access;
mod encoded;
mod error;
mod event_stream;
pub mod identity;
mod incoming;
pub mod tls;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use encoded::EncodedResponse;
pub use event_stream::{EventStream, Sources};

use encoded::server::event_stream_service_server::EventStreamServiceServer;

use self::{
    access::{Access, CurrentAccess, GuardState},
    identity::{SubscriberConfigError, SubscriberSettings, Subscribers},
    tls::{ReloadingTls, TlsError, TlsFiles},
};
use crate::{
    log::{Readiness, ReadyState},
    metrics::Metrics,
    proto::v1,
};

/// Settings of the internal listener.
#[derive(Debug, Clone, Copy)]
pub struct GrpcSettings {
    /// Longest silence on a subscription before a heartbeat.
    pub heartbeat_interval: Duration,
    /// Whether to create a span for every event delivered (only worth it when traces are
    /// exported).
    pub trace_deliveries: bool,
    /// Transport limits.
    pub limits: TransportSettings,
}

/// HTTP/2 and TCP limits of the internal listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    /// Most concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 keepalive PINGs; `None`: none sent.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a keepalive PING may stay unanswered.
    pub http2_keepalive_timeout: Duration,
    /// Idle time before TCP keepalive probes; `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
}

/// Who may use the internal listener, and its TLS, as configured.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    /// PEM certificate chain of the listener (`--internal-tls-cert`); with `tls_key`, TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that sign subscribers' client certificates: mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Whether a non-loopback listener may start with nothing authenticating subscribers.
    pub allow_unauthenticated_subscribers: bool,
    /// Whether callers without credentials may read the plain stream while subscribers are
    /// configured.
    pub allow_anonymous_reads: bool,
    /// The subscriber identities.
    pub subscribers: Vec<SubscriberSettings>,
}

/// Who may use the internal listener, and its TLS: checked and loaded at start-up.
#[derive(Debug)]
pub struct Security {
    access: Arc<CurrentAccess>,
    rules: AccessRules,
    tls: Option<Arc<ReloadingTls>>,
    reload_interval: Duration,
}

/// What decides, besides the subscribers, whether an access policy is acceptable: settings that
/// only change with a restart.
#[derive(Debug, Clone, Copy)]
struct AccessRules {
    /// The address the listener is bound to.
    bound: SocketAddr,
    /// Mutual TLS (`--internal-client-ca`).
    mutual: bool,
    /// Whether the listener speaks TLS.
    tls: bool,
    /// `--allow-anonymous-reads`.
    anonymous_reads: bool,
    /// `--allow-unauthenticated-subscribers`.
    allow_unauthenticated: bool,
}

impl AccessRules {
    /// The policy over `subscribers`, refused when nothing could authenticate one of them, or
    /// when it would leave a non-loopback listener open without that being allowed.
    fn policy(&self, subscribers: Subscribers) -> Result<Access, SetupError> {
        if let Some(subscriber) = subscribers
            .iter()
            .find(|subscriber| !subscriber.has_tokens() && !self.mutual)
        {
            return Err(SetupError::SubscriberCannotAuthenticate {
                name: subscriber.name().to_owned(),
            });
        }
        if self.anonymous_reads && self.mutual {
            return Err(SetupError::AnonymousReadsWithMutualTls);
        }
        let access = Access::new(subscribers, self.mutual, self.anonymous_reads);
        if !is_loopback(self.bound.ip())
            && !access.authenticates_subscribers()
            && !self.allow_unauthenticated
        {
            return Err(SetupError::UnauthenticatedSubscribers { addr: self.bound });
        }
        Ok(access)
    }

    /// Says what is weak about `access` (allowed, but worth knowing), and what it is.
    fn log(&self, access: &Access) {
        let loopback = is_loopback(self.bound.ip());
        if !access.is_enforced() && !loopback {
            tracing::warn!(
                internal = %self.bound,
                "SUBSCRIBERS ARE NOT AUTHENTICATED: anyone who can reach the internal listener can \
                 read every event and move any durable consumer. Configure mutual TLS or \
                 [[subscribers]] tokens before exposing it"
            );
        }
        if access.allows_anonymous_reads() {
            if access.is_enforced() {
                tracing::warn!(
                    "--allow-anonymous-reads: callers without credentials can read every event"
                );
            } else {
                tracing::warn!(
                    "--allow-anonymous-reads has no effect: no [[subscribers]] are configured, so \
                     nothing is restricted"
                );
            }
        }
        if access.subscribers().any_tokens() && !self.tls && !loopback {
            tracing::warn!(
                "subscriber tokens travel in clear text on {}: configure --internal-tls-cert \
                 and --internal-tls-key unless the network encrypts the traffic",
                self.bound
            );
        }
        tracing::info!(
            subscribers = access.subscribers().len(),
            tls = self.tls,
            mutual_tls = self.mutual,
            anonymous_reads = access.allows_anonymous_reads(),
            enforced = access.is_enforced(),
            "internal listener access configured"
        );
    }
}

/// Replaces the internal listener's subscribers while it runs, under the rules it started with.
#[derive(Debug, Clone)]
pub struct SubscriberReloader {
    current: Arc<CurrentAccess>,
    rules: AccessRules,
}

impl SubscriberReloader {
    /// The policy these subscribers make, checked as at start-up; nothing changes yet.
    pub fn prepare(&self, subscribers: &[SubscriberSettings]) -> Result<Access, SetupError> {
        self.rules.policy(Subscribers::new(subscribers)?)
    }

    /// Puts `access` (from [`SubscriberReloader::prepare`]) in force for every new call.
    pub fn install(&self, access: Access) {
        self.rules.log(&access);
        self.current.replace(access);
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Access> {
        self.current.load()
    }
}

/// Why the internal listener's security settings are not usable. Messages never show a token
/// or key.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A `[[subscribers]]` entry is not usable.
    #[error(transparent)]
    Subscribers(#[from] SubscriberConfigError),
    /// The TLS files are not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Half a TLS identity.
    #[error("--internal-tls-cert and --internal-tls-key go together; {missing} is not set")]
    HalfTlsIdentity {
        /// The flag that is missing.
        missing: &'static str,
    },
    /// Mutual TLS without TLS.
    #[error("--internal-client-ca needs TLS: set --internal-tls-cert and --internal-tls-key too")]
    ClientCaWithoutTls,
    /// A subscriber nothing can authenticate.
    #[error(
        "subscriber `{name}` can never authenticate: give it `tokens`, or turn on mutual TLS \
         (--internal-client-ca) so that its client certificate names it"
    )]
    SubscriberCannotAuthenticate {
        /// The subscriber.
        name: String,
    },
    /// Anonymous reads where every caller needs a certificate.
    #[error(
        "--allow-anonymous-reads cannot work with mutual TLS (--internal-client-ca): every \
         caller needs a client certificate there; drop one of the two"
    )]
    AnonymousReadsWithMutualTls,
    /// Open on a non-loopback address without an explicit allowance.
    #[error(
        "the internal listener is on {addr}, which is not a loopback address, and nothing \
         authenticates subscribers: anyone who can reach it could read every event (personal \
         data) and move any durable consumer. Authenticate subscribers with mutual TLS \
         (--internal-tls-cert, --internal-tls-key and --internal-client-ca) or with tokens \
         ([[subscribers]] entries with `tokens` in the --config file), bind to loopback \
         (--internal-addr 127.0.0.1:50051), or pass --allow-unauthenticated-subscribers to \
         accept subscribers from anyone"
    )]
    UnauthenticatedSubscribers {
        /// The listener's address.
        addr: SocketAddr,
    },
}

impl Security {
    /// Checks `settings` for the internal listener bound at `bound`, and loads its TLS files.
    /// Refuses a listener that anyone on the network could use, unless that was explicitly
    /// allowed.
    pub fn new(settings: SecuritySettings, bound: SocketAddr) -> Result<Self, SetupError> {
        let subscribers = Subscribers::new(&settings.subscribers)?;
        let files = match (settings.tls_cert, settings.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: settings.client_ca.clone(),
            }),
            (Some(_), None) => {
                return Err(SetupError::HalfTlsIdentity {
                    missing: "--internal-tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(SetupError::HalfTlsIdentity {
                    missing: "--internal-tls-cert",
                });
            }
            (None, None) if settings.client_ca.is_some() => {
                return Err(SetupError::ClientCaWithoutTls);
            }
            (None, None) => None,
        };
        let rules = AccessRules {
            bound,
            mutual: settings.client_ca.is_some(),
            tls: files.is_some(),
            anonymous_reads: settings.allow_anonymous_reads,
            allow_unauthenticated: settings.allow_unauthenticated_subscribers,
        };
        let access = rules.policy(subscribers)?;
        let tls = files.map(ReloadingTls::load).transpose()?.map(Arc::new);
        rules.log(&access);
        Ok(Self {
            access: Arc::new(CurrentAccess::new(access)),
            rules,
            tls,
            reload_interval: settings.tls_reload_interval,
        })
    }

    /// What replaces the subscribers while the listener runs.
    pub fn subscriber_reloader(&self) -> SubscriberReloader {
        SubscriberReloader {
            current: self.access.clone(),
            rules: self.rules,
        }
    }

    /// The listener's TLS, when it has some.
    pub fn tls(&self) -> Option<Arc<ReloadingTls>> {
        self.tls.clone()
    }
}

/// Whether `ip` is a loopback address (an IPv4-mapped one too).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Serves the internal API on `listener` until `shutdown` is cancelled: gRPC (HTTP/2) and
/// `GET /metrics` (Prometheus text, HTTP/1.1 or HTTP/2), over TLS when configured, every route
/// but health behind the access guard. Subscription streams end on shutdown, so the server can
/// drain.
pub fn serve(
    listener: TcpListener,
    sources: Sources,
    settings: GrpcSettings,
    security: Security,
    shutdown: CancellationToken,
) -> Result<
    impl Future<Output = Result<(), tonic::transport::Error>>,
    tonic_reflection::server::Error,
> {
    let limits = settings.limits;
    // Reflection in both protocol versions: `v1`, and `v1alpha`, the only one older tools and
    // Python's grpcio-reflection speak.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(limits.max_message_bytes);
    let reflection = reflection()
        .build_v1()?
        .max_decoding_message_size(limits.max_message_bytes);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = sources.readiness.clone();
    let metrics = sources.metrics.clone();
    let health_service = health_service.max_decoding_message_size(limits.max_message_bytes);
    let event_stream =
        EventStreamServiceServer::new(EventStream::new(sources, settings, shutdown.clone()))
            .max_decoding_message_size(limits.max_message_bytes);
    let guard = GuardState {
        access: security.access.clone(),
        metrics: metrics.clone(),
    };
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(event_stream)
        .into_axum_router()
        .route("/metrics", get(render_metrics).with_state(metrics))
        .layer(axum::middleware::from_fn_with_state(guard, access::guard));

    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(limits.http2_keepalive_interval)
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .add_routes(Routes::from(routes));
    let tcp = incoming::tcp(listener, limits.tcp_keepalive);
    Ok(async move {
        // Serving from the start, as the log was open; the readiness task follows it from here.
        health_reporter
            .set_serving::<EventStreamServiceServer<EventStream>>()
            .await;
        tokio::spawn(report_readiness(
            readiness,
            health_reporter,
            shutdown.clone(),
        ));
        let stopped = shutdown.clone().cancelled_owned();
        match security.tls {
            Some(tls) => {
                tokio::spawn(tls::watch(
                    tls.clone(),
                    security.reload_interval,
                    shutdown.clone(),
                ));
                let incoming = incoming::tls(tcp, tls, shutdown);
                server.serve_with_incoming_shutdown(incoming, stopped).await
            }
            None => {
                server
                    .serve_with_incoming_shutdown(incoming::plain(tcp), stopped)
                    .await
            }
        }
    })
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render_prometheus(),
    )
}

/// Keeps `grpc.health.v1` in step with the event log's readiness: `SERVING` while it can take
/// events, `NOT_SERVING` while it cannot (a failing disk, NATS unreachable or without a stream
/// leader).
async fn report_readiness(
    mut readiness: Readiness,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    // `serve` reported SERVING before anyone could ask.
    let mut serving = true;
    let mut state = readiness.current();
    loop {
        let ready = state == ReadyState::Ready;
        if ready != serving {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            if ready {
                reporter
                    .set_serving::<EventStreamServiceServer<EventStream>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<EventStreamServiceServer<EventStream>>()
                    .await;
            }
            serving = ready;
        }
        state = tokio::select! {
            () = shutdown.cancelled() => return,
            changed = readiness.changed() => match changed {
                Some(state) => state,
                None => return,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for (ip, expected) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("0.0.0.0", false),
            ("::", false),
            ("10.0.0.1", false),
            ("::ffff:10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(ip.parse().unwrap()), expected, "{ip}");
        }
    }
}
