//! The scenarios: ingest against the baseline, end-to-end latency, fan-out, catch-up.

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use incode_gateway::{
    log::{DedupKey, EmbeddedLog, EventLog, NewEvent, embedded::EmbeddedSettings},
    proto::v1::{
        self, StartPosition, SubscribeRequest, event::Payload, start_position::Position,
        subscribe_response::Response,
    },
};
use prost_types::value::Kind;
use serde_json::{Value, json};

use crate::{
    Settings,
    gateway::{GatewayProcess, start_baseline},
    load::{self, BodyFn, LoadResult, Target},
};

pub const PATH: &str = "/webhooks/incode/onboarding-status";
const WARMUP: Duration = Duration::from_secs(1);

/// Microseconds since the start of the benchmark, carried inside bodies for end-to-end latency.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros_since_epoch() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

pub fn body(prefix: &'static str) -> BodyFn {
    Arc::new(move |n| {
        format!(
            r#"{{"interviewId":"{prefix}-{n}","externalId":"customer-{n}","onboardingStatus":"ONBOARDING_FINISHED","flowId":"flow-bench","benchSentMicros":{}}}"#,
            micros_since_epoch()
        )
    })
}

/// The scenarios of the gateway alone (ingest, end-to-end, fan-out, catch-up) that `settings`
/// asks for; `group` and `nats` have modules of their own.
pub async fn run(settings: &Settings) -> serde_json::Map<String, Value> {
    LazyLock::force(&EPOCH);
    let mut report = serde_json::Map::new();
    println!(
        "incode-gateway benchmark: {} cores, {:?} per measurement",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        settings.duration
    );
    if settings.runs("ingest") {
        report.insert("ingest".into(), ingest(settings).await);
    }
    if settings.runs("e2e") {
        report.insert("end_to_end".into(), end_to_end(settings).await);
    }
    if settings.runs("fanout") {
        let mut runs = Vec::new();
        for &subscribers in &settings.fanout {
            runs.push(fan_out(settings, subscribers).await);
        }
        marginal_memory(&mut runs);
        report.insert("fan_out".into(), Value::Array(runs));
    }
    if settings.runs("catchup") {
        report.insert("catch_up".into(), catch_up(settings).await);
    }
    report
}

fn describe(result: &LoadResult) -> Value {
    json!({
        "requests_per_second": result.rate().round(),
        "ok": result.ok,
        "failed": result.failed,
        "p50_ms": result.percentile_ms(0.5),
        "p99_ms": result.percentile_ms(0.99),
        "p999_ms": result.percentile_ms(0.999),
    })
}

pub fn print_load(name: &str, result: &LoadResult) {
    println!(
        "  {name:<34} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  failed {}",
        result.rate(),
        result.percentile_ms(0.5),
        result.percentile_ms(0.99),
        result.percentile_ms(0.999),
        result.failed
    );
}

/// One closed-loop measurement of a target: with wrk when installed, with the bench's own
/// generator otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub rate: f64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Measured {
    pub fn print(&self, name: &str) {
        println!(
            "  {name:<34} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  failed {}",
            self.rate, self.p50_ms, self.p99_ms, self.p999_ms, self.failed
        );
    }

    pub fn json(&self) -> Value {
        json!({
            "requests_per_second": self.rate.round(),
            "failed": self.failed,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
        })
    }
}

/// The generator [`measure`] uses.
pub fn generator() -> &'static str {
    if crate::wrk::available() {
        "wrk"
    } else {
        "bench"
    }
}

/// Measures `target` for `duration` with `connections` keep-alive connections; `prefix` keeps
/// its request bodies apart from every other run's.
pub async fn measure(
    target: &Target,
    prefix: &str,
    connections: usize,
    duration: Duration,
) -> Measured {
    if crate::wrk::available() {
        let result = crate::wrk::run(target, prefix, connections, duration).await;
        Measured {
            rate: result.rate(),
            failed: result.errors,
            p50_ms: result.p50_ms,
            p99_ms: result.p99_ms,
            p999_ms: result.p999_ms,
        }
    } else {
        let result = load::closed_loop(target.clone(), connections, duration).await;
        Measured {
            rate: result.rate(),
            failed: result.failed,
            p50_ms: result.percentile_ms(0.5),
            p99_ms: result.percentile_ms(0.99),
            p999_ms: result.percentile_ms(0.999),
        }
    }
}

/// Durable ingest against the bare-axum baseline, interleaved twice so that drift in the
/// machine's load hits both alike.
async fn ingest(settings: &Settings) -> Value {
    println!(
        "ingest: {} keep-alive connections, closed loop, generator: {}",
        settings.connections,
        generator()
    );
    let (baseline_addr, baseline_thread, stop_baseline) = start_baseline();
    let data_dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(data_dir.path()).await;
    let token = gateway.token().await;

    let baseline = Target {
        addr: baseline_addr,
        path: PATH.into(),
        authorization: None,
        body: body("baseline"),
    };
    let durable = Target {
        addr: gateway.public,
        path: PATH.into(),
        authorization: Some(format!("Bearer {token}")),
        body: body("ingest"),
    };
    measure(&baseline, "warm-baseline", settings.connections, WARMUP).await;
    measure(&durable, "warm-gateway", settings.connections, WARMUP).await;

    let mut rounds = Vec::new();
    for round in 1..=2 {
        let base = measure(
            &baseline,
            &format!("baseline-{round}"),
            settings.connections,
            settings.duration,
        )
        .await;
        base.print(&format!("round {round} bare axum baseline"));
        let real = measure(
            &durable,
            &format!("ingest-{round}"),
            settings.connections,
            settings.duration,
        )
        .await;
        real.print(&format!("round {round} gateway (durable, OAuth)"));
        rounds.push((base, real));
    }
    let base_rate: f64 = rounds.iter().map(|(b, _)| b.rate).sum::<f64>() / rounds.len() as f64;
    let real_rate: f64 = rounds.iter().map(|(_, g)| g.rate).sum::<f64>() / rounds.len() as f64;
    let ratio = real_rate / base_rate;
    println!("  gateway / baseline: {ratio:.2} (target >= 0.50, long-term 0.70)");

    gateway.stop().await;
    let _ = stop_baseline.send(());
    let _ = baseline_thread.join();
    json!({
        "connections": settings.connections,
        "generator": generator(),
        "rounds": rounds.iter().map(|(b, g)| json!({"baseline": b.json(), "gateway": g.json()})).collect::<Vec<_>>(),
        "baseline_rps": base_rate.round(),
        "gateway_rps": real_rate.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
    })
}

fn sent_micros(event: &v1::Event) -> Option<u64> {
    let Some(Payload::OnboardingStatusChanged(changed)) = &event.payload else {
        return None;
    };
    match changed
        .additional_fields
        .as_ref()?
        .fields
        .get("benchSentMicros")?
        .kind
    {
        Some(Kind::NumberValue(micros)) => Some(micros as u64),
        _ => None,
    }
}

fn latest() -> SubscribeRequest {
    SubscribeRequest {
        start: Some(StartPosition {
            position: Some(Position::Latest(v1::start_position::Latest {})),
        }),
        ..Default::default()
    }
}

/// From sending a webhook to receiving its event on a subscriber, at a fixed offered rate.
async fn end_to_end(settings: &Settings) -> Value {
    println!(
        "end-to-end: {} events/s offered, one subscriber",
        settings.rate
    );
    let data_dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(data_dir.path()).await;
    let token = gateway.token().await;
    let mut stream = gateway
        .client()
        .await
        .subscribe(latest())
        .await
        .unwrap()
        .into_inner();
    let expected = settings.rate * settings.duration.as_secs().max(1);
    let receiver = tokio::spawn(async move {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        while latency.len() < expected {
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Ok(Ok(Some(message))) => {
                    if let Some(Response::Event(event)) = message.response
                        && let Some(sent) = sent_micros(&event)
                    {
                        latency.saturating_record(micros_since_epoch().saturating_sub(sent));
                    }
                }
                _ => break,
            }
        }
        latency
    });
    let target = Target {
        addr: gateway.public,
        path: PATH.into(),
        authorization: Some(format!("Bearer {token}")),
        body: body("e2e"),
    };
    let acks = load::open_loop(target, 16, settings.rate, settings.duration).await;
    let latency = receiver.await.unwrap();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  webhook -> subscriber              p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  ({} of {} received; target p50 <= 1, p99 <= 5)",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0,
        latency.len(),
        acks.ok
    );
    print_load("webhook acknowledgement", &acks);
    gateway.stop().await;
    json!({
        "offered_rate": settings.rate,
        "received": latency.len(),
        "acknowledged": acks.ok,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": latency.max() as f64 / 1000.0,
        "ack": describe(&acks),
    })
}

/// The sequences one subscriber received, as runs of consecutive sequences.
#[derive(Debug, Default)]
struct Delivered {
    /// Inclusive ranges, in the order received.
    runs: Vec<(u64, u64)>,
    /// Sequences not greater than the one received before them.
    out_of_order: u64,
}

impl Delivered {
    fn record(&mut self, sequence: u64) {
        match self.runs.last_mut() {
            Some((_, end)) if sequence == *end + 1 => *end = sequence,
            last => {
                if last.is_some_and(|(_, end)| sequence <= *end) {
                    self.out_of_order += 1;
                }
                self.runs.push((sequence, sequence));
            }
        }
    }

    /// How many of `acknowledged` (sorted) this subscriber did not receive.
    fn missing(mut self, acknowledged: &[u64]) -> u64 {
        self.runs.sort_unstable();
        let runs = self.runs;
        acknowledged
            .iter()
            .filter(|&&sequence| {
                let after = runs.partition_point(|(start, _)| *start <= sequence);
                !runs[..after].iter().rev().any(|(_, end)| *end >= sequence)
            })
            .count() as u64
    }
}

/// The sequence each notification of the measured load was stored under, by the `n` of its body
/// (`fanout-{n}`), read back from the log.
async fn stored_sequences(gateway: &GatewayProcess) -> HashMap<u64, u64> {
    let mut stream = gateway
        .client()
        .await
        .subscribe(SubscribeRequest {
            start: Some(StartPosition {
                position: Some(Position::Earliest(v1::start_position::Earliest {})),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stored = HashMap::new();
    while let Some(message) = stream.message().await.unwrap() {
        match message.response {
            Some(Response::Event(event)) => {
                if let Some(Payload::OnboardingStatusChanged(changed)) = &event.payload
                    && let Some(n) = changed
                        .interview_id
                        .strip_prefix("fanout-")
                        .and_then(|n| n.parse().ok())
                {
                    stored.insert(n, event.sequence);
                }
            }
            Some(Response::CaughtUp(_)) => break,
            _ => {}
        }
    }
    stored
}

/// The memory each subscriber adds, beyond what the same load costs a gateway with one: the load
/// itself grows the gateway (the deduplication index holds every event of the window, the
/// allocator keeps what it freed), and that growth, the same whatever the number of
/// subscribers, is not theirs. Needs a 1-subscriber run in the same report.
fn marginal_memory(runs: &mut [Value]) {
    let rss_after = |run: &Value| {
        run["rss_after_load_bytes"].as_f64().unwrap_or(0.0)
            - run["rss_before_bytes"].as_f64().unwrap_or(0.0)
    };
    let Some(single) = runs
        .iter()
        .find(|run| run["subscribers"] == 1)
        .map(rss_after)
    else {
        return;
    };
    for run in runs.iter_mut() {
        let subscribers = run["subscribers"].as_f64().unwrap_or(1.0);
        if subscribers <= 1.0 {
            continue;
        }
        let kib = (rss_after(run) - single) / (subscribers - 1.0) / 1024.0;
        println!(
            "fan-out: {subscribers:>5} subscribers: {kib:.1} KiB each beyond a 1-subscriber gateway under the same load"
        );
        run["rss_per_subscriber_beyond_one_kib"] = json!((kib * 10.0).round() / 10.0);
    }
}

/// N subscribers on one gateway at a fixed rate: delivered events/s, loss, memory. Loss compares
/// sequences: each subscriber's delivered sequences against those of the acknowledged webhooks.
async fn fan_out(settings: &Settings, subscribers: usize) -> Value {
    let data_dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(data_dir.path()).await;
    let token = gateway.token().await;
    let target = Target {
        addr: gateway.public,
        path: PATH.into(),
        authorization: Some(format!("Bearer {token}")),
        body: body("fanout"),
    };
    // The warm-up's notifications are told apart from the measured ones by their interview ids.
    let warm_up = Target {
        body: body("fanout-warm"),
        ..target.clone()
    };
    // Warm the gateway up before taking its resting memory: more events than the log keeps in
    // its in-memory tail, delivered to one subscriber, so that the tail's memory (each event
    // with the encoding all its subscribers share) is in the baseline, not charged to the
    // subscribers measured.
    let mut warm = gateway
        .client()
        .await
        .subscribe(latest())
        .await
        .unwrap()
        .into_inner();
    let warm_reader = tokio::spawn(async move { while let Ok(Some(_)) = warm.message().await {} });
    load::open_loop(warm_up, 8, 2000, Duration::from_secs(5)).await;
    warm_reader.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = gateway.rss();

    // Subscribers share HTTP/2 connections, as services with several workers do.
    let connections = subscribers.div_ceil(20).max(1);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(gateway.channel().await);
    }
    let received = Arc::new(AtomicU64::new(0));
    let last_receipt = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..subscribers {
        let mut client =
            incode_gateway::proto::v1::event_stream_service_client::EventStreamServiceClient::new(
                channels[i % connections].clone(),
            );
        let mut stream = client.subscribe(latest()).await.unwrap().into_inner();
        let received = received.clone();
        let last_receipt = last_receipt.clone();
        readers.push(tokio::spawn(async move {
            let mut delivered = Delivered::default();
            while let Ok(Some(message)) = stream.message().await {
                if let Some(Response::Event(event)) = message.response {
                    delivered.record(event.sequence);
                    received.fetch_add(1, Ordering::Relaxed);
                    last_receipt.store(micros_since_epoch(), Ordering::Relaxed);
                }
            }
            delivered
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = gateway.rss();

    let started = micros_since_epoch();
    let perf = settings
        .perf
        .then(|| tokio::spawn(crate::perf::cpu_time(gateway.pid(), settings.duration)));
    let received_before = received.load(Ordering::Relaxed);
    let acks = load::open_loop(target, 16, settings.rate, settings.duration).await;
    let received_in_window = received.load(Ordering::Relaxed) - received_before;
    let cpu = match perf {
        Some(counting) => counting.await.ok().flatten(),
        None => None,
    };
    let per_delivery = cpu.map(|cpu| cpu.as_secs_f64() * 1e9 / received_in_window.max(1) as f64);
    if let Some(per_delivery) = per_delivery {
        println!(
            "  perf: {per_delivery:.0} ns of gateway CPU time per delivered event while the load ran"
        );
    }
    // Counts only tell when to stop waiting; loss is judged by sequence below.
    let expected = acks.ok * subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_loaded = gateway.rss();
    let total = received.load(Ordering::Relaxed);
    let elapsed = (last_receipt.load(Ordering::Relaxed).saturating_sub(started)) as f64 / 1e6;
    let delivered_rate = total as f64 / elapsed.max(1e-9);

    // Which sequences were acknowledged: the log says what each acknowledged body became.
    let stored = stored_sequences(&gateway).await;
    let mut acknowledged = Vec::with_capacity(acks.acknowledged.len());
    let mut acknowledged_not_stored = 0u64;
    for n in &acks.acknowledged {
        match stored.get(n) {
            Some(&sequence) => acknowledged.push(sequence),
            None => acknowledged_not_stored += 1,
        }
    }
    acknowledged.sort_unstable();
    let stored_unacknowledged = stored.len() as u64 - acknowledged.len() as u64;
    gateway.stop().await;
    let (mut lost, mut subscribers_with_loss, mut out_of_order) = (0u64, 0u64, 0u64);
    for reader in readers {
        let delivered = reader.await.unwrap();
        out_of_order += delivered.out_of_order;
        let missing = delivered.missing(&acknowledged) + acknowledged_not_stored;
        lost += missing;
        subscribers_with_loss += u64::from(missing > 0);
    }
    let per_subscriber =
        |rss: u64| rss.saturating_sub(rss_before) as f64 / subscribers as f64 / 1024.0;
    println!(
        "fan-out: {subscribers:>5} subscribers at {} events/s: {:>9.0} delivered/s, lost {lost} (acknowledged sequences missing, over {subscribers_with_loss} subscribers), out of order {out_of_order}, RSS/subscriber {:.1} KiB connected, {:.1} KiB after load (target 0 lost, <= 64 KiB)",
        settings.rate,
        delivered_rate,
        per_subscriber(rss_connected),
        per_subscriber(rss_loaded),
    );
    json!({
        "subscribers": subscribers,
        "offered_rate": settings.rate,
        "acknowledged": acks.ok,
        "delivered": total,
        "lost": lost,
        "subscribers_with_loss": subscribers_with_loss,
        "out_of_order": out_of_order,
        "acknowledged_not_stored": acknowledged_not_stored,
        "stored_unacknowledged": stored_unacknowledged,
        "delivered_per_second": delivered_rate.round(),
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "rss_after_load_bytes": rss_loaded,
        "rss_per_subscriber_connected_kib": (per_subscriber(rss_connected) * 10.0).round() / 10.0,
        "rss_per_subscriber_after_load_kib": (per_subscriber(rss_loaded) * 10.0).round() / 10.0,
        "cpu_ns_per_delivery": per_delivery.map(f64::round),
    })
}

/// Replay of a stored log to one subscriber from the earliest event.
async fn catch_up(settings: &Settings) -> Value {
    let events = settings.catch_up_events;
    let data_dir = tempfile::tempdir().unwrap();
    let filled = Instant::now();
    {
        let log = Arc::new(
            EmbeddedLog::open(
                data_dir.path(),
                EmbeddedSettings::new(Duration::from_secs(3600)),
            )
            .unwrap(),
        );
        let next = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..512)
            .map(|_| {
                let log = log.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= events {
                            break;
                        }
                        let body = format!(r#"{{"interviewId":"catchup-{n}","onboardingStatus":"ONBOARDING_FINISHED"}}"#);
                        let notification = incode_gateway::incode::Notification::decode(
                            &incode_gateway::incode::Endpoint::OnboardingStatus,
                            body.as_bytes(),
                        )
                        .unwrap();
                        let event = v1::Event {
                            id: uuid::Uuid::now_v7().to_string(),
                            r#type: notification.event_type().into(),
                            payload: Some(notification.into()),
                            ..Default::default()
                        };
                        log.append(NewEvent {
                            dedup_key: DedupKey::for_notification("onboarding-status", body.as_bytes()),
                            event,
                        })
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        log.close().await.unwrap();
    }
    println!(
        "catch-up: stored {events} events in {:.1} s ({:.0} appends/s through the log API)",
        filled.elapsed().as_secs_f64(),
        events as f64 / filled.elapsed().as_secs_f64()
    );
    let gateway = GatewayProcess::start(data_dir.path()).await;
    let mut stream = gateway
        .client()
        .await
        .subscribe(SubscribeRequest {
            start: Some(StartPosition {
                position: Some(Position::Earliest(v1::start_position::Earliest {})),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let mut received = 0u64;
    while let Some(message) = stream.message().await.unwrap() {
        match message.response {
            Some(Response::Event(_)) => received += 1,
            Some(Response::CaughtUp(_)) => break,
            _ => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = received as f64 / elapsed;
    println!(
        "  replay to one subscriber           {rate:>9.0} events/s  ({received} events in {elapsed:.2} s; target >= 500000)"
    );
    gateway.stop().await;
    json!({
        "events": received,
        "seconds": elapsed,
        "events_per_second": rate.round(),
    })
}
