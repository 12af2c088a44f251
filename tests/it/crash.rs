//! Kills the gateway process with SIGKILL while webhooks arrive, restarts it on the same data
//! directory, and checks that every acknowledged notification is stored exactly once, in order.
//! Only a broken or refused connection counts as the crash; any answer but `200` fails the test.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::support::common::*;
use reqwest::StatusCode;

const WRITERS: usize = 6;
const ROUNDS: usize = 5;
/// A live gateway answers long before this; only a hang reaches it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Replays the kill delays of an earlier run: `CRASH_TEST_SEED=<seed printed by that run>`.
const SEED_VARIABLE: &str = "CRASH_TEST_SEED";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_exactly_once_in_order() {
    let seed = match std::env::var(SEED_VARIABLE) {
        Ok(seed) => seed.parse().expect("CRASH_TEST_SEED is a number"),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("crash test seed {seed} (replay with {SEED_VARIABLE}={seed})");
    let mut random = fastrand::Rng::with_seed(seed);

    let data_dir = tempfile::tempdir().unwrap();
    // Per writer: notifications acknowledged, in the order they were sent.
    let acknowledged: Arc<Mutex<Vec<Vec<String>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); WRITERS]));
    let acknowledged_count = Arc::new(AtomicUsize::new(0));
    // Per writer: the notification whose answer was lost in the crash, retried as Incode would.
    let mut unanswered: Vec<Option<String>> = vec![None; WRITERS];
    let mut next_id = 0usize;

    for round in 0..ROUNDS {
        let mut process = GatewayProcess::spawn(data_dir.path(), &[]).await;
        let snapshot = acknowledged.lock().unwrap().clone();
        verify(&process, &snapshot).await;
        let before_round = acknowledged_count.load(Ordering::SeqCst);

        let http = reqwest::Client::new();
        let mut writers = Vec::new();
        for (writer, retry) in unanswered.iter_mut().enumerate() {
            let http = http.clone();
            let url = format!("{}/webhooks/incode/onboarding-status", process.base_url);
            let acknowledged = acknowledged.clone();
            let acknowledged_count = acknowledged_count.clone();
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
                        .timeout(ANSWER_TIMEOUT)
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                            let id = value["interviewId"].as_str().unwrap().to_owned();
                            acknowledged.lock().unwrap()[writer].push(id);
                            acknowledged_count.fetch_add(1, Ordering::SeqCst);
                        }
                        // Any other answer is a bug: a crash answers nothing.
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            panic!("round {round}, writer {writer}: answered {status}: {text}");
                        }
                        Err(error) if error.is_timeout() => {
                            panic!("round {round}, writer {writer}: no answer in time: {error}")
                        }
                        // The connection broke or was refused: the process died. This one is
                        // retried in the next round.
                        Err(_) => return Some(body),
                    }
                }
                None
            }));
        }

        // Every round acknowledges something before the crash, then runs a random while more.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while acknowledged_count.load(Ordering::SeqCst) == before_round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round} acknowledged nothing"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = random.u64(0..600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
        for (writer, task) in writers.into_iter().enumerate() {
            unanswered[writer] = task.await.unwrap();
        }
        eprintln!(
            "round {round}: killed after {delay} ms more, {} acknowledged",
            acknowledged_count.load(Ordering::SeqCst) - before_round
        );
    }

    let process = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let snapshot = acknowledged.lock().unwrap().clone();
    let stored = verify(&process, &snapshot).await;
    let acked: usize = snapshot.iter().map(Vec::len).sum();
    let distinct: HashSet<_> = snapshot.iter().flatten().collect();
    assert_eq!(distinct.len(), acked);
    eprintln!("{ROUNDS} crashes: {acked} acknowledged, {stored} stored");
}

/// A durable consumer's cursor is stored when `Ack` answers: SIGKILL right after it loses
/// nothing, and the consumer resumes after the acknowledged sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumers_cursor_survives_sigkill() {
    use incode_gateway::proto::v1::{AckRequest, SubscribeRequest};

    let data_dir = tempfile::tempdir().unwrap();
    let mut process = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let http = http_client();
    for n in 1..=5 {
        let response = http
            .post(format!(
                "{}/webhooks/incode/onboarding-status",
                process.base_url
            ))
            .header("content-type", "application/json")
            .body(onboarding_body(&format!("c-{n}"), "UNKNOWN"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    for (acked, expected) in [(3, vec![4, 5]), (5, vec![])] {
        let answer = process
            .client()
            .await
            .ack(AckRequest {
                consumer: "billing".into(),
                sequence: acked,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.sequence, acked);
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();

        process = GatewayProcess::spawn(data_dir.path(), &[]).await;
        let request = SubscribeRequest {
            consumer: "billing".into(),
            ..Default::default()
        };
        let mut stream = process
            .client()
            .await
            .subscribe(request)
            .await
            .unwrap()
            .into_inner();
        let sequences: Vec<_> = drain_until_caught_up(&mut stream)
            .await
            .iter()
            .map(|event| event.sequence)
            .collect();
        assert_eq!(sequences, expected, "after acking {acked} and a SIGKILL");
    }
}
