//! Wires the event log and both listeners together, reloads what can change while they run,
//! and takes them down in order.

use std::{future::Future, sync::Arc, time::Duration};

use futures::Stream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Auth, AuthSetupError, PreparedAuth},
    config::{ServeArgs, StorageKind, file::ConfigFileError},
    error::error_chain,
    grpc::{self, Security, SetupError},
    http::{self, AppState},
    log::{
        EmbeddedLog, MemoryLog, NatsLog, Readiness, Storage,
        embedded::{
            OpenError,
            data_dir::{self, DataDirError},
        },
        nats::NatsOpenError,
        readiness,
    },
    metrics::{Metrics, MetricsError},
    reload::{self, Reloader},
    subscriptions::{Cursors, Quota, groups::Groups},
    telemetry,
};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
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
    /// The data directory of the embedded event log is not usable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
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
pub async fn open_storage(config: &ServeArgs) -> Result<Storage, ServerError> {
    Ok(match config.storage {
        StorageKind::Embedded => Storage::new(Arc::new(EmbeddedLog::open(
            &config.data_dir,
            config.embedded_settings(),
        )?)),
        StorageKind::Nats => {
            Storage::new(Arc::new(NatsLog::connect(config.nats_settings()).await?))
        }
        StorageKind::Memory => {
            tracing::warn!("storage is in memory: events are lost when the gateway stops");
            Storage::new(Arc::new(MemoryLog::new(config.memory_settings())))
        }
    })
}

/// Runs the gateway on the given listeners until `shutdown` completes, then stops accepting,
/// ends subscription streams, lets in-flight requests finish (for at most
/// `config.shutdown_timeout`) and closes the log. Nothing reloads its configuration: see
/// [`run_with_reloads`].
pub async fn run(
    config: ServeArgs,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with_reloads(
        config,
        public,
        internal,
        shutdown,
        futures::stream::pending(),
    )
    .await
}

/// [`run`], reloading what can change while the gateway runs ([`crate::reload`]) on every item
/// of `reloads` ([`crate::reload::hangup_requests`] in the binary).
pub async fn run_with_reloads(
    config: ServeArgs,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: impl Stream<Item = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let checked = check(&config, &internal)?;
    let stop = shutdown_token(shutdown);
    // Opening NATS may take up to --nats-connect-timeout: a stop asked for meanwhile ends the
    // start there, as nothing is served yet.
    let storage = tokio::select! {
        storage = open_storage(&config) => storage?,
        () = stop.cancelled() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    let ready = checked.finish()?;
    serve(config, ready, storage, public, internal, stop, reloads).await
}

/// [`run`] over already opened storage, for tests that hold the storage themselves.
#[cfg(any(test, feature = "test-util"))]
pub async fn run_with_storage(
    config: ServeArgs,
    storage: Storage,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let ready = check(&config, &internal)?.finish()?;
    let reloads = futures::stream::pending();
    let stop = shutdown_token(shutdown);
    serve(config, ready, storage, public, internal, stop, reloads).await
}

/// A token cancelled once `shutdown` completes.
fn shutdown_token(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    token
}

/// What start-up checked and built before writing anything.
struct Checked {
    auth: PreparedAuth,
    security: Security,
}

impl Checked {
    /// Writes what start-up generated (a signing key for the data directory): once the checks
    /// have passed and the storage is open.
    fn finish(self) -> Result<Ready, ServerError> {
        Ok(Ready {
            auth: Arc::new(self.auth.finish()?),
            security: self.security,
        })
    }
}

/// The listeners' security, ready to serve.
struct Ready {
    auth: Arc<Auth>,
    security: Security,
}

/// Every check that can refuse the configuration, made before anything is written, so that a
/// refused start leaves the data directory as it found it: the config file's sections, the
/// authentication settings (a signing key for the data directory is generated but not stored
/// yet), the internal listener against the address it is bound to, and the storage's own
/// settings.
fn check(config: &ServeArgs, internal: &TcpListener) -> Result<Checked, ServerError> {
    let sections = config.file_sections()?;
    let (settings, unsaved_key) = config.auth_settings(&sections)?;
    let auth = Auth::prepare(settings, unsaved_key)?;
    let bound = internal.local_addr().map_err(ServerError::InternalAddr)?;
    let security = Security::new(config.security_settings(&sections), bound)?;
    check_storage(config)?;
    Ok(Checked { auth, security })
}

/// The storage settings that can be checked without opening the storage.
fn check_storage(config: &ServeArgs) -> Result<(), ServerError> {
    match config.storage {
        StorageKind::Embedded => {
            data_dir::check(&config.data_dir)?;
        }
        StorageKind::Nats => {
            config
                .nats_settings()
                .check()
                .map_err(NatsOpenError::from)?;
        }
        StorageKind::Memory => {}
    }
    Ok(())
}

async fn serve(
    config: ServeArgs,
    ready: Ready,
    storage: Storage,
    public: TcpListener,
    internal: TcpListener,
    token: CancellationToken,
    reloads: impl Stream<Item = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Ready { auth, security } = ready;
    let log = storage.log;
    let reloader = Arc::new(Reloader::new(config.clone(), auth.clone(), &security));
    tokio::spawn(reload::watch(reloader, reloads, token.clone()));

    if let (Ok(public), Ok(internal)) = (public.local_addr(), internal.local_addr()) {
        tracing::info!(%public, %internal, "incode-gateway listening");
    }

    let metrics = Metrics::new(log.clone(), telemetry::otlp_metrics_enabled())?;
    let readiness = Readiness::spawn(log.clone(), readiness::CHECK_INTERVAL, token.clone());
    let app = http::app(
        AppState::new(log.clone(), readiness.clone(), auth, metrics.clone()),
        config.http_settings(),
    );
    let give_up = CancellationToken::new();
    let http = http::serve(
        public,
        app,
        config.public_listener.listener_settings(),
        config.public_listener.trusted_proxies(),
        token.clone(),
        give_up.clone(),
    );
    // Consumers and groups share one namespace, so one quota bounds both.
    let quota = Quota::new(storage.state.clone(), config.quota_settings());
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
        config.grpc_settings(telemetry::traces_enabled()),
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

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the moment it is called, and completes on the
/// first of them. Call it before the gateway listens: until a handler is installed these
/// signals end the process on the spot, with no graceful shutdown. If a handler cannot be
/// installed, that signal keeps its default disposition (terminate) and the other one still
/// works.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::SignalKind;
        [
            listen(SignalKind::interrupt(), "SIGINT"),
            listen(SignalKind::terminate(), "SIGTERM"),
        ]
    };
    async move {
        #[cfg(unix)]
        {
            let [mut interrupt, mut terminate] = signals;
            tokio::select! {
                () = next_signal(&mut interrupt) => {},
                () = next_signal(&mut terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested");
    }
}

/// A handler for `kind`, if one could be installed.
#[cfg(unix)]
fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &'static str,
) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .inspect_err(|error| tracing::error!(%error, "cannot listen for {name}"))
        .ok()
}

/// The next delivery of `signal`; never, without a handler.
#[cfg(unix)]
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(signal) = signal
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}
