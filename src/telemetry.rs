//! Telemetry: structured logs, OpenTelemetry traces, and W3C trace-context propagation.
//!
//! Logs go through `tracing-subscriber`, as text or JSON, at the level `RUST_LOG` sets (default
//! `info`). Traces are exported over OTLP/gRPC only when the standard variables name an endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise no
//! OpenTelemetry layer is installed at all, so tracing costs nothing. `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_BSP_*` apply as
//! OpenTelemetry defines them. Log lines written inside a traced span carry its `trace_id` and
//! `span_id`.

use std::{collections::HashMap, fmt};

use axum::http::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{self, FilterExt},
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

/// The service name when `OTEL_SERVICE_NAME` does not say otherwise.
pub const SERVICE_NAME: &str = "incode-gateway";

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP span exporter could not be built.
    #[error("cannot build the OTLP trace exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global log subscriber was already installed.
    #[error("cannot install the log subscriber")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the exporters alive; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporters. An unreachable collector delays
    /// this by at most the exporter's timeout.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("incode-gateway: flushing traces failed: {error}");
        }
    }
}

/// Whether the environment asks for OTLP trace export.
pub fn traces_enabled() -> bool {
    otlp_enabled("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
}

/// Whether the environment asks for OTLP metric export.
pub fn otlp_metrics_enabled() -> bool {
    otlp_enabled(
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    )
}

fn otlp_enabled(exporter_variable: &str, endpoint_variable: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var(exporter_variable).is_ok_and(|value| value.trim() == "none");
    !disabled && (set(endpoint_variable) || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The OpenTelemetry resource: the standard detectors (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), with `incode-gateway` as the default service name.
pub fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(SERVICE_NAME).build()
    }
}

/// Installs the global log subscriber and, when configured, the OTLP trace pipeline. Call once,
/// inside the tokio runtime.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer_provider = if traces_enabled() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build(),
        )
    } else {
        None
    };
    // Each layer has its own filter. The log layer sees events only (formatting every span's
    // fields for lines that are never written would cost more than the request itself), and the
    // OpenTelemetry layer is absent unless traces are exported, so by default no span is enabled
    // at all and spans cost nothing.
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if let Some(provider) = &tracer_provider {
        layers.push(Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SERVICE_NAME))
                .with_filter(env_filter()),
        ));
    }
    let events_only = filter::filter_fn(|metadata| metadata.is_event());
    layers.push(match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(colours_wanted())
                .event_format(WithTraceIds {
                    inner: format::Format::default(),
                    json: false,
                })
                .with_filter(env_filter().and(events_only)),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .event_format(WithTraceIds {
                    inner: format::Format::default().json().flatten_event(true),
                    json: true,
                })
                .with_filter(env_filter().and(events_only)),
        ),
    });
    tracing_subscriber::registry().with(layers).try_init()?;
    Ok(Telemetry { tracer_provider })
}

/// Whether log lines may carry ANSI colour codes: only for a person at a terminal, and not when
/// `NO_COLOR` says otherwise (<https://no-color.org>). Piped into a file or a log collector they
/// would be noise.
fn colours_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// `RUST_LOG`, or `info`.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Adds the current OpenTelemetry trace and span ids to each log line.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let current = tracing::Span::current();
        let ids = if current.is_none() {
            None
        } else {
            let cx = current.context();
            let span = cx.span();
            let span_context = span.span_context();
            span_context
                .is_valid()
                .then(|| (span_context.trace_id(), span_context.span_id()))
        };
        match ids {
            None => self.inner.format_event(ctx, writer, event),
            Some((trace_id, span_id)) if self.json => {
                let mut line = String::new();
                self.inner
                    .format_event(ctx, Writer::new(&mut line), event)?;
                match line.strip_prefix('{') {
                    Some(rest) => write!(
                        writer,
                        "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                    ),
                    None => writer.write_str(&line),
                }
            }
            Some((trace_id, span_id)) => {
                write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
                self.inner.format_event(ctx, writer, event)
            }
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context an incoming request carries in `traceparent`/`tracestate`.
pub fn extract_from_headers(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// The trace context stored in an event's `trace_context` map.
pub fn extract_from_map(map: &HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MapExtractor(map))
    })
}

/// The W3C trace context of `span`, as `traceparent` (and `tracestate`) entries; empty when the
/// span is not traced.
pub fn inject_span(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut MapCarrier(&mut map));
        });
    }
    map
}
