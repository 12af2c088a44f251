//! Several gateway replicas over one NATS JetStream log: shared order, deduplication across
//! replicas, a stream leader killed under load, a replica killed under a subscriber, cursors
//! shared between replicas, and the whole cluster going down and coming back.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use incode_gateway::proto::v1::{
    self, AckRequest, StartPosition, SubscribeRequest, start_position::Position,
    subscribe_response::Response,
};
use reqwest::StatusCode;

use crate::support::{
    common::*,
    nats_server::{NatsCluster, NatsServer},
};

const PATH: &str = "/webhooks/incode/onboarding-status";

/// A gateway replica over NATS at `urls`, as a child process.
async fn replica(urls: &str, replicas: u8) -> GatewayProcess {
    let data_dir = tempfile::tempdir().unwrap();
    let process = GatewayProcess::spawn_with(
        data_dir.path(),
        &[
            "--allow-unauthenticated-webhooks",
            "--storage",
            "nats",
            "--nats-url",
            urls,
            "--nats-replicas",
            &replicas.to_string(),
            "--nats-publish-timeout",
            "2s",
        ],
        &[],
    )
    .await;
    // The data directory is not used with NATS; it may go.
    drop(data_dir);
    process
}

/// Posts a notification to a replica; the status, or `None` when the call failed outright.
async fn post(http: &reqwest::Client, replica: &GatewayProcess, body: &str) -> Option<StatusCode> {
    http.post(format!("{}{PATH}", replica.base_url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|response| response.status())
}

async fn readyz(http: &reqwest::Client, replica: &GatewayProcess) -> Option<StatusCode> {
    http.get(format!("{}/readyz", replica.base_url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|response| response.status())
}

fn from_earliest() -> SubscribeRequest {
    SubscribeRequest {
        start: earliest().map(|position| StartPosition {
            position: Some(position),
        }),
        ..SubscribeRequest::default()
    }
}

/// A subscription through `replica` from the earliest event.
async fn stream_from_earliest(replica: &GatewayProcess) -> tonic::Streaming<v1::SubscribeResponse> {
    replica
        .client()
        .await
        .subscribe(from_earliest())
        .await
        .unwrap()
        .into_inner()
}

/// Every stored event, read through `replica` from the earliest. Right after a leader change
/// (and on a busy machine) creating the reader's consumer can take a while: the patience here is
/// for the whole read, and longer than one message's.
async fn all_events(replica: &GatewayProcess) -> Vec<v1::Event> {
    let read = async {
        let mut stream = stream_from_earliest(replica).await;
        let mut events = Vec::new();
        while let Some(message) = stream.message().await.unwrap() {
            match message.response {
                Some(Response::Event(event)) => events.push(event),
                Some(Response::CaughtUp(_)) => return events,
                _ => {}
            }
        }
        panic!("the stream ended before caught_up");
    };
    tokio::time::timeout(PATIENCE * 6, read)
        .await
        .expect("the replica did not deliver the stored events in time")
}

/// A subscription from the earliest event that keeps what it receives, for a look at it later.
struct LiveSubscriber {
    received: Arc<Mutex<Vec<(u64, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveSubscriber {
    async fn start(replica: &GatewayProcess) -> Self {
        let mut stream = stream_from_earliest(replica).await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        if let Some(Response::Event(event)) = message.response {
                            let id = interview_id(&event).to_owned();
                            kept.lock().unwrap().push((event.sequence, id));
                        }
                    }
                    Ok(None) => panic!("the live stream ended"),
                    Err(status) => panic!("the live stream failed: {status}"),
                }
            }
        });
        Self { received, task }
    }

    fn events(&self) -> Vec<(u64, String)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `count` events were received, at most until `deadline`; how long it took
    /// from the call, or how many had arrived at the deadline.
    async fn wait_for(&self, count: usize, deadline: Instant) -> Result<Duration, usize> {
        let started = Instant::now();
        loop {
            let got = self.received.lock().unwrap().len();
            if got >= count {
                return Ok(started.elapsed());
            }
            if self.task.is_finished() || Instant::now() > deadline {
                return Err(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LiveSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ids(events: &[v1::Event]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|event| (event.sequence, interview_id(event).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_order_and_retries_to_either_make_one_event() {
    let cluster = NatsCluster::start().await;
    let a = replica(&cluster.urls(), 3).await;
    let b = replica(&cluster.urls(), 3).await;
    let http = http_client();

    for i in 0..20 {
        let target = if i % 2 == 0 { &a } else { &b };
        let body = onboarding_body(&format!("alt-{i}"), "ONBOARDING_FINISHED");
        assert_eq!(post(&http, target, &body).await, Some(StatusCode::OK));
    }
    // Incode's retry reaching the other replica, one after the other and racing.
    let sequential = onboarding_body("retry-sequential", "UNKNOWN");
    assert_eq!(post(&http, &a, &sequential).await, Some(StatusCode::OK));
    assert_eq!(post(&http, &b, &sequential).await, Some(StatusCode::OK));
    let racing = onboarding_body("retry-racing", "UNKNOWN");
    let (first, second) = tokio::join!(post(&http, &a, &racing), post(&http, &b, &racing));
    assert_eq!(
        (first, second),
        (Some(StatusCode::OK), Some(StatusCode::OK))
    );

    let through_a = ids(&all_events(&a).await);
    let through_b = ids(&all_events(&b).await);
    assert_eq!(through_a, through_b, "both replicas serve one order");
    assert_eq!(
        through_a
            .iter()
            .map(|(sequence, _)| *sequence)
            .collect::<Vec<_>>(),
        (1..=22).collect::<Vec<_>>()
    );
    let expected: Vec<_> = (0..20)
        .map(|i| format!("alt-{i}"))
        .chain(["retry-sequential".to_owned(), "retry-racing".to_owned()])
        .collect();
    let stored: Vec<_> = through_a.into_iter().map(|(_, id)| id).collect();
    assert_eq!(stored, expected);

    // A live subscriber on one replica sees what the other ingests.
    let mut live = b
        .client()
        .await
        .subscribe(SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let body = onboarding_body("live-through-a", "UNKNOWN");
    // The subscription starts at the head when Subscribe returns; post until it is seen.
    assert_eq!(post(&http, &a, &body).await, Some(StatusCode::OK));
    let event = next_event(&mut live).await;
    assert_eq!(
        (event.sequence, interview_id(&event)),
        (23, "live-through-a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_under_load_loses_and_repeats_nothing() {
    const SENDERS: usize = 4;
    let mut cluster = NatsCluster::start().await;
    let replicas = Arc::new([
        replica(&cluster.urls(), 3).await,
        replica(&cluster.urls(), 3).await,
    ]);
    let http = http_client();
    let acknowledged: Arc<Mutex<Vec<Vec<String>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); SENDERS]));
    // When any call failed (503 or no answer): the window Incode would see.
    let failures: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    // A live subscriber on each replica, streaming from the first event through the kill.
    let live: Vec<_> = replicas.iter().map(LiveSubscriber::start).collect();
    let live = futures::future::join_all(live).await;

    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (http, replicas, acknowledged, failures, stop) = (
            http.clone(),
            replicas.clone(),
            acknowledged.clone(),
            failures.clone(),
            stop.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut attempt = sender;
            for n in 0.. {
                if stop.is_cancelled() {
                    return;
                }
                let id = format!("s{sender}-n{n}");
                let body = onboarding_body(&id, "ONBOARDING_FINISHED");
                // Like Incode: the identical body again until it is acknowledged (here at
                // once, alternating replicas, rather than after 30 s).
                loop {
                    attempt += 1;
                    let target = &replicas[attempt % 2];
                    if post(&http, target, &body).await == Some(StatusCode::OK) {
                        acknowledged.lock().unwrap()[sender].push(id);
                        break;
                    }
                    failures.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill: usize = acknowledged.lock().unwrap().iter().map(Vec::len).sum();
    let leader = cluster.stream_leader("INCODE_EVENTS").await;
    let killed_at = Instant::now();
    cluster.node_mut(&leader).kill().await;
    // Keep the load on until every sender has been acknowledged again after the kill, and a
    // little longer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after: usize = acknowledged.lock().unwrap().iter().map(Vec::len).sum();
        if after >= before_kill + 50 && killed_at.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for sender in senders {
        tokio::time::timeout(Duration::from_secs(60), sender)
            .await
            .expect("a sender hung")
            .unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    // A fresh subscriber reads everything; a live one may take a few seconds more (its own
    // consumer has to notice the leader change), not a minute.
    let fresh_started = Instant::now();
    let events = all_events(&replicas[0]).await;
    let fresh_took = fresh_started.elapsed();
    let expected = ids(&events);
    let live_deadline = Instant::now() + Duration::from_secs(5);
    for (replica, live) in live.into_iter().enumerate() {
        let live_took = live
            .wait_for(expected.len(), live_deadline)
            .await
            .unwrap_or_else(|got| {
                let seen: HashSet<_> = live.events().into_iter().collect();
                let missing: Vec<_> = expected.iter().filter(|id| !seen.contains(id)).collect();
                panic!(
                    "the live subscriber of replica {replica} had {got} of {} events 5 s after \
                     a fresh one had them all (in {fresh_took:?}); the first missing: {:?}",
                    expected.len(),
                    &missing[..missing.len().min(5)],
                )
            });
        assert_eq!(
            live.events(),
            expected,
            "replica {replica}'s live subscriber saw the stored order, no gap, no repeat"
        );
        eprintln!(
            "replica {replica}: the live subscriber had every event {live_took:?} after the fresh \
             one, which took {fresh_took:?}"
        );
    }
    let mut position = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.sequence,
            index as u64 + 1,
            "sequences are consecutive"
        );
        let id = interview_id(event).to_owned();
        assert!(
            position.insert(id.clone(), event.sequence).is_none(),
            "{id} twice"
        );
    }
    let mut total = 0;
    for ids in &acknowledged {
        let mut previous = 0;
        for id in ids {
            let sequence = *position
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged {id} was lost"));
            assert!(sequence > previous, "{id} is out of its sender's order");
            previous = sequence;
            total += 1;
        }
    }
    // Every sender retried until acknowledged, so nothing else is stored either.
    assert_eq!(total, events.len());
    let failures = failures.lock().unwrap().clone();
    let window = match (failures.first(), failures.last()) {
        (Some(first), Some(last)) => last.duration_since(*first),
        _ => Duration::ZERO,
    };
    eprintln!(
        "stream leader {leader} killed under load: {total} notifications acknowledged, each stored once; \
         {} failed calls (503 or no answer) over a window of {window:?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_killed_replica_resumes_on_the_other_without_gap_or_repeat() {
    let nats = NatsServer::start().await;
    let mut a = replica(&nats.url(), 1).await;
    let b = replica(&nats.url(), 1).await;
    let http = http_client();
    for i in 0..10 {
        let body = onboarding_body(&format!("before-{i}"), "UNKNOWN");
        assert_eq!(post(&http, &b, &body).await, Some(StatusCode::OK));
    }

    let mut stream = a
        .client()
        .await
        .subscribe(from_earliest())
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_event(&mut stream).await.sequence);
    }
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    // The stream breaks; whatever was still buffered is fine to take, then it fails.
    loop {
        match tokio::time::timeout(PATIENCE, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if let Some(Response::Event(event)) = message.response {
                    seen.push(event.sequence);
                }
            }
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => panic!("the stream of a killed replica stayed open"),
        }
    }
    for i in 0..5 {
        let body = onboarding_body(&format!("after-{i}"), "UNKNOWN");
        assert_eq!(post(&http, &b, &body).await, Some(StatusCode::OK));
    }
    let last = *seen.last().unwrap();
    let mut resumed = b
        .client()
        .await
        .subscribe(SubscribeRequest {
            start: Some(StartPosition {
                position: Some(Position::AfterSequence(last)),
            }),
            ..SubscribeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    seen.extend(
        drain_until_caught_up(&mut resumed)
            .await
            .iter()
            .map(|e| e.sequence),
    );
    assert_eq!(seen, (1..=15).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_acked_on_one_replica_resumes_on_the_other() {
    let nats = NatsServer::start().await;
    let a = replica(&nats.url(), 1).await;
    let b = replica(&nats.url(), 1).await;
    let http = http_client();
    for i in 0..5 {
        let body = onboarding_body(&format!("c-{i}"), "UNKNOWN");
        assert_eq!(post(&http, &a, &body).await, Some(StatusCode::OK));
    }
    let ack = |sequence| AckRequest {
        consumer: "billing".into(),
        sequence,
        ..Default::default()
    };
    assert_eq!(
        a.client()
            .await
            .ack(ack(3))
            .await
            .unwrap()
            .into_inner()
            .sequence,
        3
    );
    // An older ack through the other replica does not move the cursor back.
    assert_eq!(
        b.client()
            .await
            .ack(ack(2))
            .await
            .unwrap()
            .into_inner()
            .sequence,
        3
    );
    let mut resumed = b
        .client()
        .await
        .subscribe(SubscribeRequest {
            consumer: "billing".into(),
            ..SubscribeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let events = drain_until_caught_up(&mut resumed).await;
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [4, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_whole_cluster_down_webhooks_get_503_and_both_replicas_recover() {
    let mut cluster = NatsCluster::start().await;
    let a = replica(&cluster.urls(), 3).await;
    let b = replica(&cluster.urls(), 3).await;
    let http = http_client();
    let mut acknowledged = Vec::new();
    for i in 0..4 {
        let id = format!("up-{i}");
        let target = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            post(&http, target, &onboarding_body(&id, "UNKNOWN")).await,
            Some(StatusCode::OK)
        );
        acknowledged.push(id);
    }
    // A subscriber that stays connected through the outage.
    let mut live = a
        .client()
        .await
        .subscribe(from_earliest())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drain_until_caught_up(&mut live).await.len(), 4);

    for node in &mut cluster.nodes {
        node.kill().await;
    }
    for replica in [&a, &b] {
        let body = onboarding_body("during-outage", "UNKNOWN");
        assert_eq!(
            post(&http, replica, &body).await,
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        // /readyz tells the latest of the replica's readiness checks, once a second (one that
        // gets no answer counts as not ready after 5 s).
        let deadline = Instant::now() + PATIENCE * 2;
        while readyz(&http, replica).await != Some(StatusCode::SERVICE_UNAVAILABLE) {
            assert!(
                Instant::now() < deadline,
                "a replica still says it is ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    for node in &mut cluster.nodes {
        node.restart().await;
    }
    // Both recover by themselves: ready again, and Incode's retry of the refused notification
    // is stored (once).
    let deadline = Instant::now() + Duration::from_secs(60);
    for replica in [&a, &b] {
        while readyz(&http, replica).await != Some(StatusCode::OK) {
            assert!(
                Instant::now() < deadline,
                "a replica never became ready again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for replica in [&a, &b] {
        let body = onboarding_body("during-outage", "UNKNOWN");
        let deadline = Instant::now() + Duration::from_secs(30);
        while post(&http, replica, &body).await != Some(StatusCode::OK) {
            assert!(Instant::now() < deadline, "webhooks never recovered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    acknowledged.push("during-outage".to_owned());
    let body = onboarding_body("after-outage", "UNKNOWN");
    assert_eq!(post(&http, &b, &body).await, Some(StatusCode::OK));
    acknowledged.push("after-outage".to_owned());

    let stored: Vec<_> = all_events(&b)
        .await
        .iter()
        .map(|e| interview_id(e).to_owned())
        .collect();
    assert_eq!(stored, acknowledged);
    // The subscriber connected through the outage sees the new events without resubscribing.
    let mut resumed = Vec::new();
    while resumed.len() < 2 {
        resumed.push(interview_id(&next_event(&mut live).await).to_owned());
    }
    assert_eq!(resumed, ["during-outage", "after-outage"]);
    let unique: HashSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len());
}
