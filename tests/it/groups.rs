//! Consumer groups, as members see them: sharing by interview, rebalancing when members come
//! and go, redelivery of what a departed member did not acknowledge, and fencing of a member
//! that lost its partition. Every scenario runs on the embedded log with one gateway, and over
//! NATS with members spread over two gateway replicas (acking through the other replica, too).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use incode_gateway::{
    ServeArgs,
    config::StorageKind,
    proto::v1::{
        self, AckRequest, SubscribeRequest, event_stream_service_client::EventStreamServiceClient,
        subscribe_response::Response,
    },
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::{Code, transport::Channel};

use crate::support::{common::*, nats_server::NatsServer};

const PATH: &str = "/webhooks/incode/onboarding-status";
const PARTITIONS: u32 = 12;

/// One gateway on the embedded log, or two replicas over one NATS server.
struct Env {
    gateways: Vec<Gateway>,
    _nats: Option<NatsServer>,
}

impl Env {
    fn config() -> ServeArgs {
        let mut config = ServeArgs::for_tests();
        config.group_session_timeout = Duration::from_secs(2);
        config.heartbeat_interval = Duration::from_millis(500);
        config
    }

    async fn embedded() -> Self {
        Self::embedded_with(Self::config()).await
    }

    async fn embedded_with(config: ServeArgs) -> Self {
        Self {
            gateways: vec![Gateway::start_with(config).await],
            _nats: None,
        }
    }

    async fn nats() -> Self {
        Self::nats_with(Self::config()).await
    }

    async fn nats_with(base: ServeArgs) -> Self {
        let nats = NatsServer::start().await;
        let mut gateways = Vec::new();
        for _ in 0..2 {
            let mut config = base.clone();
            config.storage = StorageKind::Nats;
            config.nats.urls = vec![nats.url()];
            gateways.push(Gateway::start_with(config).await);
        }
        Self {
            gateways,
            _nats: Some(nats),
        }
    }

    /// The gateway member `n` subscribes through, and the one it acks through.
    fn for_member(&self, n: usize) -> (&Gateway, &Gateway) {
        let count = self.gateways.len();
        (&self.gateways[n % count], &self.gateways[(n + 1) % count])
    }

    /// Posts `per_interview` events for each of `interviews` interviews, interleaved, through the
    /// gateways in turn.
    async fn post(&self, prefix: &str, interviews: usize, per_interview: usize) {
        let mut n = 0;
        for round in 0..per_interview {
            for interview in 0..interviews {
                let gateway = &self.gateways[n % self.gateways.len()];
                let body = serde_json::json!({
                    "interviewId": format!("{prefix}-{interview}"),
                    "onboardingStatus": "UNKNOWN",
                    "round": round,
                })
                .to_string();
                gateway.notify(PATH, &body).await;
                n += 1;
            }
        }
    }
}

/// A group member: a stream read in the background, acking each event unless told not to.
struct Member {
    name: String,
    assignment: watch::Receiver<Option<v1::GroupAssignment>>,
    received: Arc<Mutex<Vec<v1::Event>>>,
    acked: Arc<Mutex<Vec<u64>>>,
    refused: Arc<Mutex<Vec<(u64, Code)>>>,
    acking: Arc<AtomicBool>,
    ack_client: EventStreamServiceClient<Channel>,
    task: JoinHandle<()>,
}

impl Member {
    async fn join(name: &str, subscribe: &Gateway, ack: &Gateway, group: &str) -> Self {
        Self::join_through(name, subscribe.client().await, ack.client().await, group).await
    }

    /// Joins through one gateway's client, and acks through another's.
    async fn join_through(
        name: &str,
        mut subscribe: EventStreamServiceClient<Channel>,
        ack_client: EventStreamServiceClient<Channel>,
        group: &str,
    ) -> Self {
        let mut stream = subscribe
            .subscribe(SubscribeRequest {
                group: group.to_owned(),
                group_partitions: PARTITIONS,
                max_in_flight: 64,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (assignment_tx, assignment) = watch::channel(None);
        let received = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let acking = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let (received, acked, refused, acking, mut client) = (
                received.clone(),
                acked.clone(),
                refused.clone(),
                acking.clone(),
                ack_client.clone(),
            );
            let group = group.to_owned();
            async move {
                let mut member_id = String::new();
                while let Ok(Some(message)) = stream.message().await {
                    match message.response {
                        Some(Response::GroupAssignment(assigned)) => {
                            member_id = assigned.member_id.clone();
                            assignment_tx.send_replace(Some(assigned));
                        }
                        Some(Response::Event(event)) => {
                            let sequence = event.sequence;
                            received.lock().unwrap().push(event);
                            if acking.load(Ordering::SeqCst) {
                                let answer = client
                                    .ack(AckRequest {
                                        group: group.clone(),
                                        member_id: member_id.clone(),
                                        sequence,
                                        ..Default::default()
                                    })
                                    .await;
                                match answer {
                                    Ok(_) => acked.lock().unwrap().push(sequence),
                                    Err(status) => {
                                        refused.lock().unwrap().push((sequence, status.code()))
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        Self {
            name: name.to_owned(),
            assignment,
            received,
            acked,
            refused,
            acking,
            ack_client,
            task,
        }
    }

    fn partitions(&self) -> BTreeSet<u32> {
        self.assignment
            .borrow()
            .as_ref()
            .map(|a| a.partitions.iter().copied().collect())
            .unwrap_or_default()
    }

    fn member_id(&self) -> String {
        self.assignment
            .borrow()
            .as_ref()
            .map(|a| a.member_id.clone())
            .unwrap_or_default()
    }

    fn received(&self) -> Vec<v1::Event> {
        self.received.lock().unwrap().clone()
    }

    /// Goes away: the stream is dropped.
    fn leave(&self) {
        self.task.abort();
    }
}

/// Waits until the members' assignments cover every partition once and each sees them all.
async fn settled(members: &[&Member]) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let mut seen = BTreeMap::new();
        let mut disjoint = true;
        let mut agree = true;
        for member in members {
            let assignment = member.assignment.borrow().clone();
            let Some(assignment) = assignment else {
                agree = false;
                continue;
            };
            agree &= assignment.members as usize == members.len();
            for partition in assignment.partitions {
                disjoint &= seen.insert(partition, member.name.clone()).is_none();
            }
        }
        if agree && disjoint && seen.len() == PARTITIONS as usize {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group did not settle: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `members` together received every sequence in `1..=total` (at least once).
async fn all_received(members: &[&Member], total: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let seen: BTreeSet<u64> = members
            .iter()
            .flat_map(|m| m.received().into_iter().map(|e| e.sequence))
            .collect();
        if seen.len() as u64 == total {
            assert_eq!(seen, (1..=total).collect());
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} events reached the group",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For each member, its events of each interview arrived in sequence order.
fn in_order_per_interview(member: &Member) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for event in member.received() {
        let previous = last.insert(interview_id(&event).to_owned(), event.sequence);
        if let Some(previous) = previous {
            assert!(
                previous < event.sequence,
                "{}: {} out of order ({previous} then {})",
                member.name,
                interview_id(&event),
                event.sequence
            );
        }
    }
}

async fn three_members_share_the_stream_by_interview(env: Env) {
    let members = [
        Member::join("a", env.for_member(0).0, env.for_member(0).1, "billing").await,
        Member::join("b", env.for_member(1).0, env.for_member(1).1, "billing").await,
        Member::join("c", env.for_member(2).0, env.for_member(2).1, "billing").await,
    ];
    let refs: Vec<&Member> = members.iter().collect();
    settled(&refs).await;
    env.post("share", 30, 10).await;
    all_received(&refs, 300).await;

    // With no membership change, each event went to exactly one member, each interview to one
    // member, in order, and every member got a share.
    let mut owner_of_interview = HashMap::new();
    let mut deliveries = 0;
    for member in &members {
        let received = member.received();
        assert!(!received.is_empty(), "{} got no share", member.name);
        deliveries += received.len();
        for event in &received {
            let owner = owner_of_interview
                .entry(interview_id(event).to_owned())
                .or_insert(member.name.clone());
            assert_eq!(owner, &member.name, "{} split", interview_id(event));
        }
        in_order_per_interview(member);
        assert!(member.refused.lock().unwrap().is_empty());
    }
    assert_eq!(deliveries, 300, "an event reached two members");
    assert_eq!(owner_of_interview.len(), 30);
}

async fn a_departed_members_unacknowledged_events_reach_the_others(env: Env) {
    let a = Member::join("a", env.for_member(0).0, env.for_member(0).1, "audit").await;
    let b = Member::join("b", env.for_member(1).0, env.for_member(1).1, "audit").await;
    let c = Member::join("c", env.for_member(2).0, env.for_member(2).1, "audit").await;
    settled(&[&a, &b, &c]).await;

    // c takes its share and acknowledges nothing, then goes away mid-stream.
    c.acking.store(false, Ordering::SeqCst);
    env.post("leave", 30, 5).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c.received().len() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "c received nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unacked: BTreeSet<u64> = c.received().iter().map(|e| e.sequence).collect();
    c.leave();
    settled(&[&a, &b]).await;
    env.post("after", 30, 5).await;
    all_received(&[&a, &b], 300).await;

    // Nothing is lost: every event is acknowledged by a or b, c's unacknowledged ones included.
    let acked = || -> BTreeSet<u64> {
        a.acked
            .lock()
            .unwrap()
            .iter()
            .chain(b.acked.lock().unwrap().iter())
            .copied()
            .collect()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked().len() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "acks missing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = acked();
    assert_eq!(acked, (1..=300).collect());
    assert!(unacked.is_subset(&acked));
    in_order_per_interview(&a);
    in_order_per_interview(&b);
}

async fn a_member_that_joins_late_gets_work(env: Env) {
    let a = Member::join("a", env.for_member(0).0, env.for_member(0).1, "late").await;
    settled(&[&a]).await;
    env.post("early", 20, 2).await;
    all_received(&[&a], 40).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while a.acked.lock().unwrap().len() < 40 {
        assert!(tokio::time::Instant::now() < deadline, "a did not ack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let d = Member::join("d", env.for_member(1).0, env.for_member(1).1, "late").await;
    settled(&[&a, &d]).await;
    assert!(!d.partitions().is_empty());
    env.post("later", 20, 2).await;
    all_received(&[&a, &d], 80).await;
    assert!(
        d.received().iter().any(|e| e.sequence > 40),
        "the late member got no work"
    );
    // It started after the group's cursors, not from the beginning.
    assert!(d.received().iter().all(|e| e.sequence > 40));
}

async fn a_stale_members_ack_is_refused(env: Env) {
    let a = Member::join("a", env.for_member(0).0, env.for_member(0).1, "fenced").await;
    settled(&[&a]).await;
    a.acking.store(false, Ordering::SeqCst);
    env.post("stale", 24, 1).await;
    all_received(&[&a], 24).await;
    let held = a.received();

    // b joins: some partitions move to it, with a's unacknowledged events.
    let b = Member::join("b", env.for_member(1).0, env.for_member(1).1, "fenced").await;
    settled(&[&a, &b]).await;
    let moved = b.partitions();
    let stale = held
        .iter()
        .find(|e| {
            moved.contains(&incode_gateway::subscriptions::groups::partition_of(
                e, PARTITIONS,
            ))
        })
        .expect("no event of a partition that moved");
    let mut client = a.ack_client.clone();
    let status = client
        .ack(AckRequest {
            group: "fenced".into(),
            member_id: a.member_id(),
            sequence: stale.sequence,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("does not own"),
        "{}",
        status.message()
    );
    // The new owner receives it again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !b.received().iter().any(|e| e.sequence == stale.sequence) {
        assert!(tokio::time::Instant::now() < deadline, "never redelivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member whose gateway dies cannot let go of its partitions: they move to the remaining
/// member once its session expires, with the events it held unacknowledged. Two gateway
/// processes over one NATS server; one is killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_member_expires_and_its_partitions_move_to_the_others() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let replica = async || {
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "--allow-unauthenticated-webhooks",
            "--storage",
            "nats",
            "--nats-url",
            url.as_str(),
            "--group-session-timeout",
            "2s",
            "--heartbeat-interval",
            "500ms",
        ];
        GatewayProcess::spawn_with(dir.path(), &args, &[]).await
    };
    let mut doomed = replica().await;
    let survivor = replica().await;
    let a = Member::join_through("a", doomed.client().await, doomed.client().await, "expiry").await;
    let b = Member::join_through(
        "b",
        survivor.client().await,
        survivor.client().await,
        "expiry",
    )
    .await;
    settled(&[&a, &b]).await;
    a.acking.store(false, Ordering::SeqCst);
    let http = http_client();
    for interview in 0..24 {
        let response = http
            .post(format!("{}{PATH}", survivor.base_url))
            .header("content-type", "application/json")
            .body(onboarding_body(&format!("expiry-{interview}"), "UNKNOWN"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }
    all_received(&[&a, &b], 24).await;
    let held: BTreeSet<u64> = a.received().iter().map(|e| e.sequence).collect();
    assert!(!held.is_empty(), "a got no share");
    let ids = [a.member_id(), b.member_id()];

    doomed.child.start_kill().unwrap();
    doomed.child.wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    let deadline = killed + PATIENCE * 2;
    loop {
        let assignment = b.assignment.borrow().clone().unwrap();
        if assignment.members == 1 && assignment.partitions.len() == PARTITIONS as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never took a's partitions: {assignment:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing let go of them: they waited for a's session to expire (2 s after its last
    // renewal, at most 0.4 s before the kill).
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "a's partitions moved {:?} after the kill, before its session could expire",
        killed.elapsed()
    );
    // b resumes them after their cursors: what a held unacknowledged reaches b.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let received: BTreeSet<u64> = b.received().iter().map(|e| e.sequence).collect();
        if held.is_subset(&received) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's unacknowledged events {:?} did not reach b",
            held.difference(&received).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    in_order_per_interview(&b);
    // Neither gateway wrote a member's id in its log.
    for output in [&doomed.output, &survivor.output] {
        let output = output.lock().unwrap();
        assert!(!output.is_empty());
        for line in output.iter() {
            assert!(
                ids.iter().all(|id| !line.contains(id.as_str())),
                "a member id in the log: {line}"
            );
        }
    }
}

/// A member holds at most `max_in_flight` unacknowledged events: it receives that many, then
/// nothing (heartbeats only) until an ack makes room, and then as many events as the ack freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_receives_max_in_flight_events_and_no_more_until_it_acks() {
    let mut config = Env::config();
    config.heartbeat_interval = Duration::from_millis(200);
    let gateway = Gateway::start_with(config).await;
    // One interview: one partition, so that an ack frees every earlier event in flight.
    for round in 0..10 {
        let body = serde_json::json!({
            "interviewId": "held",
            "onboardingStatus": "UNKNOWN",
            "round": round,
        });
        gateway.notify(PATH, &body.to_string()).await;
    }
    let mut stream = gateway
        .client()
        .await
        .subscribe(SubscribeRequest {
            group: "held".into(),
            max_in_flight: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (member_id, first) = member_and_first_event(&mut stream).await;
    let mut received = vec![first.sequence];
    let mut client = gateway.client().await;
    for (acked, then) in [(None, 2..=3), (Some(1), 4..=4), (Some(4), 5..=7)] {
        if let Some(sequence) = acked {
            let answer = client
                .ack(AckRequest {
                    group: "held".into(),
                    member_id: member_id.clone(),
                    sequence,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(answer.into_inner().sequence, sequence);
        }
        for _ in then {
            received.push(next_event(&mut stream).await.sequence);
        }
        // Full: two heartbeats in a row, and nothing between them.
        for _ in 0..2 {
            match next_message(&mut stream).await {
                Response::Heartbeat(_) => {}
                other => panic!("after {received:?} with 3 unacknowledged, got {other:?}"),
            }
        }
    }
    assert_eq!(received, (1..=7).collect::<Vec<_>>());
}

/// The value of the Prometheus series `name` whose labels include `labels`; fails when missing.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.split(['{', ' ']).next() == Some(name)
                && labels.iter().all(|label| line.contains(label))
        })
        .and_then(|line| line.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_metrics_show_members_partitions_lag_and_redeliveries() {
    let env = Env::embedded().await;
    let gateway = &env.gateways[0];
    let a = Member::join("a", gateway, gateway, "metered").await;
    settled(&[&a]).await;
    a.acking.store(false, Ordering::SeqCst);
    env.post("metered", 24, 1).await;
    all_received(&[&a], 24).await;
    let b = Member::join("b", gateway, gateway, "metered").await;
    settled(&[&a, &b]).await;
    // b gets a's unacknowledged events of the partitions that moved to it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while b.received().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing redelivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let text = gateway
        .http
        .get(format!("http://{}/metrics", gateway.grpc_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let group = "group=\"metered\"";
    assert_eq!(metric(&text, "incode_gateway_group_members", &[group]), 2.0);
    // Both members are served here: together they own every partition.
    assert_eq!(
        metric(&text, "incode_gateway_group_partitions", &[group]),
        f64::from(PARTITIONS)
    );
    // A member id acks for its member: it is no label.
    for id in [a.member_id(), b.member_id()] {
        assert!(!id.is_empty());
        assert!(!text.contains(&id), "a member id in the metrics:\n{text}");
    }
    // Nothing is acknowledged: the group trails the head by every event.
    assert_eq!(metric(&text, "incode_gateway_group_lag", &[group]), 24.0);
    assert!(metric(&text, "incode_gateway_group_redeliveries_total", &[group]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_are_refused() {
    let gateway = Gateway::start().await;
    let mut client = gateway.client().await;
    for (request, code) in [
        (
            SubscribeRequest {
                group: "g".into(),
                consumer: "c".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            SubscribeRequest {
                group: "bad name".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            SubscribeRequest {
                group: "g".into(),
                group_partitions: 5000,
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ] {
        let status = client.subscribe(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
    let _first = client
        .subscribe(SubscribeRequest {
            group: "g".into(),
            group_partitions: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let status = client
        .subscribe(SubscribeRequest {
            group: "g".into(),
            group_partitions: 8,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("has 4 partitions"),
        "{}",
        status.message()
    );
    let status = client
        .ack(AckRequest {
            group: "g".into(),
            sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

const ALPHA_TOKEN: &str = "alpha-token-5d2c8e1f7a9b3c4d";
const BETA_TOKEN: &str = "beta-token-9e3f1a7c2b8d4e6f";

/// [`Env::config`] with two subscribers, `alpha` and `beta`, that may both use every name
/// starting with `shared-`: what keeps them apart is not the names they may use.
fn two_subscribers(dir: &std::path::Path) -> ServeArgs {
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[[subscribers]]\nname = \"alpha\"\ntokens = [\"{ALPHA_TOKEN}\"]\nconsumers = [\"shared-*\"]\n\n\
             [[subscribers]]\nname = \"beta\"\ntokens = [\"{BETA_TOKEN}\"]\nconsumers = [\"shared-*\"]\n"
        ),
    )
    .unwrap();
    let mut config = Env::config();
    config.config_file = Some(file);
    config
}

/// Opens a group member's stream as the subscriber of `token`.
async fn join_as(
    gateway: &Gateway,
    token: Option<&str>,
    group: &str,
) -> Result<tonic::Streaming<v1::SubscribeResponse>, tonic::Status> {
    let request = SubscribeRequest {
        group: group.to_owned(),
        group_partitions: PARTITIONS,
        ..Default::default()
    };
    gateway
        .client()
        .await
        .subscribe(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_groups_count_together_against_max_consumers() {
    let mut config = Env::config();
    config.max_consumers = 2;
    let gateway = Gateway::start_with(config).await;
    gateway
        .notify(PATH, &onboarding_body("limit", "UNKNOWN"))
        .await;
    let channel = gateway.channel().await;
    assert_eq!(ack(&channel, None, "consumer-1", 1).await.unwrap(), 1);
    let _member = join_as(&gateway, None, "group-1").await.unwrap();
    // The limit is reached by one of each: neither kind may add one more.
    let refused = [
        ack(&channel, None, "consumer-2", 1).await.map(|_| ()),
        join_as(&gateway, None, "group-2").await.map(|_| ()),
    ];
    for status in refused {
        let status = status.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("(2, the two counted together)"),
            "{}",
            status.message()
        );
    }
    // What exists goes on working.
    assert_eq!(ack(&channel, None, "consumer-1", 1).await.unwrap(), 1);
    let _again = join_as(&gateway, None, "group-1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_cannot_use_up_the_room_of_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = two_subscribers(dir.path());
    config.max_consumers = 10;
    config.max_consumers_per_subscriber = 2;
    let gateway = Gateway::start_with(config).await;
    gateway
        .notify(PATH, &onboarding_body("share", "UNKNOWN"))
        .await;
    let channel = gateway.channel().await;
    let alpha = Some(ALPHA_TOKEN);
    assert_eq!(ack(&channel, alpha, "shared-a1", 1).await.unwrap(), 1);
    let _member = join_as(&gateway, alpha, "shared-a2").await.unwrap();
    let refused = [
        ack(&channel, alpha, "shared-a3", 1).await.map(|_| ()),
        join_as(&gateway, alpha, "shared-a4").await.map(|_| ()),
    ];
    for status in refused {
        let status = status.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("subscriber `alpha`")
                && status.message().contains("--max-consumers-per-subscriber"),
            "{}",
            status.message()
        );
    }
    // alpha may still use what it has, and what another subscriber created.
    assert_eq!(ack(&channel, alpha, "shared-a1", 1).await.unwrap(), 1);
    let beta = Some(BETA_TOKEN);
    assert_eq!(ack(&channel, beta, "shared-b1", 1).await.unwrap(), 1);
    assert_eq!(ack(&channel, alpha, "shared-b1", 1).await.unwrap(), 1);
    // beta has its own share.
    let _member = join_as(&gateway, beta, "shared-b2").await.unwrap();
    let status = ack(&channel, beta, "shared-b3", 1).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// Reads a member's stream up to its first event: the member's id (from the assignment) and
/// the event.
async fn member_and_first_event(
    stream: &mut tonic::Streaming<v1::SubscribeResponse>,
) -> (String, v1::Event) {
    let mut member_id = None;
    loop {
        match next_progress(stream).await {
            Response::GroupAssignment(assignment) => member_id = Some(assignment.member_id),
            Response::Event(event) => {
                return (member_id.expect("an event before the assignment"), event);
            }
            _ => {}
        }
    }
}

/// A member belongs to its group and to the subscriber that joined it. alpha and beta may both
/// use both groups, so the names they may use do not keep them apart: the binding does. On NATS
/// the acks reach the replica that does not serve the member's stream.
async fn a_member_acks_only_for_its_group_and_the_subscriber_that_joined_it(env: Env) {
    let (subscribe, acks) = env.for_member(0);
    env.post("bound", 1, 1).await;
    let mut a_stream = join_as(subscribe, Some(ALPHA_TOKEN), "shared-a")
        .await
        .unwrap();
    let (a_member, event) = member_and_first_event(&mut a_stream).await;
    assert_eq!(event.sequence, 1);
    let b_stream = join_as(subscribe, Some(BETA_TOKEN), "shared-b").await;
    let mut b_stream = b_stream.unwrap();
    let (b_member, event) = member_and_first_event(&mut b_stream).await;
    assert_eq!(event.sequence, 1);

    let mut client = acks.client().await;
    let request = |group: &str, member: &str| AckRequest {
        group: group.to_owned(),
        member_id: member.to_owned(),
        sequence: 1,
        ..Default::default()
    };
    for (token, group, member, case) in [
        (
            BETA_TOKEN,
            "shared-a",
            b_member.as_str(),
            "beta's member of shared-b, for shared-a",
        ),
        (
            ALPHA_TOKEN,
            "shared-b",
            b_member.as_str(),
            "beta's member, by alpha",
        ),
        (
            ALPHA_TOKEN,
            "shared-a",
            b_member.as_str(),
            "beta's member of shared-b, by alpha for shared-a",
        ),
        (
            BETA_TOKEN,
            "shared-a",
            a_member.as_str(),
            "alpha's member, by beta",
        ),
        (
            BETA_TOKEN,
            "shared-b",
            "0123456789abcdef0123456789abcdef",
            "a made-up member",
        ),
    ] {
        let status = client
            .ack(with_token(request(group, member), Some(token)))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
        assert!(
            status.message().contains("not a live member") && !status.message().contains(member),
            "{case}: {}",
            status.message()
        );
    }

    // Neither cursor moved: when beta's member goes, the member that takes over its partitions
    // receives event 1 again.
    drop(b_stream);
    let mut b_again = join_as(subscribe, Some(BETA_TOKEN), "shared-b")
        .await
        .unwrap();
    env.post("after", 1, 1).await;
    let (b_again_member, event) = member_and_first_event(&mut b_again).await;
    assert_eq!(event.sequence, 1, "shared-b's cursor moved");
    // Each member's own subscriber acks it, through either replica.
    let answer = client
        .ack(with_token(
            request("shared-b", &b_again_member),
            Some(BETA_TOKEN),
        ))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().sequence, 1);
    let answer = client
        .ack(with_token(
            request("shared-a", &a_member),
            Some(ALPHA_TOKEN),
        ))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().sequence, 1);

    // Each refusal is counted against the subscriber that tried.
    let text = acks
        .http
        .get(format!("http://{}/metrics", acks.grpc_addr))
        .bearer_auth(ALPHA_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals = |subscriber: &str| {
        let subscriber = format!("subscriber=\"{subscriber}\"");
        let labels = ["reason=\"not_group_member\"", subscriber.as_str()];
        metric(&text, "incode_gateway_internal_refusals_total", &labels)
    };
    assert_eq!((refusals("alpha"), refusals("beta")), (2.0, 3.0));
}

mod bound_members {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let dir = tempfile::tempdir().unwrap();
        let env = super::Env::embedded_with(super::two_subscribers(dir.path())).await;
        super::a_member_acks_only_for_its_group_and_the_subscriber_that_joined_it(env).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_two_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let env = super::Env::nats_with(super::two_subscribers(dir.path())).await;
        super::a_member_acks_only_for_its_group_and_the_subscriber_that_joined_it(env).await;
    }
}

/// Consumer and group names share one rule: dots only between non-empty parts, since the names
/// become parts of NATS subjects. A name breaking it is the caller's mistake on every backend;
/// a dotted name that keeps it works on every backend.
async fn names_with_an_empty_part_between_dots_are_refused(env: Env) {
    let gateway = &env.gateways[0];
    gateway
        .notify(PATH, &onboarding_body("names", "UNKNOWN"))
        .await;
    let mut client = gateway.client().await;
    for name in [".billing", "billing.", "billing..eu", "."] {
        let subscribe = |consumer: &str, group: &str| SubscribeRequest {
            consumer: consumer.to_owned(),
            group: group.to_owned(),
            ..Default::default()
        };
        let ack = |consumer: &str, group: &str| AckRequest {
            consumer: consumer.to_owned(),
            group: group.to_owned(),
            member_id: "m".into(),
            sequence: 1,
        };
        let answers = [
            client.subscribe(subscribe(name, "")).await.map(|_| ()),
            client.subscribe(subscribe("", name)).await.map(|_| ()),
            client.ack(ack(name, "")).await.map(|_| ()),
            client.ack(ack("", name)).await.map(|_| ()),
        ];
        for (n, answer) in answers.into_iter().enumerate() {
            let status = answer.expect_err(name);
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{name:?} #{n}: {status:?}"
            );
            assert!(
                status.message().contains("no two in a row"),
                "{name:?} #{n}: {}",
                status.message()
            );
        }
    }
    let dotted = "team.eu-1";
    let answer = client
        .ack(AckRequest {
            consumer: dotted.into(),
            sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().sequence, 1);
    let member = Member::join("dotted", gateway, gateway, dotted).await;
    all_received(&[&member], 1).await;
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Env::embedded().await).await;
                }
            )*
        }
        mod nats_two_replicas {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Env::nats().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    three_members_share_the_stream_by_interview,
    a_departed_members_unacknowledged_events_reach_the_others,
    a_member_that_joins_late_gets_work,
    a_stale_members_ack_is_refused,
    names_with_an_empty_part_between_dots_are_refused,
);
