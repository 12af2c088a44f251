//! `incode-gateway simulate`, the binary: against the real gateway, and against a stand-in that
//! records every request and answers as a test needs, to check Incode's token request and retry
//! policy byte for byte.

use std::{
    collections::HashMap,
    process::{Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use incode_gateway::proto::v1;
use serde_json::{Value, json};
use tokio::{net::TcpListener, process::Command};

use crate::support::common::*;

/// `incode-gateway simulate --url <url> --summary json`, with none of its variables inherited.
fn simulate(url: &str) -> Command {
    let mut command = binary_async();
    command
        .args(["simulate", "--url", url, "--summary", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn run(command: &mut Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("simulate did not finish in time")
        .unwrap()
}

fn summary(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("no JSON summary: {output:?}"))
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Recorded {
    /// When it arrived.
    at: Instant,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// How the stand-in answers webhooks.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// `200 {"success":true}`.
    Ok,
    /// `500` the first time a body arrives, then `200 {"success":true}`.
    FailFirst,
    /// `204`, always.
    NoContent,
    /// `200` with a `text/plain` body, always.
    OkNotJson,
    /// No answer for this long the first time a body arrives, then `200 {"success":true}`.
    SlowFirst(Duration),
}

/// Client credentials the stand-in's token endpoint accepts, and the lifetime of its tokens.
#[derive(Debug, Clone)]
struct TokenSettings {
    client_id: &'static str,
    client_secret: &'static str,
    expires_in: f64,
    /// Refuse every token request with `401`.
    refuse: bool,
}

#[derive(Default)]
struct Records {
    webhooks: Vec<Recorded>,
    token_requests: Vec<Recorded>,
    /// Issued tokens and when they expire.
    tokens: HashMap<String, Instant>,
}

struct StandIn {
    behaviour: Behaviour,
    token: Option<TokenSettings>,
    records: Mutex<Records>,
}

/// A stand-in for the gateway's public listener.
struct FakeGateway {
    url: String,
    state: Arc<StandIn>,
}

impl FakeGateway {
    async fn start(behaviour: Behaviour, token: Option<TokenSettings>) -> Self {
        let state = Arc::new(StandIn {
            behaviour,
            token,
            records: Mutex::default(),
        });
        let app = Router::new()
            .route("/oauth/token", post(token_endpoint))
            .fallback(webhook)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, app).into_future());
        Self { url, state }
    }

    fn webhooks(&self) -> Vec<Recorded> {
        self.state.records.lock().unwrap().webhooks.clone()
    }

    fn token_requests(&self) -> Vec<Recorded> {
        self.state.records.lock().unwrap().token_requests.clone()
    }

    /// The webhooks grouped by body, in order of arrival.
    fn by_body(&self) -> Vec<Vec<Recorded>> {
        let mut groups: Vec<Vec<Recorded>> = Vec::new();
        for request in self.webhooks() {
            match groups
                .iter_mut()
                .find(|group| group[0].body == request.body)
            {
                Some(group) => group.push(request),
                None => groups.push(vec![request]),
            }
        }
        groups
    }
}

fn success() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"success":true}"#,
    )
        .into_response()
}

async fn webhook(
    State(state): State<Arc<StandIn>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    assert_eq!(method, Method::POST);
    let first_time = {
        let mut records = state.records.lock().unwrap();
        let first_time = !records.webhooks.iter().any(|r| r.body == body);
        records.webhooks.push(Recorded {
            at: Instant::now(),
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body,
        });
        if state.token.is_some() {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "));
            let valid = bearer
                .and_then(|token| records.tokens.get(token))
                .is_some_and(|expires| Instant::now() < *expires);
            if !valid {
                return StatusCode::UNAUTHORIZED.into_response();
            }
        }
        first_time
    };
    match state.behaviour {
        Behaviour::Ok => success(),
        Behaviour::FailFirst if first_time => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Behaviour::FailFirst => success(),
        Behaviour::NoContent => StatusCode::NO_CONTENT.into_response(),
        Behaviour::OkNotJson => ([(header::CONTENT_TYPE, "text/plain")], "ok").into_response(),
        Behaviour::SlowFirst(delay) => {
            if first_time {
                tokio::time::sleep(delay).await;
            }
            success()
        }
    }
}

async fn token_endpoint(
    State(state): State<Arc<StandIn>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut records = state.records.lock().unwrap();
    records.token_requests.push(Recorded {
        at: Instant::now(),
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let Some(settings) = &state.token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if settings.refuse {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_client"}"#,
        )
            .into_response();
    }
    let token = format!("token-{}", records.token_requests.len());
    let lifetime = Duration::from_secs_f64(settings.expires_in);
    records
        .tokens
        .insert(token.clone(), Instant::now() + lifetime);
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "access_token": token, "token_type": "Bearer", "expires_in": settings.expires_in })
            .to_string(),
    )
        .into_response()
}

/// Checks that each notification was sent exactly `calls` times, every time the same bytes with
/// the same headers.
fn assert_identical_retries(fake: &FakeGateway, notifications: usize, calls: usize) {
    let groups = fake.by_body();
    assert_eq!(groups.len(), notifications, "distinct notifications");
    for group in &groups {
        assert_eq!(group.len(), calls, "calls for {:?}", group[0].body);
        for retry in &group[1..] {
            assert_eq!(retry.path, group[0].path);
            assert_eq!(retry.body, group[0].body);
            assert_eq!(
                retry.headers.get(header::CONTENT_TYPE),
                group[0].headers.get(header::CONTENT_TYPE)
            );
            assert_eq!(
                retry.headers.get(header::AUTHORIZATION),
                group[0].headers.get(header::AUTHORIZATION)
            );
        }
        assert_eq!(
            group[0].headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }
}

#[tokio::test]
async fn every_notification_simulate_sends_is_stored_by_the_gateway() {
    let gateway = Gateway::start().await;

    let output = run(simulate(&gateway.base_url).args([
        "--count",
        "40",
        "--kind",
        "mixed",
        "--concurrency",
        "4",
        "--seed",
        "11",
    ]))
    .await;

    assert!(output.status.success(), "{output:?}");
    let summary = summary(&output);
    assert_eq!(summary["sent"], 40);
    assert_eq!(summary["acknowledged"], 40);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["retried"], 0);
    assert_eq!(summary["answers"], json!({ "200": 40 }));
    for percentile in ["p50", "p90", "p99", "max"] {
        assert!(summary["latency_ms"][percentile].as_f64().unwrap() > 0.0);
    }

    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    let events = drain_until_caught_up(&mut stream).await;
    assert_eq!(events.len(), 40, "acknowledged == stored");
    let mut kinds = HashMap::new();
    for event in &events {
        *kinds.entry(event.r#type()).or_insert(0) += 1;
        let id = interview_id(event);
        assert!(
            id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        if let Some(v1::event::Payload::OnboardingStatusChanged(changed)) = &event.payload {
            assert_ne!(
                changed.onboarding_status(),
                v1::OnboardingStatus::Unspecified,
                "only Incode's statuses: {}",
                changed.onboarding_status_raw
            );
        }
    }
    assert_eq!(kinds.len(), 2, "both kinds in a mixed run: {kinds:?}");
}

#[tokio::test]
async fn a_failed_call_is_retried_exactly_once_with_identical_bytes() {
    let fake = FakeGateway::start(Behaviour::FailFirst, None).await;

    let output = run(simulate(&fake.url).args(["--count", "6", "--concurrency", "3"])).await;

    assert!(output.status.success(), "{output:?}");
    assert_identical_retries(&fake, 6, 2);
    let summary = summary(&output);
    assert_eq!(
        (
            &summary["sent"],
            &summary["acknowledged"],
            &summary["retried"],
            &summary["failed"],
            &summary["requests"]
        ),
        (&json!(6), &json!(6), &json!(6), &json!(0), &json!(12))
    );
    assert_eq!(summary["answers"], json!({ "200": 6, "500": 6 }));
    for request in fake.webhooks() {
        assert!(
            request.headers.get(header::AUTHORIZATION).is_none(),
            "no credentials, no Authorization header"
        );
        assert!(request.path.starts_with("/webhooks/incode/"));
    }
}

#[tokio::test]
async fn a_204_answer_counts_as_acknowledged() {
    let fake = FakeGateway::start(Behaviour::NoContent, None).await;

    let output = run(simulate(&fake.url).args(["--count", "5"])).await;

    assert!(output.status.success(), "{output:?}");
    assert_identical_retries(&fake, 5, 1);
    let summary = summary(&output);
    assert_eq!(summary["acknowledged"], 5);
    assert_eq!(summary["retried"], 0);
    assert_eq!(summary["answers"], json!({ "204": 5 }));
}

#[tokio::test]
async fn a_200_that_is_not_json_is_retried_once_then_given_up() {
    let fake = FakeGateway::start(Behaviour::OkNotJson, None).await;

    let output =
        run(simulate(&fake.url).args(["--count", "4", "--kind", "watchlist-updated"])).await;

    assert_eq!(output.status.code(), Some(1), "failures exit 1: {output:?}");
    assert_identical_retries(&fake, 4, 2);
    let summary = summary(&output);
    assert_eq!(summary["acknowledged"], 0);
    assert_eq!(summary["retried"], 4);
    assert_eq!(summary["failed"], 4);
    assert_eq!(summary["answers"], json!({ "200 not JSON": 8 }));
    assert!(
        fake.webhooks()
            .iter()
            .all(|request| request.path == "/webhooks/incode/watchlist-updated")
    );
}

#[tokio::test]
async fn a_timed_out_call_is_retried() {
    // The first call is never answered; the retry has the whole timeout, ample on any machine.
    let fake = FakeGateway::start(Behaviour::SlowFirst(Duration::from_secs(3600)), None).await;

    let output =
        run(simulate(&fake.url).args(["--count", "3", "--concurrency", "3", "--timeout", "2s"]))
            .await;

    assert!(output.status.success(), "{output:?}");
    assert_identical_retries(&fake, 3, 2);
    let summary = summary(&output);
    assert_eq!(summary["acknowledged"], 3);
    assert_eq!(summary["retried"], 3);
    assert_eq!(summary["answers"], json!({ "200": 3, "timeout": 3 }));
}

#[tokio::test]
async fn simulate_obtains_tokens_as_incode_does_and_renews_them_before_they_expire() {
    // simulate renews a tenth of the lifetime early: 500 ms for a 5 s token, time enough for one
    // token request on any machine. The run lasts longer than one token.
    let settings = TokenSettings {
        client_id: "incode:client",
        client_secret: "s3cr3t p@ss/word",
        expires_in: 5.0,
        refuse: false,
    };
    let fake = FakeGateway::start(Behaviour::Ok, Some(settings.clone())).await;

    let output = run(simulate(&fake.url)
        .args(["--count", "33", "--rate", "6", "--concurrency", "1"])
        .args(["--client-id", settings.client_id])
        .env(
            "INCODE_GATEWAY_SIMULATE_CLIENT_SECRET",
            settings.client_secret,
        ))
    .await;

    assert!(output.status.success(), "{output:?}");
    let summary = summary(&output);
    assert_eq!(
        summary["answers"],
        json!({ "200": 33 }),
        "every notification carried a valid bearer"
    );
    let token_requests = fake.token_requests();
    assert!(
        token_requests.len() >= 2,
        "a 5 s token is renewed during a run of more than 5 s"
    );
    let first_expired_at = token_requests[0].at + Duration::from_secs(5);
    assert!(
        token_requests[1].at < first_expired_at,
        "renewed {:?} after the first token expired",
        token_requests[1].at - first_expired_at
    );
    assert_eq!(summary["tokens_obtained"], token_requests.len());
    let basic = format!(
        "Basic {}",
        BASE64.encode("incode%3Aclient:s3cr3t+p%40ss%2Fword")
    );
    for request in &token_requests {
        assert_eq!(request.path, "/oauth/token");
        assert_eq!(
            request.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/x-www-form-urlencoded"
        );
        assert_eq!(request.headers.get(header::AUTHORIZATION).unwrap(), &basic);
        assert_eq!(request.body, "grant_type=client_credentials");
    }
    let bearers: Vec<_> = fake
        .webhooks()
        .iter()
        .map(|request| request.headers.get(header::AUTHORIZATION).unwrap().clone())
        .collect();
    assert_eq!(bearers.first().unwrap(), "Bearer token-1");
    assert!(bearers.contains(&"Bearer token-2".parse().unwrap()));
    for printed in [&output.stdout, &output.stderr] {
        let printed = String::from_utf8_lossy(printed);
        assert!(!printed.contains(settings.client_secret), "{printed}");
        assert!(!printed.contains("token-1"), "{printed}");
    }
}

#[tokio::test]
async fn a_refused_token_request_stops_simulate_with_a_clear_error() {
    let settings = TokenSettings {
        client_id: "incode",
        client_secret: "wrong-secret",
        expires_in: 3600.0,
        refuse: true,
    };
    let fake = FakeGateway::start(Behaviour::Ok, Some(settings.clone())).await;

    let output = run(simulate(&fake.url).args([
        "--client-id",
        settings.client_id,
        "--client-secret",
        settings.client_secret,
    ]))
    .await;

    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains(&format!(
            "cannot obtain a token from {}/oauth/token: the token endpoint answered 401 Unauthorized: {{\"error\":\"invalid_client\"}}",
            fake.url
        )),
        "stderr: {error:?}"
    );
    assert!(!error.contains(settings.client_secret));
    assert!(
        fake.webhooks().is_empty(),
        "nothing is sent without a token"
    );
}

#[tokio::test]
async fn simulate_authenticates_at_the_gateways_token_endpoint() {
    use crate::support::auth_common::{CLIENT_ID, CLIENT_SECRET, oauth_config};
    let gateway = Gateway::start_with(oauth_config()).await;

    let output = run(simulate(&gateway.base_url)
        .args(["--count", "10", "--seed", "5", "--client-id", CLIENT_ID])
        .env("INCODE_GATEWAY_SIMULATE_CLIENT_SECRET", CLIENT_SECRET))
    .await;

    assert!(output.status.success(), "{output:?}");
    let report = summary(&output);
    assert_eq!(report["acknowledged"], 10);
    assert_eq!(report["answers"], json!({ "200": 10 }));
    assert_eq!(report["tokens_obtained"], 1);
    for printed in [&output.stdout, &output.stderr] {
        assert!(!String::from_utf8_lossy(printed).contains(CLIENT_SECRET));
    }
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(drain_until_caught_up(&mut stream).await.len(), 10);

    // Without credentials every call is refused, retried once, and given up, and simulate says
    // what it lacks.
    let output = run(simulate(&gateway.base_url).args(["--count", "2"])).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = summary(&output);
    assert_eq!(report["failed"], 2);
    assert_eq!(report["answers"], json!({ "401": 4 }));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--client-id") && stderr.contains("INCODE_GATEWAY_SIMULATE_CLIENT_SECRET"),
        "{stderr}"
    );
}
