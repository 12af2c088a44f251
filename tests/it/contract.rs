//! The errors the contract lists for each rpc (the comments in
//! `proto/incode/gateway/v1/event_stream.proto`) are the ones the gateway answers with: every
//! listed code is provoked here, and provoking a code the list does not name fails.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use incode_gateway::{
    ServeArgs,
    log::{EmbeddedLog, EventLog, Storage, embedded::fault::FaultSwitch},
    proto::v1::{
        AckRequest, EventFilter, StartPosition, SubscribeRequest, SubscribeResponse,
        event_stream_service_client::EventStreamServiceClient, start_position::Position,
    },
};
use reqwest::StatusCode;
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::support::common::*;

const TOKEN: &str = "contract-billing-token-3e1f9a";
const WEBHOOK: &str = "/webhooks/incode/onboarding-status";

/// The gRPC codes named (in backquotes) in the comment above `rpc <name>(`.
fn documented_codes(rpc: &str) -> BTreeSet<String> {
    let proto = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/incode/gateway/v1/event_stream.proto"),
    )
    .unwrap();
    let lines: Vec<&str> = proto.lines().collect();
    let declaration = lines
        .iter()
        .position(|line| line.trim_start().starts_with(&format!("rpc {rpc}(")))
        .unwrap_or_else(|| panic!("no rpc {rpc}"));
    let comment: Vec<&str> = lines[..declaration]
        .iter()
        .rev()
        .take_while(|line| line.trim_start().starts_with("//"))
        .copied()
        .collect();
    let comment = comment.join("\n");
    comment
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| code_named(word).is_some())
        .map(str::to_owned)
        .collect()
}

fn code_named(name: &str) -> Option<Code> {
    Some(match name {
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "OUT_OF_RANGE" => Code::OutOfRange,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "UNAVAILABLE" => Code::Unavailable,
        "INTERNAL" => Code::Internal,
        "NOT_FOUND" => Code::NotFound,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "ABORTED" => Code::Aborted,
        "UNIMPLEMENTED" => Code::Unimplemented,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "CANCELLED" => Code::Cancelled,
        "UNKNOWN" => Code::Unknown,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "DATA_LOSS" => Code::DataLoss,
        _ => return None,
    })
}

fn name_of(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let separator = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            separator.into_iter().chain(c.to_uppercase())
        })
        .collect()
}

/// The codes one rpc answered with, each checked against the contract as it comes.
struct Seen {
    rpc: &'static str,
    documented: BTreeSet<String>,
    codes: BTreeSet<String>,
}

impl Seen {
    fn new(rpc: &'static str) -> Self {
        Self {
            rpc,
            documented: documented_codes(rpc),
            codes: BTreeSet::new(),
        }
    }

    /// Expects `result` to fail with `code`, which the contract must list.
    fn expect<T: std::fmt::Debug>(
        &mut self,
        result: Result<T, Status>,
        code: Code,
        case: &str,
    ) -> Status {
        let status = result.expect_err(case);
        assert_eq!(status.code(), code, "{}: {case}: {status:?}", self.rpc);
        let name = name_of(code);
        assert!(
            self.documented.contains(&name),
            "{} answers {name} ({case}) but its comment in the proto does not list it",
            self.rpc
        );
        self.codes.insert(name);
        status
    }

    fn all_provoked(&self) {
        assert_eq!(
            self.codes, self.documented,
            "{}: the codes provoked and the codes the proto lists differ",
            self.rpc
        );
    }
}

fn start(position: Position) -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(position),
    })
}

async fn subscribe(
    channel: &Channel,
    token: Option<&str>,
    request: SubscribeRequest,
) -> Result<Streaming<SubscribeResponse>, Status> {
    EventStreamServiceClient::new(channel.clone())
        .subscribe(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

/// The first message of a stream, or the status it ended with.
async fn first_message(
    stream: &mut Streaming<SubscribeResponse>,
) -> Result<SubscribeResponse, Status> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("nothing in time")
        .map(|message| message.expect("the stream ended with OK"))
}

/// A gateway whose subscribers need a token (one subscriber, `billing`, with its own
/// consumers), at most one durable consumer, requests of at most 1 KiB, and a disk that fails
/// when told to.
async fn strict_gateway() -> (Gateway, FaultSwitch) {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let subscribers = data_dir.path().join("gateway.toml");
    std::fs::write(
        &subscribers,
        format!("[[subscribers]]\nname = \"billing\"\ntokens = [\"{TOKEN}\"]\nconsumers = [\"billing*\"]\n"),
    )
    .unwrap();
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().join("log");
    config.config_file = Some(subscribers);
    config.max_consumers = 1;
    config.internal.internal_max_message_bytes = 1024;
    let switch = FaultSwitch::new();
    let log =
        EmbeddedLog::open_with_faults(&config.data_dir, config.embedded_settings(), switch.clone())
            .unwrap();
    let gateway = Gateway::start_with_storage(data_dir, config, Storage::new(Arc::new(log))).await;
    (gateway, switch)
}

/// A gateway over a log whose event 2 and cursor `billing` cannot be read back.
async fn corrupt_gateway() -> Gateway {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    {
        let log =
            EmbeddedLog::open(data_dir.path(), ServeArgs::for_tests().embedded_settings()).unwrap();
        let log = Arc::new(log);
        let gateway = Gateway::start_with_storage(
            data_dir.clone(),
            ServeArgs::for_tests(),
            Storage::new(log.clone()),
        )
        .await;
        for n in 1..=2 {
            gateway
                .notify(WEBHOOK, &onboarding_body(&format!("c-{n}"), "UNKNOWN"))
                .await;
        }
        ack(&gateway.channel().await, None, "billing", 1)
            .await
            .unwrap();
        gateway.stop().await.unwrap();
        log.close().await.unwrap();
    }
    {
        let db = redb::Database::create(data_dir.path().join("events.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let events: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
            let mut events = txn.open_table(events).unwrap();
            let mut record = 1u64.to_be_bytes().to_vec();
            record.extend_from_slice(b"\xff\xff not an event");
            events.insert(2, record.as_slice()).unwrap();
            let state: redb::TableDefinition<&str, (u64, &[u8])> =
                redb::TableDefinition::new("state");
            let mut state = txn.open_table(state).unwrap();
            state
                .insert("consumer.billing", (2, b"short".as_slice()))
                .unwrap();
        }
        txn.commit().unwrap();
    }
    Gateway::start_in(data_dir, ServeArgs::for_tests()).await
}

#[tokio::test]
async fn subscribe_answers_exactly_the_errors_the_contract_lists() {
    let mut seen = Seen::new("Subscribe");
    let (gateway, switch) = strict_gateway().await;
    let channel = gateway.channel().await;
    let token = Some(TOKEN);
    gateway
        .notify(WEBHOOK, &onboarding_body("s-1", "UNKNOWN"))
        .await;

    let bad_filter = SubscribeRequest {
        filter: Some(EventFilter {
            types: vec![99],
            ..Default::default()
        }),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, bad_filter).await,
        Code::InvalidArgument,
        "unknown event type",
    );
    let bad_consumer = SubscribeRequest {
        consumer: "no/slash".into(),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, bad_consumer).await,
        Code::InvalidArgument,
        "malformed consumer",
    );
    let not_a_time = prost_types::Timestamp {
        seconds: i64::MIN,
        nanos: 0,
    };
    let since = |time| SubscribeRequest {
        start: start(Position::Since(time)),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, since(not_a_time)).await,
        Code::InvalidArgument,
        "a since that is no time",
    );
    let later = SystemTime::now() + Duration::from_secs(60);
    seen.expect(
        subscribe(&channel, token, since(later.into())).await,
        Code::InvalidArgument,
        "a since a minute ahead",
    );
    // Within the 5 s allowed for clock skew: accepted, and nothing is older.
    let skewed = SystemTime::now() + Duration::from_secs(3);
    let mut stream = subscribe(&channel, token, since(skewed.into()))
        .await
        .unwrap();
    assert_eq!(expect_caught_up(&mut stream).await, 1);

    let beyond = SubscribeRequest {
        start: start(Position::AfterSequence(2)),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, beyond).await,
        Code::OutOfRange,
        "after_sequence beyond the head",
    );
    let huge = SubscribeRequest {
        filter: Some(EventFilter {
            interview_ids: vec!["x".repeat(2000)],
            ..Default::default()
        }),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, huge).await,
        Code::OutOfRange,
        "a request over the size limit",
    );
    seen.expect(
        subscribe(&channel, None, SubscribeRequest::default()).await,
        Code::Unauthenticated,
        "no token",
    );
    let not_ours = SubscribeRequest {
        consumer: "payments".into(),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, not_ours).await,
        Code::PermissionDenied,
        "another subscriber's consumer",
    );

    let group = |name: &str, partitions| SubscribeRequest {
        group: name.into(),
        group_partitions: partitions,
        ..Default::default()
    };
    let filtered_group = SubscribeRequest {
        filter: Some(EventFilter {
            interview_ids: vec!["s-1".into()],
            ..Default::default()
        }),
        ..group("billing-group", 4)
    };
    seen.expect(
        subscribe(&channel, token, filtered_group).await,
        Code::InvalidArgument,
        "a filter with group",
    );
    let _member = subscribe(&channel, token, group("billing-group", 4))
        .await
        .unwrap();
    seen.expect(
        subscribe(&channel, token, group("billing-group", 8)).await,
        Code::FailedPrecondition,
        "another partition count for an existing group",
    );
    seen.expect(
        subscribe(&channel, token, group("billing-other", 4)).await,
        Code::ResourceExhausted,
        "one group more than allowed",
    );
    // Consumers and groups count together: the group used up the room for a consumer too.
    seen.expect(
        ack(&channel, token, "billing", 1).await,
        Code::ResourceExhausted,
        "a consumer beyond the limit the group reached",
    );

    // The storage fails: a consumer's cursor cannot be read.
    switch.set_failing(true);
    let (status, _) = gateway
        .post_json(WEBHOOK, &onboarding_body("refused", "UNKNOWN"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let resume = SubscribeRequest {
        consumer: "billing".into(),
        ..Default::default()
    };
    seen.expect(
        subscribe(&channel, token, resume).await,
        Code::Unavailable,
        "the cursor cannot be read",
    );
    switch.set_failing(false);
    // Shutdown ends open streams with UNAVAILABLE too.
    let mut open = subscribe(&channel, token, SubscribeRequest::default())
        .await
        .unwrap();
    gateway.stop().await.unwrap();
    seen.expect(
        first_message(&mut open).await,
        Code::Unavailable,
        "shutdown",
    );

    let gateway = corrupt_gateway().await;
    let channel = gateway.channel().await;
    let resume = SubscribeRequest {
        consumer: "billing".into(),
        ..Default::default()
    };
    let status = seen.expect(
        subscribe(&channel, None, resume).await,
        Code::Internal,
        "a corrupt cursor",
    );
    assert_eq!(status.message(), "internal error", "no detail leaks");
    let earliest = SubscribeRequest {
        start: start(Position::Earliest(Default::default())),
        ..Default::default()
    };
    let mut stream = subscribe(&channel, None, earliest).await.unwrap();
    let status = seen.expect(
        first_message(&mut stream).await,
        Code::Internal,
        "a corrupt event ends the stream",
    );
    assert_eq!(status.message(), "internal error", "no detail leaks");

    seen.all_provoked();
}

#[tokio::test]
async fn ack_answers_exactly_the_errors_the_contract_lists() {
    let mut seen = Seen::new("Ack");
    let (gateway, switch) = strict_gateway().await;
    let channel = gateway.channel().await;
    let token = Some(TOKEN);
    gateway
        .notify(WEBHOOK, &onboarding_body("a-1", "UNKNOWN"))
        .await;

    seen.expect(
        ack(&channel, token, "", 1).await,
        Code::InvalidArgument,
        "no consumer",
    );
    seen.expect(
        ack(&channel, token, "has space", 1).await,
        Code::InvalidArgument,
        "malformed consumer",
    );
    seen.expect(
        ack(&channel, token, "billing", 2).await,
        Code::OutOfRange,
        "a sequence beyond the head",
    );
    seen.expect(
        ack(&channel, token, &format!("billing{}", "x".repeat(2000)), 1).await,
        Code::OutOfRange,
        "a request over the size limit",
    );
    seen.expect(
        ack(&channel, None, "billing", 1).await,
        Code::Unauthenticated,
        "no token",
    );
    seen.expect(
        ack(&channel, token, "payments", 1).await,
        Code::PermissionDenied,
        "another subscriber's consumer",
    );
    assert_eq!(ack(&channel, token, "billing", 1).await.unwrap(), 1);
    seen.expect(
        ack(&channel, token, "billing-2", 1).await,
        Code::ResourceExhausted,
        "one consumer more than allowed",
    );

    // (A member that lost its partition is refused the same way: tests/it/groups.rs.)
    let unknown = AckRequest {
        group: "billing-group".into(),
        member_id: "a-member-of-no-group".into(),
        sequence: 1,
        ..Default::default()
    };
    seen.expect(
        EventStreamServiceClient::new(channel.clone())
            .ack(with_token(unknown, token))
            .await,
        Code::FailedPrecondition,
        "a group that does not exist",
    );

    gateway
        .notify(WEBHOOK, &onboarding_body("a-2", "UNKNOWN"))
        .await;
    switch.set_failing(true);
    seen.expect(
        ack(&channel, token, "billing", 2).await,
        Code::Unavailable,
        "the storage fails",
    );
    switch.set_failing(false);
    gateway.stop().await.unwrap();

    let gateway = corrupt_gateway().await;
    let status = seen.expect(
        ack(&gateway.channel().await, None, "billing", 1).await,
        Code::Internal,
        "a corrupt cursor",
    );
    assert_eq!(status.message(), "internal error", "no detail leaks");

    seen.all_provoked();
}
