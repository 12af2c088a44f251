//! The gateway's metrics: OpenTelemetry instruments, exported over OTLP when an endpoint is
//! configured and always rendered as Prometheus text at `GET /metrics` on the internal listener.
//!
//! Each running gateway has its own meter provider, so two gateways in one process (as in the
//! tests) never mix their numbers.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, MeterProvider, UpDownCounter},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::log::SharedLog;

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus exporter could not be built.
    #[error("cannot build the Prometheus exporter")]
    Prometheus(#[source] opentelemetry_sdk::error::OTelSdkError),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP metrics exporter")]
    Otlp(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// What became of a webhook call, for `incode_gateway.webhooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Stored as a new event.
    Accepted,
    /// Recognised as a repeat and acknowledged.
    Duplicate,
    /// Refused for bad input; the reason says which.
    Rejected(&'static str),
    /// Refused for missing or bad credentials.
    Unauthorized,
    /// The log could not store it (answered 503).
    Unavailable,
}

/// The gateway's instruments.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    webhooks: Counter<u64>,
    token_requests: Counter<u64>,
    append_duration: Histogram<f64>,
    events_appended: Counter<u64>,
    subscribers: UpDownCounter<i64>,
    /// Counted with an atomic and observed by the exporters: a delivery happens a million
    /// times a second under fan-out, and an instrument call costs more than an atomic add.
    events_delivered: Arc<AtomicU64>,
    acks: Counter<u64>,
    internal_refusals: Counter<u64>,
    streams: Arc<StreamRegistry>,
    groups: Arc<GroupRegistry>,
    group_redeliveries: Counter<u64>,
}

/// The group members this gateway serves, for the group gauges.
#[derive(Default)]
struct GroupRegistry {
    next_id: AtomicU64,
    members: Mutex<HashMap<u64, Arc<GroupMemberGauges>>>,
}

/// One member's figures. The member is not named: its id acks for it, so it stays out of labels.
struct GroupMemberGauges {
    group: String,
    partitions: AtomicU64,
    members: AtomicU64,
    /// The lowest cursor of its partitions, `u64::MAX` while it owns none.
    min_cursor: AtomicU64,
}

/// The live subscription streams, for the lag gauge.
#[derive(Default)]
struct StreamRegistry {
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, StreamLabels>>,
}

/// The labels of one stream in the lag gauge, and its progress.
struct StreamLabels {
    subscriber: String,
    consumer: Option<String>,
    considered: Arc<AtomicU64>,
}

impl Metrics {
    /// Instruments for a gateway over `log`. With `otlp`, metrics are also pushed to the OTLP
    /// endpoint of the standard `OTEL_EXPORTER_OTLP_*` variables every `OTEL_METRIC_EXPORT_INTERVAL`.
    pub fn new(log: SharedLog, otlp: bool) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .map_err(MetricsError::Prometheus)?;
        let mut builder = SdkMeterProvider::builder()
            .with_reader(prometheus)
            .with_resource(crate::telemetry::resource());
        if otlp {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(MetricsError::Otlp)?;
            builder = builder.with_periodic_exporter(exporter);
        }
        let provider = builder.build();
        let meter = provider.meter("incode-gateway");

        let streams = Arc::new(StreamRegistry::default());
        let head_log = log.clone();
        let head_lag_log = log.clone();
        meter
            .u64_observable_gauge("incode_gateway.log.head_sequence")
            .with_description("Sequence of the newest stored event")
            .with_callback(move |observer| observer.observe(head_log.known_head(), &[]))
            .build();
        let lag_streams = streams.clone();
        meter
            .u64_observable_gauge("incode_gateway.subscriber.lag")
            .with_description(
                "Per subscription stream: events stored but not yet considered (head sequence minus the last delivered or skipped)",
            )
            .with_unit("{event}")
            .with_callback(move |observer| {
                let head = log.known_head();
                let streams = lag_streams
                    .streams
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for (id, stream) in streams.iter() {
                    let lag = head.saturating_sub(stream.considered.load(Ordering::Relaxed));
                    let mut attributes = vec![
                        KeyValue::new("subscriber", stream.subscriber.clone()),
                        KeyValue::new("stream", *id as i64),
                    ];
                    if let Some(consumer) = &stream.consumer {
                        attributes.push(KeyValue::new("consumer", consumer.clone()));
                    }
                    observer.observe(lag, &attributes);
                }
            })
            .build();

        let groups = Arc::new(GroupRegistry::default());
        let registry_groups = groups.clone();
        meter
            .u64_observable_gauge("incode_gateway.group.members")
            .with_description(
                "Live members of each consumer group, as this gateway's members see them",
            )
            .with_unit("{member}")
            .with_callback(move |observer| {
                let seen = registry_groups.per_group(
                    |gauges| Some(gauges.members.load(Ordering::Relaxed)),
                    u64::max,
                );
                for (group, members) in seen {
                    observer.observe(members, &[KeyValue::new("group", group)]);
                }
            })
            .build();
        let registry_groups = groups.clone();
        meter
            .u64_observable_gauge("incode_gateway.group.partitions")
            .with_description(
                "Partitions of each consumer group owned by the members this gateway serves",
            )
            .with_unit("{partition}")
            .with_callback(move |observer| {
                let owned = registry_groups.per_group(
                    |gauges| Some(gauges.partitions.load(Ordering::Relaxed)),
                    |sum, partitions| sum + partitions,
                );
                for (group, partitions) in owned {
                    observer.observe(partitions, &[KeyValue::new("group", group)]);
                }
            })
            .build();
        let registry_groups = groups.clone();
        let lag_log = head_lag_log;
        meter
            .u64_observable_gauge("incode_gateway.group.lag")
            .with_description(
                "Per consumer group: the head sequence minus the lowest partition cursor among the partitions this gateway's members own",
            )
            .with_unit("{event}")
            .with_callback(move |observer| {
                let head = lag_log.known_head();
                // A member that owns no partition has no cursor (u64::MAX).
                let lowest = registry_groups.per_group(
                    |gauges| Some(gauges.min_cursor.load(Ordering::Relaxed)).filter(|c| *c != u64::MAX),
                    u64::min,
                );
                for (group, cursor) in lowest {
                    observer.observe(head.saturating_sub(cursor), &[KeyValue::new("group", group)]);
                }
            })
            .build();

        let events_delivered = Arc::new(AtomicU64::new(0));
        let delivered_count = events_delivered.clone();
        meter
            .u64_observable_counter("incode_gateway.events.delivered")
            .with_description("Events sent to subscribers")
            .with_unit("{event}")
            .with_callback(move |observer| {
                observer.observe(delivered_count.load(Ordering::Relaxed), &[]);
            })
            .build();

        let inner = Inner {
            webhooks: meter
                .u64_counter("incode_gateway.webhooks")
                .with_description("Webhook calls by notification kind and outcome")
                .with_unit("{request}")
                .build(),
            token_requests: meter
                .u64_counter("incode_gateway.token_requests")
                .with_description("OAuth token requests by outcome")
                .with_unit("{request}")
                .build(),
            append_duration: meter
                .f64_histogram("incode_gateway.log.append.duration")
                .with_description("Time to store an event durably (including deduplication)")
                .with_unit("s")
                .with_boundaries(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ])
                .build(),
            events_appended: meter
                .u64_counter("incode_gateway.events.appended")
                .with_description("Events stored in the log")
                .with_unit("{event}")
                .build(),
            subscribers: meter
                .i64_up_down_counter("incode_gateway.subscribers.active")
                .with_description("Open subscription streams")
                .with_unit("{stream}")
                .build(),
            events_delivered,
            acks: meter
                .u64_counter("incode_gateway.acks")
                .with_description(
                    "Accepted acks of durable consumers and group members, by the subscriber identity that sent them",
                )
                .with_unit("{request}")
                .build(),
            internal_refusals: meter
                .u64_counter("incode_gateway.internal.refusals")
                .with_description(
                    "Calls the internal listener refused for authentication or authorization, by reason and subscriber identity",
                )
                .with_unit("{request}")
                .build(),
            group_redeliveries: meter
                .u64_counter("incode_gateway.group.redeliveries")
                .with_description(
                    "Events sent to a consumer group member that an earlier owner of their partition had received without acknowledging them",
                )
                .with_unit("{event}")
                .build(),
            provider,
            registry,
            streams,
            groups,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Counts a webhook call of `kind` (a notification kind name, or one of the labels
    /// `detect`, `invalid` and `any`; any kind this version does not model is counted as
    /// `other`).
    pub fn webhook(&self, kind: &str, outcome: WebhookOutcome) {
        let (outcome, reason) = match outcome {
            WebhookOutcome::Accepted => ("accepted", None),
            WebhookOutcome::Duplicate => ("duplicate", None),
            WebhookOutcome::Rejected(reason) => ("rejected", Some(reason)),
            WebhookOutcome::Unauthorized => ("unauthorized", None),
            WebhookOutcome::Unavailable => ("unavailable", None),
        };
        let kind = KeyValue::new("kind", webhook_kind_label(kind));
        let outcome = KeyValue::new("outcome", outcome);
        match reason {
            Some(reason) => {
                let attributes = [kind, outcome, KeyValue::new("reason", reason)];
                self.inner.webhooks.add(1, &attributes);
            }
            None => self.inner.webhooks.add(1, &[kind, outcome]),
        }
    }

    /// Counts a token request (`issued`, or the OAuth error code).
    pub fn token_request(&self, outcome: &'static str) {
        self.inner
            .token_requests
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }

    /// Records one append's duration, and the event when it was new.
    pub fn appended(&self, duration: Duration, new_event: bool) {
        self.inner
            .append_duration
            .record(duration.as_secs_f64(), &[]);
        if new_event {
            self.inner.events_appended.add(1, &[]);
        }
    }

    /// Counts an event sent to a subscriber.
    pub fn delivered(&self) {
        self.inner.events_delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted ack by the subscriber identity `subscriber`.
    pub fn acked(&self, subscriber: &str) {
        self.inner
            .acks
            .add(1, &[KeyValue::new("subscriber", subscriber.to_owned())]);
    }

    /// Counts a call the internal listener refused (`reason` is a fixed label).
    pub fn internal_refusal(&self, reason: &'static str, subscriber: &str) {
        self.inner.internal_refusals.add(
            1,
            &[
                KeyValue::new("reason", reason),
                KeyValue::new("subscriber", subscriber.to_owned()),
            ],
        );
    }

    /// Registers an open stream of the subscriber identity `subscriber`, reading as `consumer`
    /// if any; the returned guard reports its progress and unregisters it when dropped.
    pub fn stream_opened(&self, subscriber: &str, consumer: Option<&str>) -> StreamGuard {
        let id = self.inner.streams.next_id.fetch_add(1, Ordering::Relaxed);
        let considered = Arc::new(AtomicU64::new(0));
        self.inner
            .streams
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                id,
                StreamLabels {
                    subscriber: subscriber.to_owned(),
                    consumer: consumer.map(str::to_owned),
                    considered: considered.clone(),
                },
            );
        self.inner.subscribers.add(1, &[]);
        StreamGuard {
            metrics: self.clone(),
            id,
            considered,
        }
    }

    /// Registers a consumer group member served by this gateway; the guard reports its figures
    /// and unregisters it when dropped.
    pub fn group_member_joined(&self, group: &str) -> GroupMemberGuard {
        let id = self.inner.groups.next_id.fetch_add(1, Ordering::Relaxed);
        let gauges = Arc::new(GroupMemberGauges {
            group: group.to_owned(),
            partitions: AtomicU64::new(0),
            members: AtomicU64::new(0),
            min_cursor: AtomicU64::new(u64::MAX),
        });
        self.inner
            .groups
            .members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, gauges.clone());
        GroupMemberGuard {
            metrics: self.clone(),
            id,
            gauges,
        }
    }

    /// Counts an event delivered again to a group member.
    pub fn group_redelivered(&self, group: &str) {
        self.inner
            .group_redeliveries
            .add(1, &[KeyValue::new("group", group.to_owned())]);
    }

    /// The metrics as Prometheus text exposition.
    pub fn render_prometheus(&self) -> String {
        use prometheus::Encoder;
        let mut text = Vec::new();
        let families = self.inner.registry.gather();
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut text) {
            tracing::error!(%error, "cannot render metrics");
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Pushes pending OTLP metrics and stops the exporters.
    pub fn shutdown(&self) {
        if let Err(error) = self.inner.provider.shutdown() {
            tracing::debug!(%error, "metrics shutdown");
        }
    }
}

/// The `kind` label of a webhook call: the kinds the gateway models and its own labels are
/// themselves; every other kind is `other`. The `{kind}` of `/webhooks/incode/{kind}` is chosen
/// by the caller, and each label value is a series kept for the life of the process: a label per
/// name would let anyone who can post grow the gateway's memory and every metrics scrape without
/// bound. The event itself keeps the kind's name.
fn webhook_kind_label(kind: &str) -> &'static str {
    const LABELS: [&str; 6] = [
        "onboarding-status",
        "watchlist-updated",
        // A `/webhooks/incode` notification of no known shape.
        "unknown",
        // A `/webhooks/incode` call refused before its shape was known.
        "detect",
        // A `{kind}` that is not a valid name.
        "invalid",
        // Refused credentials: an unauthenticated caller's URL is not a label.
        "any",
    ];
    LABELS
        .into_iter()
        .find(|label| *label == kind)
        .unwrap_or("other")
}

/// An open stream's registration; unregisters on drop.
pub struct StreamGuard {
    metrics: Metrics,
    id: u64,
    considered: Arc<AtomicU64>,
}

impl StreamGuard {
    /// Records that every sequence up to `sequence` has been delivered or skipped.
    pub fn considered(&self, sequence: u64) {
        self.considered.store(sequence, Ordering::Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .streams
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
        self.metrics.inner.subscribers.add(-1, &[]);
    }
}

impl GroupRegistry {
    /// One figure per group: `figure` of each member this gateway serves (a member without one
    /// is passed over), the members' figures of a group folded with `fold`.
    fn per_group(
        &self,
        figure: impl Fn(&GroupMemberGauges) -> Option<u64>,
        fold: fn(u64, u64) -> u64,
    ) -> HashMap<String, u64> {
        let mut folded: HashMap<String, u64> = HashMap::new();
        for gauges in self.snapshot() {
            if let Some(value) = figure(&gauges) {
                folded
                    .entry(gauges.group.clone())
                    .and_modify(|so_far| *so_far = fold(*so_far, value))
                    .or_insert(value);
            }
        }
        folded
    }

    fn snapshot(&self) -> Vec<Arc<GroupMemberGauges>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// A group member's registration; unregisters on drop.
pub struct GroupMemberGuard {
    metrics: Metrics,
    id: u64,
    gauges: Arc<GroupMemberGauges>,
}

impl GroupMemberGuard {
    /// The member's partitions, the group's members it sees, and its lowest partition cursor.
    pub fn set(&self, partitions: u64, members: u64, min_cursor: Option<u64>) {
        self.gauges.partitions.store(partitions, Ordering::Relaxed);
        self.gauges.members.store(members, Ordering::Relaxed);
        self.gauges
            .min_cursor
            .store(min_cursor.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Drop for GroupMemberGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .groups
            .members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::log::{MemoryLog, memory::MemorySettings};

    fn metrics() -> Metrics {
        let log: SharedLog = Arc::new(MemoryLog::new(MemorySettings::new(Duration::from_secs(60))));
        Metrics::new(log, false).unwrap()
    }

    /// The `kind` label values of `incode_gateway_webhooks_total` in the Prometheus text.
    fn webhook_kinds(metrics: &Metrics) -> std::collections::BTreeSet<String> {
        metrics
            .render_prometheus()
            .lines()
            .filter(|line| line.starts_with("incode_gateway_webhooks_total{"))
            .filter_map(|line| {
                let (_, rest) = line.split_once("kind=\"")?;
                Some(rest.split_once('"')?.0.to_owned())
            })
            .collect()
    }

    #[test]
    fn webhook_kinds_a_caller_picks_share_one_label() {
        let metrics = metrics();
        for n in 0..100 {
            metrics.webhook(&format!("kind-{n}"), WebhookOutcome::Accepted);
        }
        for kind in ["onboarding-status", "watchlist-updated", "unknown"] {
            metrics.webhook(kind, WebhookOutcome::Accepted);
        }
        metrics.webhook("detect", WebhookOutcome::Rejected("invalid_json"));
        metrics.webhook("invalid", WebhookOutcome::Rejected("invalid_kind"));
        metrics.webhook("any", WebhookOutcome::Unauthorized);
        let kinds: Vec<_> = webhook_kinds(&metrics).into_iter().collect();
        assert_eq!(
            kinds,
            [
                "any",
                "detect",
                "invalid",
                "onboarding-status",
                "other",
                "unknown",
                "watchlist-updated"
            ]
        );
        let text = metrics.render_prometheus();
        assert!(
            text.contains(r#"kind="other",outcome="accepted"} 100"#),
            "{text}"
        );
    }
}
