//! The gateway over NATS JetStream against the peer a user could wire up instead: the raw
//! JetStream publish-with-ack rate on the same server, at the same concurrency, with the same
//! deduplication header, measured with async-nats from this process. At R1 (one node) and at R3
//! (a three-node cluster).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    Settings,
    gateway::GatewayProcess,
    load::{self, Target},
    nats_server::{NatsCluster, NatsServer},
    scenarios::{PATH, body, print_load},
};

/// Bytes of each raw message: about the size of an encoded event.
const MESSAGE_BYTES: usize = 300;

pub async fn run(settings: &Settings) -> Value {
    println!(
        "nats: gateway over JetStream vs raw publish-with-ack, {} in flight",
        settings.connections
    );
    let single = NatsServer::start().await;
    let r1 = compare(settings, "R1, one node", &single.url(), 1).await;
    drop(single);
    let cluster = NatsCluster::start().await;
    let r3 = compare(settings, "R3, three nodes", &cluster.urls(), 3).await;
    drop(cluster);
    json!({ "r1": r1, "r3": r3 })
}

async fn compare(settings: &Settings, name: &str, urls: &str, replicas: u8) -> Value {
    let data_dir = tempfile::tempdir().unwrap();
    let replicas_arg = replicas.to_string();
    let gateway = GatewayProcess::start_with(
        data_dir.path(),
        &[
            "--storage",
            "nats",
            "--nats-url",
            urls,
            "--nats-replicas",
            &replicas_arg,
        ],
    )
    .await;
    let token = gateway.token().await;
    let target = Target {
        addr: gateway.public,
        path: PATH.into(),
        authorization: Some(format!("Bearer {token}")),
        body: body("nats"),
    };
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let jetstream = jetstream::new(client);
    jetstream
        .create_stream(stream::Config {
            name: "RAW".to_owned(),
            subjects: vec!["raw.events".to_owned()],
            num_replicas: usize::from(replicas),
            duplicate_window: Duration::from_secs(24 * 3600),
            ..stream::Config::default()
        })
        .await
        .unwrap();

    load::closed_loop(target.clone(), settings.connections, Duration::from_secs(1)).await;
    raw_publish(&jetstream, settings.connections, Duration::from_secs(1), 0).await;
    let mut rounds = Vec::new();
    for round in 1..=2u64 {
        let raw = raw_publish(
            &jetstream,
            settings.connections,
            settings.duration,
            round * 1_000_000_000,
        )
        .await;
        println!("  {name}: round {round} raw JetStream publish-with-ack {raw:>9.0} msg/s");
        let real = load::closed_loop(target.clone(), settings.connections, settings.duration).await;
        print_load(&format!("{name}: round {round} gateway"), &real);
        rounds.push((raw, real));
    }
    let raw_rate = rounds.iter().map(|(raw, _)| raw).sum::<f64>() / 2.0;
    let gateway_rate = rounds.iter().map(|(_, real)| real.rate()).sum::<f64>() / 2.0;
    let ratio = gateway_rate / raw_rate;
    println!(
        "  {name}: gateway / raw JetStream: {ratio:.2}{}",
        if replicas == 1 {
            " (target >= 0.60)"
        } else {
            ""
        }
    );
    gateway.stop().await;
    json!({
        "raw_msgs_per_second": raw_rate.round(),
        "gateway_rps": gateway_rate.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "gateway_p50_ms": rounds[1].1.percentile_ms(0.5),
        "gateway_p99_ms": rounds[1].1.percentile_ms(0.99),
    })
}

/// Publishes-with-ack from `in_flight` tasks for `duration`; acknowledged messages per second.
async fn raw_publish(
    jetstream: &jetstream::Context,
    in_flight: usize,
    duration: Duration,
    first_id: u64,
) -> f64 {
    let started = Instant::now();
    let deadline = started + duration;
    let next_id = Arc::new(AtomicU64::new(first_id));
    let acked = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (jetstream, next_id, acked, payload) = (
                jetstream.clone(),
                next_id.clone(),
                acked.clone(),
                payload.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let publish = PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(format!("{id:064x}"));
                    let ack = jetstream.send_publish("raw.events", publish).await;
                    if let Ok(ack) = ack
                        && ack.await.is_ok()
                    {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
