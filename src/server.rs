//! Wires the event log and both listeners together, and takes them down in order.

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Auth, AuthSetupError},
    config::{Config, StorageKind},
    error::error_chain,
    grpc::{self, GrpcSettings},
    http::{self, AppState, HttpSettings},
    log::{EmbeddedLog, MemoryLog, SharedLog},
    metrics::{Metrics, MetricsError},
    telemetry,
};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The authentication settings are not usable (or leave the webhooks open).
    #[error("the authentication settings are not usable")]
    Auth(#[from] AuthSetupError),
    /// The event log could not be opened.
    #[error("could not open the event log")]
    OpenLog(#[source] crate::log::LogError),
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

/// Opens the event log the configuration asks for.
pub fn open_log(config: &Config) -> Result<SharedLog, ServerError> {
    match config.storage {
        StorageKind::Embedded => {
            let log = EmbeddedLog::open(&config.data_dir, config.embedded_log_options())
                .map_err(ServerError::OpenLog)?;
            Ok(Arc::new(log))
        }
        StorageKind::Memory => {
            tracing::warn!("storage is in memory: events are lost when the gateway stops");
            Ok(Arc::new(MemoryLog::new(config.dedup_window)))
        }
    }
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
    let log = open_log(&config)?;
    serve(config, auth, log, public, internal, shutdown).await
}

/// [`run`] over an already opened log.
pub async fn run_with_log(
    config: Config,
    log: SharedLog,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let auth = Arc::new(Auth::from_config(&config)?);
    serve(config, auth, log, public, internal, shutdown).await
}

async fn serve(
    config: Config,
    auth: Arc<Auth>,
    log: SharedLog,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    tokio::spawn(maintain(
        log.clone(),
        config.maintenance_interval,
        token.clone(),
    ));

    if let (Ok(public), Ok(internal)) = (public.local_addr(), internal.local_addr()) {
        tracing::info!(%public, %internal, "incode-gateway listening");
    }

    let metrics = Metrics::new(log.clone(), telemetry::otlp_metrics_enabled())?;
    let app = http::app(
        AppState::new(log.clone(), auth, metrics.clone()),
        HttpSettings {
            max_body_bytes: config.max_body_bytes,
            trust_incoming_trace_context: config.public_listener.trust_incoming_trace_context,
        },
    );
    let http = http::serve(
        public,
        app,
        config.public_listener.limits(),
        config.public_listener.trusted_proxies(),
        token.clone(),
    );
    let grpc = grpc::serve(
        internal,
        log.clone(),
        metrics.clone(),
        GrpcSettings {
            heartbeat_interval: config.heartbeat_interval,
            trace_deliveries: telemetry::traces_enabled(),
        },
        token.clone(),
    )?;

    let http = async { http.await.map_err(ServerError::Http) };
    let grpc = async { grpc.await.map_err(ServerError::Grpc) };
    let servers = async { tokio::try_join!(http, grpc) };
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    let result = tokio::select! {
        result = servers => result.map(|_| ()),
        () = deadline => {
            tracing::warn!(timeout = ?config.shutdown_timeout, "in-flight work did not finish in time; stopping anyway");
            Ok(())
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

/// Applies retention periodically until shutdown.
async fn maintain(log: SharedLog, interval: std::time::Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = log.maintain().await {
            tracing::error!(error = %error_chain(&error), "event log maintenance failed");
        }
    }
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
