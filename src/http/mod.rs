//! The public listener: the OAuth token endpoint, Incode's webhook endpoints and health, nothing
//! else.
//!
//! Each resource has its own router; [`app`] merges them and adds the layers every request
//! goes through, among them the rate-limited log of refusals (`rejections`). [`serve`] runs it on
//! the internet-facing socket, with timeouts and a connection limit; [`TrustedProxies`] decides
//! whose forwarding headers are believed.

mod auth;
mod client_address;
mod error;
mod health;
mod oauth;
mod rejections;
mod serve;
mod webhooks;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath},
    http::{Request, Response},
};
use opentelemetry::trace::TraceContextExt;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use auth::Refused;
pub use client_address::{ForwardedHeader, TrustedProxies};
pub use serve::{ListenerSettings, MAX_HEAD_BYTES, serve};

/// Pure parsing functions exposed for the fuzz targets in `fuzz/`; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::oauth::parse_token_request;
}

/// The client's address as [`TrustedProxies`] resolved it, in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

use self::{auth::PeerIp, rejections::RejectionLog};
use crate::{
    auth::Auth,
    log::{Readiness, SharedLog},
    metrics::Metrics,
    telemetry,
};

/// What the public handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    log: SharedLog,
    readiness: Readiness,
    auth: Arc<Auth>,
    metrics: Metrics,
    rejections: RejectionLog,
}

impl AppState {
    /// State over this event log and its `readiness`, guarded by `auth`, counting into
    /// `metrics`.
    pub fn new(log: SharedLog, readiness: Readiness, auth: Arc<Auth>, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                readiness,
                auth,
                metrics,
                rejections: RejectionLog::default(),
            }),
        }
    }

    fn rejections(&self) -> &RejectionLog {
        &self.inner.rejections
    }

    fn readiness(&self) -> &Readiness {
        &self.inner.readiness
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
    /// Whether an incoming `traceparent` is continued (else only linked).
    pub trust_incoming_trace_context: bool,
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
        // Inside the trace layer, so that a rejection's line carries the request's trace id.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rejections::log_rejections,
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request<Body>| {
                    server_span(request, settings.trust_incoming_trace_context)
                })
                .on_response(record_response),
        )
        .with_state(state)
}

/// The HTTP server span of a request, named and attributed per the OpenTelemetry semantic
/// conventions. An incoming `traceparent` comes from the internet: by default the span starts a
/// new trace with a link to the caller's context (so a caller can neither join our traces nor
/// force their sampling); with `trust_incoming` it continues the caller's trace. Headers and
/// query strings are never recorded: they may carry credentials.
fn server_span(request: &Request<Body>, trust_incoming: bool) -> Span {
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "http request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        url.scheme = "http",
        http.response.status_code = Empty,
    );
    // Without a subscriber for spans (traces not exported) there is nothing to name or link:
    // every request would pay for the formatting and the header parsing for nothing.
    if span.is_disabled() {
        return span;
    }
    match route {
        Some(route) => span.record("otel.name", format!("{method} {route}")),
        None => span.record("otel.name", method),
    };
    let caller = telemetry::extract_from_headers(request.headers());
    if trust_incoming {
        // Fails only when the span is disabled, and then there is nothing to parent.
        let _ = span.set_parent(caller);
    } else {
        let caller = caller.span().span_context().clone();
        if caller.is_valid() {
            span.add_link(caller);
        }
    }
    span
}

fn record_response(response: &Response<Body>, _latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests;
