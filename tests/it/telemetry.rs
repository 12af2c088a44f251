//! Telemetry as an operator and a subscriber see it: one trace from Incode's call to the
//! delivery, and metrics that move by the right amounts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use incode_gateway::proto::v1::{self, StartPosition, SubscribeRequest, start_position::Position};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::{Span, span::SpanKind},
};
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::support::{auth_common::*, common::*};

/// An OTLP trace collector that keeps every span it receives.
#[derive(Clone, Default)]
pub struct Collector {
    pub spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    pub async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        address
    }

    /// Waits until the spans of `trace_id` satisfy `done`.
    pub async fn wait_for(&self, trace_id: &[u8], done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span.trace_id == trace_id)
                .cloned()
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spans of the trace never arrived; got {:#?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_incodes_call_the_append_and_the_delivery() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let data_dir = tempfile::tempdir().unwrap();
    // Incode's trace context is trusted here: the test plays the operator's own caller.
    let process = GatewayProcess::spawn_with(
        data_dir.path(),
        &["--trust-incoming-trace-context"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_SERVICE_NAME", "incode-gateway-test"),
            ("INCODE_GATEWAY_OAUTH_CLIENT_ID", CLIENT_ID),
            ("INCODE_GATEWAY_OAUTH_CLIENT_SECRET", CLIENT_SECRET),
            ("INCODE_GATEWAY_TOKEN_SIGNING_KEY", SIGNING_KEY),
        ],
    )
    .await;
    let http = http_client();
    let token: serde_json::Value = http
        .post(format!("{}/oauth/token", process.base_url))
        .header("authorization", basic(CLIENT_ID, CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();

    let mut client = process.client().await;
    let mut stream = client
        .subscribe(SubscribeRequest {
            start: Some(StartPosition {
                position: Some(Position::Latest(v1::start_position::Latest {})),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = http
        .post(format!(
            "{}/webhooks/incode/onboarding-status",
            process.base_url
        ))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(onboarding_body("traced", "ONBOARDING_FINISHED"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let event = next_event(&mut stream).await;

    let traceparent = event
        .trace_context
        .get("traceparent")
        .expect("trace context");
    let parts: Vec<_> = traceparent.split('-').collect();
    assert_eq!(parts[1], trace_id, "the event continues Incode's trace");
    let ingest_span_id = parts[2];

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let spans = collector
        .wait_for(&trace_bytes, |spans| {
            [
                "POST /webhooks/incode/onboarding-status",
                "webhook verify credentials",
                "ingest webhook",
                "event_log append",
                "send events",
            ]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await;
    let by_name: HashMap<_, _> = spans.iter().map(|s| (s.name.as_str(), s)).collect();

    let server = by_name["POST /webhooks/incode/onboarding-status"];
    assert_eq!(server.kind(), SpanKind::Server);
    assert_eq!(hex(&server.parent_span_id), caller_span);
    assert_eq!(
        attribute(server, "http.response.status_code"),
        Some(&AnyValue::IntValue(200))
    );
    assert_eq!(
        attribute(server, "http.route"),
        Some(&AnyValue::StringValue(
            "/webhooks/incode/onboarding-status".into()
        ))
    );

    let ingest = by_name["ingest webhook"];
    assert_eq!(ingest.parent_span_id, server.span_id);
    assert_eq!(
        hex(&ingest.span_id),
        ingest_span_id,
        "trace_context names the ingest span"
    );

    let append = by_name["event_log append"];
    assert_eq!(append.parent_span_id, ingest.span_id);
    assert_eq!(
        attribute(append, "incode_gateway.event.sequence"),
        Some(&AnyValue::IntValue(event.sequence as i64))
    );
    assert_eq!(
        attribute(append, "incode_gateway.event.duplicate"),
        Some(&AnyValue::BoolValue(false))
    );

    let delivery = by_name["send events"];
    assert_eq!(delivery.kind(), SpanKind::Producer);
    assert_eq!(delivery.parent_span_id, ingest.span_id);
    assert_eq!(
        attribute(delivery, "messaging.message.id"),
        Some(&AnyValue::StringValue(event.id.clone()))
    );
    assert_eq!(delivery.links.len(), 1, "linked to the Subscribe call");

    let verify = by_name["webhook verify credentials"];
    assert_eq!(verify.parent_span_id, server.span_id);

    // A log line written inside a traced request carries its trace and span ids.
    let rejected = http
        .post(format!(
            "{}/webhooks/incode/onboarding-status",
            process.base_url
        ))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let line = loop {
        let found = process
            .output
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("request rejected"))
            .cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line for the rejection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["trace_id"], trace_id, "{line}");
    assert_eq!(record["span_id"].as_str().map(str::len), Some(16), "{line}");

    // No span of any trace records headers, the token or the client secret.
    let all_spans = collector.spans.lock().unwrap().clone();
    assert!(
        all_spans.iter().any(|s| s.name == "oauth issue token"),
        "the token request is traced too"
    );
    let signature = token.rsplit('.').next().unwrap();
    for span in &all_spans {
        for kv in &span.attributes {
            assert!(
                !kv.key.contains("header"),
                "{} records {}",
                span.name,
                kv.key
            );
            let value = format!("{:?}", kv.value);
            for secret in [token.as_str(), signature, CLIENT_SECRET, SIGNING_KEY] {
                assert!(
                    !value.contains(secret),
                    "{} leaks a secret in {}",
                    span.name,
                    kv.key
                );
            }
        }
    }
}

/// A gateway with its own data directory (kept alive by the caller) that exports its traces to
/// `collector` every 50 ms.
async fn exporting_gateway(collector: &Collector) -> (GatewayProcess, tempfile::TempDir) {
    let endpoint = collector.start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let process = GatewayProcess::spawn(
        data_dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    (process, data_dir)
}

/// By default a `traceparent` from the internet is not continued: the request starts a trace of
/// its own, and its server span links to the caller's context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_traceparent_is_linked_not_continued() {
    let collector = Collector::default();
    let (process, _data_dir) = exporting_gateway(&collector).await;
    let mut client = process.client().await;
    let mut stream = client
        .subscribe(SubscribeRequest {
            start: Some(StartPosition {
                position: Some(Position::Latest(v1::start_position::Latest {})),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(format!(
            "{}/webhooks/incode/onboarding-status",
            process.base_url
        ))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .body(onboarding_body("untrusted", "ONBOARDING_FINISHED"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let event = next_event(&mut stream).await;
    let traceparent = &event.trace_context["traceparent"];
    let own_trace = traceparent.split('-').nth(1).unwrap().to_owned();
    assert_ne!(own_trace, caller_trace, "the caller's trace is not joined");

    let own_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&own_trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let spans = collector
        .wait_for(&own_bytes, |spans| {
            spans
                .iter()
                .any(|s| s.name == "POST /webhooks/incode/onboarding-status")
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s.name == "POST /webhooks/incode/onboarding-status")
        .unwrap();
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(server.links.len(), 1, "linked to the caller's context");
    assert_eq!(hex(&server.links[0].trace_id), caller_trace);
    assert_eq!(hex(&server.links[0].span_id), caller_span);
    // Nothing at all was recorded in the caller's trace.
    let caller_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&caller_trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.trace_id != caller_bytes)
    );
}

/// The next event of a stream, past whatever it sends first (`caught_up`, a group assignment).
async fn first_event(stream: &mut tonic::Streaming<v1::SubscribeResponse>) -> v1::Event {
    loop {
        if let v1::subscribe_response::Response::Event(event) = next_progress(stream).await {
            return event;
        }
    }
}

/// A durable consumer's and a group member's deliveries are traced like a plain stream's: a
/// `send events` span in the event's trace, child of its ingest span and linked to the stream's
/// `Subscribe` call, naming the consumer or the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_durable_consumers_and_group_members_are_traced() {
    let collector = Collector::default();
    let (process, _data_dir) = exporting_gateway(&collector).await;
    let mut client = process.client().await;
    let mut durable = client
        .subscribe(SubscribeRequest {
            consumer: "billing".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut member = client
        .subscribe(SubscribeRequest {
            group: "payments".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let response = http_client()
        .post(format!(
            "{}/webhooks/incode/onboarding-status",
            process.base_url
        ))
        .header("content-type", "application/json")
        .body(onboarding_body("delivered-twice", "ONBOARDING_FINISHED"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let event = first_event(&mut durable).await;
    assert_eq!(first_event(&mut member).await.id, event.id);

    let traceparent = &event.trace_context["traceparent"];
    let parts: Vec<_> = traceparent.split('-').collect();
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&parts[1][2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let spans = collector
        .wait_for(&trace_bytes, |spans| {
            spans.iter().any(|s| s.name == "ingest webhook")
                && spans.iter().filter(|s| s.name == "send events").count() == 2
        })
        .await;
    let ingest = spans.iter().find(|s| s.name == "ingest webhook").unwrap();
    assert_eq!(hex(&ingest.span_id), parts[2]);
    let deliveries: HashMap<_, _> = spans
        .iter()
        .filter(|s| s.name == "send events")
        .map(|s| {
            let name = match attribute(s, "messaging.consumer.group.name") {
                Some(AnyValue::StringValue(name)) => name.clone(),
                other => panic!("a delivery without its consumer or group: {other:?}"),
            };
            (name, s)
        })
        .collect();
    for name in ["billing", "payments"] {
        let delivery = deliveries
            .get(name)
            .unwrap_or_else(|| panic!("no delivery span for {name}"));
        assert_eq!(delivery.kind(), SpanKind::Producer, "{name}");
        assert_eq!(delivery.parent_span_id, ingest.span_id, "{name}");
        assert_eq!(
            attribute(delivery, "messaging.message.id"),
            Some(&AnyValue::StringValue(event.id.clone())),
            "{name}"
        );
        assert_eq!(
            delivery.links.len(),
            1,
            "{name}: linked to its Subscribe call"
        );
    }
    assert_ne!(
        deliveries["billing"].links[0].span_id, deliveries["payments"].links[0].span_id,
        "each delivery links to its own stream's Subscribe call"
    );
}

/// Prometheus samples: (name, sorted labels) -> value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses Prometheus text.
fn parse_metrics(text: &str) -> Samples {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels: Vec<(String, String)> = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                labels.sort();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        samples.insert((name, labels), value.parse().unwrap());
    }
    samples
}

/// The value of the one series of `name` that has (at least) these labels. A missing series
/// fails the test, as does an ambiguous choice: a metric that disappears must not read as zero.
fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<_> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let matching: Vec<_> = samples
        .iter()
        .filter(|((n, l), _)| n == name && wanted.iter().all(|label| l.contains(label)))
        .collect();
    match matching[..] {
        [(_, value)] => *value,
        [] => panic!("no series {name} {labels:?} in {:#?}", samples.keys()),
        _ => panic!("{name} {labels:?} matches several series: {matching:?}"),
    }
}

/// Every `kind` label value of the webhook counter is named in the documentation's row for the
/// metric (in the README or `docs/`).
fn assert_kinds_documented(samples: &Samples) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = std::fs::read_to_string(root.join("README.md")).unwrap();
    for entry in std::fs::read_dir(root.join("docs")).into_iter().flatten() {
        docs.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    let row = docs
        .lines()
        .find(|line| line.starts_with("| `incode_gateway_webhooks_total` |"))
        .expect("the docs document incode_gateway_webhooks_total");
    for (name, labels) in samples.keys() {
        if name != "incode_gateway_webhooks_total" {
            continue;
        }
        for (key, value) in labels {
            if key == "kind" {
                assert!(
                    row.contains(&format!("`{value}`")),
                    "kind {value} is not documented in {row}"
                );
            }
        }
    }
}

#[tokio::test]
async fn metrics_count_webhooks_appends_and_deliveries() {
    let gateway = Gateway::start().await;
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(expect_caught_up(&mut stream).await, 0);

    let path = "/webhooks/incode/onboarding-status";
    for i in 0..3 {
        gateway
            .notify(path, &onboarding_body(&format!("m-{i}"), "UNKNOWN"))
            .await;
    }
    gateway
        .notify(path, &onboarding_body("m-0", "UNKNOWN"))
        .await; // duplicate
    gateway
        .notify(
            "/webhooks/incode/watchlist-updated",
            r#"{"interviewId":"w","ref":"r","search_id":"s"}"#,
        )
        .await;
    let (status, _) = gateway.post_json(path, "{broken").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = gateway
        .post_json(path, r#"{"onboardingStatus":"UNKNOWN"}"#)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The single URL and kinds of their own.
    gateway
        .notify("/webhooks/incode", r#"{"interviewId":"u"}"#)
        .await;
    let (status, _) = gateway.post_json("/webhooks/incode", "{broken").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    gateway
        .notify(
            "/webhooks/incode/document-expired",
            r#"{"interviewId":"d"}"#,
        )
        .await;
    let (status, _) = gateway.post_json("/webhooks/incode/bad%20kind", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for _ in 0..6 {
        next_event(&mut stream).await;
    }
    // A stream that starts at the live tail has nothing to catch up on: no lag, before it has
    // sent anything.
    let live = gateway.subscribe(latest(), no_filter()).await;

    let response = gateway
        .http
        .get(format!("http://{}/metrics", gateway.grpc_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let samples = parse_metrics(&text);
    let webhooks = "incode_gateway_webhooks_total";
    let check = |name: &str, labels: &[(&str, &str)], expected: f64| {
        assert_eq!(
            sample(&samples, name, labels),
            expected,
            "{name} {labels:?} in\n{text}"
        );
    };
    check(
        webhooks,
        &[("kind", "onboarding-status"), ("outcome", "accepted")],
        3.0,
    );
    check(
        webhooks,
        &[("kind", "onboarding-status"), ("outcome", "duplicate")],
        1.0,
    );
    check(
        webhooks,
        &[("kind", "watchlist-updated"), ("outcome", "accepted")],
        1.0,
    );
    check(
        webhooks,
        &[
            ("kind", "onboarding-status"),
            ("outcome", "rejected"),
            ("reason", "invalid_json"),
        ],
        1.0,
    );
    check(
        webhooks,
        &[
            ("kind", "onboarding-status"),
            ("outcome", "rejected"),
            ("reason", "missing_field"),
        ],
        1.0,
    );
    check(
        webhooks,
        &[("kind", "unknown"), ("outcome", "accepted")],
        1.0,
    );
    check(
        webhooks,
        &[
            ("kind", "detect"),
            ("outcome", "rejected"),
            ("reason", "invalid_json"),
        ],
        1.0,
    );
    // A kind the gateway does not model is chosen by the caller: not a label of its own.
    check(webhooks, &[("kind", "other"), ("outcome", "accepted")], 1.0);
    check(
        webhooks,
        &[
            ("kind", "invalid"),
            ("outcome", "rejected"),
            ("reason", "invalid_kind"),
        ],
        1.0,
    );
    check("incode_gateway_events_appended_total", &[], 6.0);
    check("incode_gateway_log_append_duration_seconds_count", &[], 7.0);
    check("incode_gateway_events_delivered_total", &[], 6.0);
    check("incode_gateway_subscribers_active", &[], 2.0);
    check("incode_gateway_log_head_sequence", &[], 6.0);
    assert_kinds_documented(&samples);
    for stream in ["0", "1"] {
        check(
            "incode_gateway_subscriber_lag",
            &[("subscriber", "anonymous"), ("stream", stream)],
            0.0,
        );
    }

    // The internal listener only: the public one has no /metrics.
    let public = gateway
        .http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);

    drop(stream);
    drop(live);
    // The streams are released at once; the gauge follows.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = gateway
            .http
            .get(format!("http://{}/metrics", gateway.grpc_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(
            &parse_metrics(&text),
            "incode_gateway_subscribers_active",
            &[],
        ) == 0.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream never released:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_token_requests_and_refused_webhooks() {
    let gateway = Gateway::start_with(oauth_config()).await;
    let token = fetch_token(&gateway).await;
    let (status, _, _) = token_request(
        &gateway,
        &gateway.http,
        Some(&basic(CLIENT_ID, "wrong")),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = post_webhook(&gateway, None, &[], &onboarding_body("x", "UNKNOWN")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {token}");
    let (status, _, _) = post_webhook(
        &gateway,
        Some(&bearer),
        &[],
        &onboarding_body("x", "UNKNOWN"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let text = gateway
        .http
        .get(format!("http://{}/metrics", gateway.grpc_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_metrics(&text);
    let check = |name: &str, labels: &[(&str, &str)], expected: f64| {
        assert_eq!(
            sample(&samples, name, labels),
            expected,
            "{name} {labels:?} in\n{text}"
        );
    };
    check(
        "incode_gateway_token_requests_total",
        &[("outcome", "issued")],
        1.0,
    );
    check(
        "incode_gateway_token_requests_total",
        &[("outcome", "invalid_client")],
        1.0,
    );
    check(
        "incode_gateway_webhooks_total",
        &[("kind", "any"), ("outcome", "unauthorized")],
        1.0,
    );
    assert_kinds_documented(&samples);
    check(
        "incode_gateway_webhooks_total",
        &[("outcome", "accepted")],
        1.0,
    );
    assert!(!text.contains(&token) && !text.contains(CLIENT_SECRET));
}

/// An unreachable collector slows nothing down, and SIGTERM still ends the process cleanly
/// after the exporter gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_neither_blocks_requests_nor_shutdown() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let data_dir = tempfile::tempdir().unwrap();
    let mut process = GatewayProcess::spawn(
        data_dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let http = http_client();
    for i in 0..20 {
        let response = http
            .post(format!(
                "{}/webhooks/incode/onboarding-status",
                process.base_url
            ))
            .header("content-type", "application/json")
            .body(onboarding_body(&format!("u-{i}"), "UNKNOWN"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    send_signal(&process.child, "TERM");
    expect_clean_exit(&mut process.child, "TERM").await;
}

/// Text log lines written to a pipe (a file, a log collector) carry no ANSI colour codes.
#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    use tokio::io::AsyncBufReadExt;
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = binary_async()
        .args(["serve", "--public-addr", "127.0.0.1:0"])
        .args(["--internal-addr", "127.0.0.1:0", "--log-format", "text"])
        .args(["--allow-unauthenticated-webhooks", "--data-dir"])
        .arg(data_dir.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let listening = line.contains("incode-gateway listening");
            read.push(line);
            if listening {
                return;
            }
        }
        panic!("the gateway exited before listening: {read:#?}");
    })
    .await
    .expect("the gateway did not start in time");
    assert!(read.len() > 1, "{read:#?}");
    for line in &read {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
        assert!(line.contains("INFO") || line.contains("WARN"), "{line:?}");
    }
}
