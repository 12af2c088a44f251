//! Kills the gateway process with SIGKILL while webhooks arrive, restarts it on the same data
//! directory, and checks that every acknowledged notification is stored exactly once, in order.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::*;
use reqwest::StatusCode;

const WRITERS: usize = 6;
const ROUNDS: usize = 5;

/// Reads the whole log from `earliest` and checks it against what was acknowledged.
async fn verify(process: &GatewayProcess, acknowledged: &[Vec<String>]) -> usize {
    let mut client = process.client().await;
    let request = incode_gateway::proto::v1::SubscribeRequest {
        start: earliest().map(|position| incode_gateway::proto::v1::StartPosition {
            position: Some(position),
        }),
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let events = drain_until_caught_up(&mut stream).await;

    let mut position = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.sequence, index as u64 + 1, "sequences have a gap");
        let id = interview_id(event).to_owned();
        assert!(
            position.insert(id.clone(), event.sequence).is_none(),
            "{id} is stored twice"
        );
    }
    for (writer, ids) in acknowledged.iter().enumerate() {
        let mut previous = 0;
        for id in ids {
            let sequence = *position
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged {id} (writer {writer}) is lost"));
            assert!(sequence > previous, "{id} is out of order");
            previous = sequence;
        }
    }
    events.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_exactly_once_in_order() {
    let data_dir = tempfile::tempdir().unwrap();
    let random = RandomState::new();
    // Per writer: notifications acknowledged, in the order they were sent.
    let acknowledged: Arc<Mutex<Vec<Vec<String>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); WRITERS]));
    // Per writer: the notification whose answer was lost in the crash, retried as Incode would.
    let mut unanswered: Vec<Option<String>> = vec![None; WRITERS];
    let mut next_id = 0usize;

    for round in 0..ROUNDS {
        let mut process = GatewayProcess::spawn(data_dir.path(), &[]).await;
        let snapshot = acknowledged.lock().unwrap().clone();
        verify(&process, &snapshot).await;

        let http = http_client();
        let mut writers = Vec::new();
        for (writer, retry) in unanswered.iter_mut().enumerate() {
            let http = http.clone();
            let url = format!("{}/webhooks/incode/onboarding-status", process.base_url);
            let acknowledged = acknowledged.clone();
            let first = next_id;
            next_id += 1_000_000;
            let retry = retry.take();
            writers.push(tokio::spawn(async move {
                let bodies =
                    retry.into_iter().chain((first..).map(|n| {
                        onboarding_body(&format!("w{writer}-n{n}"), "ONBOARDING_FINISHED")
                    }));
                for body in bodies {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                            let id = value["interviewId"].as_str().unwrap().to_owned();
                            acknowledged.lock().unwrap()[writer].push(id);
                        }
                        // The process died: this one is retried in the next round.
                        _ => return Some(body),
                    }
                }
                None
            }));
        }

        let delay = 150 + random.hash_one(round) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
        for (writer, task) in writers.into_iter().enumerate() {
            unanswered[writer] = task.await.unwrap();
        }
    }

    let process = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let snapshot = acknowledged.lock().unwrap().clone();
    let stored = verify(&process, &snapshot).await;
    let acked: usize = snapshot.iter().map(Vec::len).sum();
    let distinct: HashSet<_> = snapshot.iter().flatten().collect();
    assert_eq!(distinct.len(), acked);
    assert!(acked > 0, "no notification was acknowledged at all");
    eprintln!("{ROUNDS} crashes: {acked} acknowledged, {stored} stored");
}
