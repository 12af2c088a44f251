//! A consumer group of four members working through stored events, each member acknowledging
//! every event it handles: events/s through the group, on the embedded log.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use incode_gateway::proto::v1::{
    AckRequest, SubscribeRequest, event_stream_service_client::EventStreamServiceClient,
    subscribe_response::Response,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::{
    Settings,
    gateway::GatewayProcess,
    load::{self, Target},
    scenarios::{PATH, body},
};

const MEMBERS: usize = 4;
/// Acks a member keeps outstanding while it goes on handling events.
const PIPELINED_ACKS: usize = 32;

pub async fn run(settings: &Settings) -> Value {
    let data_dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(data_dir.path()).await;
    let token = gateway.token().await;
    let target = Target {
        addr: gateway.public,
        path: PATH.into(),
        authorization: Some(format!("Bearer {token}")),
        body: body("group"),
    };
    let stored = load::closed_loop(target, 32, settings.duration.min(Duration::from_secs(5)))
        .await
        .ok;
    println!("group: {MEMBERS} members, per-event acks, {stored} stored events from the earliest");

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let started = Instant::now();
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let channel = gateway.channel().await;
        let seen = seen.clone();
        members.push(tokio::spawn(async move {
            let mut client = EventStreamServiceClient::new(channel);
            let mut stream = client
                .subscribe(SubscribeRequest {
                    group: "bench".into(),
                    group_partitions: 16,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let outstanding = Arc::new(Semaphore::new(PIPELINED_ACKS));
            let mut member_id = String::new();
            let mut handled = 0u64;
            while let Ok(Some(message)) = stream.message().await {
                match message.response {
                    Some(Response::GroupAssignment(assignment)) => member_id = assignment.member_id,
                    Some(Response::Event(event)) => {
                        handled += 1;
                        let done = {
                            let mut seen = seen.lock().unwrap();
                            seen.insert(event.sequence);
                            seen.len() as u64 >= stored
                        };
                        let permit = outstanding.clone().acquire_owned().await.unwrap();
                        let mut client = client.clone();
                        let request = AckRequest {
                            group: "bench".into(),
                            member_id: member_id.clone(),
                            sequence: event.sequence,
                            ..Default::default()
                        };
                        tokio::spawn(async move {
                            let _ = client.ack(request).await;
                            drop(permit);
                        });
                        if done {
                            break;
                        }
                    }
                    _ => {}
                }
                if seen.lock().unwrap().len() as u64 >= stored {
                    break;
                }
            }
            // Every ack of this member has completed.
            let _ = outstanding.acquire_many(PIPELINED_ACKS as u32).await;
            handled
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (seen.lock().unwrap().len() as u64) < stored && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    gateway.stop().await;
    let per_member: Vec<u64> = futures::future::join_all(members)
        .await
        .into_iter()
        .map(|handled| handled.unwrap_or(0))
        .collect();
    let handled = seen.lock().unwrap().len() as u64;
    let rate = handled as f64 / elapsed.as_secs_f64();
    println!(
        "  {handled} of {stored} events handled and acked in {elapsed:.2?}: {rate:>9.0} events/s (per member {per_member:?})"
    );
    json!({
        "members": MEMBERS,
        "events": stored,
        "handled": handled,
        "events_per_second": rate.round(),
        "per_member": per_member,
    })
}
