//! The public listener: the OAuth token endpoint, Incode's webhook endpoints and health, nothing
//! else.
//!
//! Each resource has its own router; [`app`] merges them and adds the layers every request
//! goes through.

mod auth;
mod error;
mod health;
mod oauth;
mod webhooks;

use std::sync::Arc;

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath},
    http::{Request, Response},
};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use auth::Refused;
pub use error::ApiError;

use self::auth::PeerIp;
use crate::{auth::Auth, log::SharedLog, metrics::Metrics, telemetry};

/// What the public handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    log: SharedLog,
    auth: Arc<Auth>,
    metrics: Metrics,
}

impl AppState {
    /// State over this event log, guarded by `auth`, counting into `metrics`.
    pub fn new(log: SharedLog, auth: Arc<Auth>, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner { log, auth, metrics }),
        }
    }

    fn log(&self) -> &SharedLog {
        &self.inner.log
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn auth(&self) -> &Arc<Auth> {
        &self.inner.auth
    }
}

/// Settings of the public router.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

/// The public router.
pub fn app(state: AppState, settings: HttpSettings) -> Router {
    Router::new()
        .merge(oauth::router())
        .merge(webhooks::router())
        .merge(health::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(server_span)
                .on_response(record_response),
        )
        .with_state(state)
}

/// The HTTP server span of a request, named and attributed per the OpenTelemetry semantic
/// conventions, continuing the trace of an incoming `traceparent`. Headers and query strings are
/// never recorded: they may carry credentials.
fn server_span(request: &Request<Body>) -> Span {
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "http request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        url.scheme = "http",
        http.response.status_code = Empty,
    );
    let parent = telemetry::extract_from_headers(request.headers());
    // Fails only when the span is disabled, and then there is nothing to parent.
    let _ = span.set_parent(parent);
    span
}

fn record_response(response: &Response<Body>, _latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}
