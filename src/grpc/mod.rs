//! The internal listener: `EventStreamService`, `grpc.health.v1.Health` and server reflection.
//! Never exposed to the internet.

mod event_stream;
mod filter;
mod subscription;

use std::{future::Future, time::Duration};

use axum::{extract::State, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::server::TcpIncoming};

pub use event_stream::EventStream;
pub use filter::{Filter, FilterError};

use crate::{
    log::{Cursors, SharedLog},
    metrics::Metrics,
    proto::v1::{self, event_stream_service_server::EventStreamServiceServer},
};

/// Settings of the internal listener.
#[derive(Debug, Clone, Copy)]
pub struct GrpcSettings {
    /// Longest silence on a subscription before a heartbeat.
    pub heartbeat_interval: Duration,
    /// Whether to create a span for every event delivered (only worth it when traces are
    /// exported).
    pub trace_deliveries: bool,
}

/// Serves the internal API on `listener` until `shutdown` is cancelled: gRPC (HTTP/2) and
/// `GET /metrics` (Prometheus text, HTTP/1.1 or HTTP/2). Subscription streams end on shutdown, so
/// the server can drain.
pub fn serve(
    listener: TcpListener,
    log: SharedLog,
    cursors: Cursors,
    metrics: Metrics,
    settings: GrpcSettings,
    shutdown: CancellationToken,
) -> Result<
    impl Future<Output = Result<(), tonic::transport::Error>>,
    tonic_reflection::server::Error,
> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let log_for_health = log.clone();
    let event_stream = EventStreamServiceServer::new(EventStream::new(
        log,
        cursors,
        metrics.clone(),
        settings,
        shutdown.clone(),
    ));
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(event_stream)
        .into_axum_router()
        .route("/metrics", get(render_metrics).with_state(metrics));

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(async move {
        // Serving from the start, as the log was open; the readiness task follows it from here.
        health_reporter
            .set_serving::<EventStreamServiceServer<EventStream>>()
            .await;
        tokio::spawn(report_readiness(
            log_for_health,
            health_reporter,
            shutdown.clone(),
        ));
        tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(Routes::from(routes))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
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

/// Keeps `grpc.health.v1` in step with the event log: `SERVING` while it can take events,
/// `NOT_SERVING` while it cannot (a failing disk, NATS unreachable or without a stream leader).
async fn report_readiness(
    log: SharedLog,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(1);
    let mut ready = Some(true);
    loop {
        let now_ready = log.check_ready().await.is_ok();
        if ready != Some(now_ready) {
            let status = if now_ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            if now_ready {
                reporter
                    .set_serving::<EventStreamServiceServer<EventStream>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<EventStreamServiceServer<EventStream>>()
                    .await;
            }
            ready = Some(now_ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
