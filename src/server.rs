//! Wires the event log and both listeners together, and takes them down in order.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Auth, AuthSetupError},
    config::{Config, StorageKind},
    error::error_chain,
    grpc::{self, GrpcSettings, Security, SetupError},
    http::{self, AppState, HttpSettings},
    log::{
        EmbeddedLog, MemoryLog, NatsLog, Readiness, Storage, embedded::OpenError,
        nats::NatsOpenError, readiness,
    },
    metrics::{Metrics, MetricsError},
    subscriptions::{Cursors, Quota, groups::Groups},
    telemetry,
};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The authentication settings are not usable (or leave the webhooks open).
    #[error("the authentication settings are not usable")]
    Auth(#[from] AuthSetupError),
    /// The internal listener's TLS or subscriber settings are not usable, or leave it open on
    /// the network.
    #[error("the internal listener settings are not usable")]
    InternalListener(#[from] SetupError),
    /// The internal listener's address could not be read.
    #[error("cannot read the internal listener's address")]
    InternalAddr(#[source] std::io::Error),
    /// The embedded event log could not be opened.
    #[error("could not open the event log")]
    OpenEmbedded(#[from] OpenError),
    /// The NATS event log could not be opened.
    #[error("could not open the event log on NATS JetStream")]
    OpenNats(#[from] NatsOpenError),
    /// Metrics could not be set up.
    #[error("could not set up metrics")]
    Metrics(#[from] MetricsError),
    /// The gRPC reflection service could not be built.
    #[error("could not build the gRPC reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The public listener failed.
    #[error("the public listener failed")]
    Http(#[source] std::io::Error),
    /// The internal listener failed.
    #[error("the internal listener failed")]
    Grpc(#[source] tonic::transport::Error),
}

/// How long the `503` answers given at the shutdown deadline have to go out: they are small, and
/// a peer that does not read its answer is not waited for.
const LAST_ANSWERS: Duration = Duration::from_secs(1);

/// Opens the storage the configuration asks for.
pub async fn open_storage(config: &Config) -> Result<Storage, ServerError> {
    Ok(match config.storage {
        StorageKind::Embedded => Storage::new(Arc::new(EmbeddedLog::open(
            &config.data_dir,
            config.embedded_log_options(),
        )?)),
        StorageKind::Nats => {
            Storage::new(Arc::new(NatsLog::connect(config.nats_log_options()).await?))
        }
        StorageKind::Memory => {
            tracing::warn!("storage is in memory: events are lost when the gateway stops");
            Storage::new(Arc::new(MemoryLog::new(config.memory_log_options())))
        }
    })
}

/// Runs the gateway on the given listeners until `shutdown` completes, then stops accepting,
/// ends subscription streams, lets in-flight requests finish (for at most
/// `config.shutdown_timeout`) and closes the log.
pub async fn run(
    config: Config,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // Configuration mistakes are reported before anything touches the disk.
    let auth = Arc::new(Auth::from_config(&config)?);
    let security = internal_security(&config, &internal)?;
    let storage = open_storage(&config).await?;
    serve(config, auth, security, storage, public, internal, shutdown).await
}

/// [`run`] over already opened storage.
pub async fn run_with_storage(
    config: Config,
    storage: Storage,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let auth = Arc::new(Auth::from_config(&config)?);
    let security = internal_security(&config, &internal)?;
    serve(config, auth, security, storage, public, internal, shutdown).await
}

/// The internal listener's access policy and TLS, checked against the address it is bound to.
fn internal_security(config: &Config, internal: &TcpListener) -> Result<Security, ServerError> {
    let bound = internal.local_addr().map_err(ServerError::InternalAddr)?;
    Ok(Security::from_config(config, bound)?)
}

async fn serve(
    config: Config,
    auth: Arc<Auth>,
    security: Security,
    storage: Storage,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let log = storage.log;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    if let (Ok(public), Ok(internal)) = (public.local_addr(), internal.local_addr()) {
        tracing::info!(%public, %internal, "incode-gateway listening");
    }

    let metrics = Metrics::new(log.clone(), telemetry::otlp_metrics_enabled())?;
    let readiness = Readiness::spawn(log.clone(), readiness::CHECK_INTERVAL, token.clone());
    let app = http::app(
        AppState::new(log.clone(), readiness.clone(), auth, metrics.clone()),
        HttpSettings {
            max_body_bytes: config.max_body_bytes,
            trust_incoming_trace_context: config.public_listener.trust_incoming_trace_context,
        },
    );
    let give_up = CancellationToken::new();
    let http = http::serve(
        public,
        app,
        config.public_listener.limits(),
        config.public_listener.trusted_proxies(),
        token.clone(),
        give_up.clone(),
    );
    // Consumers and groups share one namespace, so one quota bounds both.
    let quota = Quota::new(storage.state.clone(), config.consumer_limits());
    let cursors = Cursors::new(storage.state.clone(), quota.clone());
    let groups = Groups::new(
        storage.state.clone(),
        log.clone(),
        config.group_settings(),
        quota,
        metrics.clone(),
    );
    let grpc = grpc::serve(
        internal,
        grpc::Sources {
            log: log.clone(),
            cursors,
            groups,
            metrics: metrics.clone(),
            readiness,
        },
        GrpcSettings::from_config(&config, telemetry::traces_enabled()),
        security,
        token.clone(),
    )?;

    let http = async { http.await.map_err(ServerError::Http) };
    let grpc = async { grpc.await.map_err(ServerError::Grpc) };
    let servers = async { tokio::try_join!(http, grpc) };
    tokio::pin!(servers);
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    let result = tokio::select! {
        result = &mut servers => result.map(|_| ()),
        () = deadline => {
            tracing::warn!(timeout = ?config.shutdown_timeout, "in-flight work did not finish in time; answering what is left 503 and stopping");
            // Dropping the listeners now would close the connections of webhooks in flight
            // without an answer. Incode's contract retries after a timeout or an answer other
            // than 200, and a closed connection is neither: they are answered 503 first.
            give_up.cancel();
            match tokio::time::timeout(LAST_ANSWERS, &mut servers).await {
                Ok(result) => result.map(|_| ()),
                Err(_) => Ok(()),
            }
        }
    };
    // Whatever happened, stop taking events and flush the log.
    token.cancel();
    if let Err(error) = log.close().await {
        tracing::error!(error = %error_chain(&error), "closing the event log failed");
    }
    metrics.shutdown();
    tracing::info!("incode-gateway stopped");
    result
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM. If a handler cannot be installed, that
/// signal keeps its default disposition (terminate) and the other one still works.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
