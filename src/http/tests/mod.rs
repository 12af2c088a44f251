//! The public router in process: every answer that needs no socket, through `oneshot`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{AppState, HttpSettings, app};
use crate::log::Readiness;
use crate::{
    auth::{
        Auth, AuthSettings, ClientSettings, Secret, ThrottleSettings, TokenKey, TokenSettings,
        WebhookHeader,
    },
    log::{
        EventLog, MemoryLog, ReadItem, SharedLog,
        memory::MemorySettings,
        readiness::{
            CHECK_INTERVAL,
            tests::{CheckedLog, until_checked},
        },
    },
    metrics::Metrics,
    proto::v1,
};

mod oauth;

const ONBOARDING: &str = "/webhooks/incode/onboarding-status";
const CLIENT_ID: &str = "incode";
const CLIENT_SECRET: &str = "s3cret-for-handler-tests";
const GOOD_BODY: &str = r#"{"interviewId":"i-1","onboardingStatus":"ONBOARDING_FINISHED"}"#;

/// How the router under test authenticates webhooks.
enum Guard {
    Open,
    OAuth,
    Header,
}

struct Harness {
    app: Router,
    log: Arc<MemoryLog>,
}

fn auth(guard: Guard) -> Auth {
    let (clients, webhook_headers) = match guard {
        Guard::Open => (Vec::new(), Vec::new()),
        Guard::OAuth => (
            vec![ClientSettings {
                id: CLIENT_ID.into(),
                secrets: vec![Secret::new(CLIENT_SECRET)],
            }],
            Vec::new(),
        ),
        Guard::Header => (
            Vec::new(),
            vec![WebhookHeader::parse(&Secret::new("X-Check=ok")).unwrap()],
        ),
    };
    Auth::new(AuthSettings {
        clients,
        tokens: TokenSettings {
            ttl: Duration::from_secs(60),
            signing_key: TokenKey::generate().unwrap(),
            verify_only_keys: Vec::new(),
        },
        webhook_headers,
        allow_unauthenticated_webhooks: true,
        throttle: ThrottleSettings {
            burst: 2,
            ..ThrottleSettings::default()
        },
        max_concurrent_secret_checks: 2,
    })
    .unwrap()
}

/// The public router over `log`, its readiness checked every `check_interval`.
fn router(guard: Guard, log: SharedLog, check_interval: Duration) -> Router {
    let readiness = Readiness::spawn(log.clone(), check_interval, CancellationToken::new());
    let metrics = Metrics::new(log.clone(), false).unwrap();
    let settings = HttpSettings {
        max_body_bytes: 1024,
        trust_incoming_trace_context: false,
    };
    app(
        AppState::new(log, readiness, Arc::new(auth(guard)), metrics),
        settings,
    )
}

fn harness(guard: Guard) -> Harness {
    let log = Arc::new(MemoryLog::new(MemorySettings::new(Duration::from_secs(60))));
    Harness {
        app: router(guard, log.clone(), CHECK_INTERVAL),
        log,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts a webhook-shaped refusal: this status and `{"success":false,"error","detail"}`.
    #[track_caller]
    fn assert_refused(&self, status: StatusCode, error: &str, detail: &str) {
        assert_eq!(
            (self.status, &self.body),
            (status, &webhook_error(error, detail))
        );
    }
}

async fn call(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

impl Harness {
    async fn call(&self, request: Request<Body>) -> Answer {
        call(&self.app, request).await
    }

    async fn post(&self, path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Answer {
        self.call(post(path, content_type, &[], body)).await
    }

    async fn post_json(&self, path: &str, body: &'static str) -> Answer {
        self.post(path, Some("application/json"), body).await
    }

    async fn token(&self, authorization: Option<&str>, form: &'static str) -> Answer {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        self.call(post(
            "/oauth/token",
            Some("application/x-www-form-urlencoded"),
            &headers,
            form,
        ))
        .await
    }

    /// Every event stored so far.
    async fn stored(&self) -> Vec<v1::Event> {
        let mut reader = self.log.read_from(1).await.unwrap();
        let mut events = Vec::new();
        loop {
            match reader.next().await.unwrap() {
                ReadItem::Events(batch) => events.extend(batch.iter().map(|e| (**e).clone())),
                ReadItem::CaughtUp(_) => return events,
                ReadItem::Gap { .. } => unreachable!("nothing is removed"),
            }
        }
    }
}

fn post(
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut request = Request::builder().method(Method::POST).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).unwrap()
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

fn webhook_error(error: &str, detail: &str) -> Value {
    json!({ "success": false, "error": error, "detail": detail })
}

fn token_error(error: &str, description: &str) -> Value {
    json!({ "error": error, "error_description": description })
}

#[tokio::test]
async fn a_good_notification_is_stored_once_and_acknowledged() {
    let harness = harness(Guard::Open);
    for _ in 0..2 {
        let answer = harness.post_json(ONBOARDING, GOOD_BODY).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, json!({ "success": true }));
    }
    let stored = harness.stored().await;
    assert_eq!(stored.len(), 1, "the repeat is not stored again");
    let event = &stored[0];
    assert_eq!(event.sequence, 1);
    assert_eq!(event.r#type(), v1::EventType::OnboardingStatusChanged);
    assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "{}", event.id);
    let Some(v1::event::Payload::OnboardingStatusChanged(payload)) = &event.payload else {
        panic!("{event:?}");
    };
    assert_eq!(payload.interview_id, "i-1");
    assert_eq!(
        payload.onboarding_status(),
        v1::OnboardingStatus::OnboardingFinished
    );
}

#[tokio::test]
async fn each_endpoint_reads_its_kind() {
    let harness = harness(Guard::Open);
    for (path, body) in [
        ("/webhooks/incode", GOOD_BODY),
        (
            "/webhooks/incode/watchlist-updated",
            r#"{"interviewId":"i-2","ref":"r","search_id":"s"}"#,
        ),
        ("/webhooks/incode", r#"{"interviewId":"i-3","other":1}"#),
        ("/webhooks/incode/id-validation", r#"{"interviewId":"i-4"}"#),
        // Another spelling of a modelled kind's URL is that kind's route.
        (
            "/webhooks/incode/onboarding%2Dstatus",
            r#"{"interviewId":"i-5","onboardingStatus":"UNKNOWN"}"#,
        ),
        (
            "/webhooks/incode/%77atchlist-updated",
            r#"{"interviewId":"i-6","ref":"r","search_id":"s"}"#,
        ),
    ] {
        let answer = harness.post_json(path, body).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    }
    let stored = harness.stored().await;
    let kinds: Vec<_> = stored
        .iter()
        .map(|event| match &event.payload {
            Some(v1::event::Payload::OnboardingStatusChanged(_)) => "onboarding-status".to_owned(),
            Some(v1::event::Payload::WatchlistUpdated(_)) => "watchlist-updated".to_owned(),
            Some(v1::event::Payload::UnrecognizedNotification(n)) => n.kind.clone(),
            None => "none".to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "onboarding-status",
            "watchlist-updated",
            "unknown",
            "id-validation",
            "onboarding-status",
            "watchlist-updated",
        ]
    );
}

/// A modelled kind's URL spelled otherwise is read as that kind, strictly, and shares its
/// deduplication key: Incode's delivery to the real URL is the same notification, not one that
/// an earlier call under another spelling turned into an unrecognised "duplicate".
#[tokio::test]
async fn another_spelling_of_a_modelled_kind_is_that_kind() {
    let harness = harness(Guard::Open);
    harness
        .post_json(
            "/webhooks/incode/onboarding%2Dstatus",
            r#"{"interviewId":"i-1"}"#,
        )
        .await
        .assert_refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "onboardingStatus is missing",
        );
    for path in ["/webhooks/incode/onboarding%2Dstatus", ONBOARDING] {
        let answer = harness.post_json(path, GOOD_BODY).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    }
    let stored = harness.stored().await;
    assert_eq!(stored.len(), 1, "one notification, stored once");
    assert_eq!(stored[0].r#type(), v1::EventType::OnboardingStatusChanged);
}

#[tokio::test]
async fn every_refusal_names_its_problem() {
    let harness = harness(Guard::Open);
    let json = Some("application/json");
    let not_json = (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Content-Type must be application/json",
    );
    let cases = [
        (
            post(ONBOARDING, Some("text/plain"), &[], GOOD_BODY),
            not_json,
        ),
        (
            post(ONBOARDING, Some("application/jsonp"), &[], GOOD_BODY),
            not_json,
        ),
        (post(ONBOARDING, None, &[], GOOD_BODY), not_json),
        (
            post(ONBOARDING, json, &[], vec![b' '; 2048]),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than the gateway accepts",
            ),
        ),
        (
            post(ONBOARDING, json, &[], "{oops"),
            (
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body is not valid JSON: key must be a string at line 1 column 2",
            ),
        ),
        (
            post(ONBOARDING, json, &[], &b"{\"a\":\"\xff\"}"[..]),
            (
                StatusCode::BAD_REQUEST,
                "invalid_utf8",
                "the body is not valid UTF-8 (first invalid byte at offset 6)",
            ),
        ),
        (
            post(ONBOARDING, json, &[], "[1]"),
            (
                StatusCode::BAD_REQUEST,
                "not_an_object",
                "the body must be a JSON object, found an array",
            ),
        ),
        (
            post(ONBOARDING, json, &[], r#"{"onboardingStatus":"UNKNOWN"}"#),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "interviewId is missing",
            ),
        ),
        (
            post(
                ONBOARDING,
                json,
                &[],
                r#"{"interviewId":7,"onboardingStatus":"UNKNOWN"}"#,
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "interviewId must be a string, found a number",
            ),
        ),
        (
            post("/nope", json, &[], "{}"),
            (StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        ),
        (
            Request::get(ONBOARDING).body(Body::empty()).unwrap(),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method",
            ),
        ),
        (
            post("/webhooks/incode/bad%20kind", json, &[], GOOD_BODY),
            (
                StatusCode::BAD_REQUEST,
                "invalid_kind",
                "the notification kind in the URL must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            ),
        ),
    ];
    for (request, (status, error, detail)) in cases {
        let case = format!("{} {}", request.method(), request.uri());
        let answer = harness.call(request).await;
        assert_eq!(
            (answer.status, &answer.body),
            (status, &webhook_error(error, detail)),
            "{case}"
        );
    }
    assert!(harness.stored().await.is_empty());
}

#[tokio::test]
async fn json_bodies_are_read_whole_or_refused() {
    let harness = harness(Guard::Open);
    for content_type in ["Application/JSON; charset=utf-8", "application/vnd.x+json"] {
        let answer = harness
            .post(ONBOARDING, Some(content_type), GOOD_BODY)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{content_type}");
    }
    let broken = Body::from_stream(futures::stream::iter([Err::<Vec<u8>, _>(
        std::io::Error::other("connection reset"),
    )]));
    let answer = harness
        .post(ONBOARDING, Some("application/json"), broken)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_body");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("the body could not be read: ")),
        "{}",
        answer.body
    );
    assert_eq!(harness.stored().await.len(), 1);
}

/// `/readyz` tells what the gateway's one readiness check found: a flood of probes costs the
/// log no check at all.
#[tokio::test]
async fn readyz_answers_from_the_one_readiness_check() {
    for failing in [false, true] {
        let log = CheckedLog::new();
        log.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
        // No second check within the test.
        let app = router(Guard::Open, log.clone(), Duration::from_secs(3600));
        until_checked(&log, 1).await;
        let expected = if failing {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "status": "not_ready", "detail": "event log storage is unavailable" }),
            )
        } else {
            (StatusCode::OK, json!({ "status": "ready" }))
        };
        let probe = || Request::get("/readyz").body(Body::empty()).unwrap();
        // The first check's result may still be on its way to the state.
        while call(&app, probe()).await.status != expected.0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..200 {
            let answer = call(&app, probe()).await;
            assert_eq!((answer.status, answer.body), expected.clone());
        }
        assert_eq!(log.checks(), 1, "probes do not check the log");
    }
}

#[tokio::test]
async fn a_log_that_cannot_store_answers_503_without_details() {
    let harness = harness(Guard::Open);
    harness.log.close().await.unwrap();
    let answer = harness.post_json(ONBOARDING, GOOD_BODY).await;
    answer.assert_refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the event log cannot take the notification now; retry later",
    );
}

#[tokio::test]
async fn webhook_refusals_follow_rfc_6750() {
    let harness = harness(Guard::OAuth);
    let challenge = |answer: &Answer| {
        answer.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned()
    };

    let answer = harness.post_json(ONBOARDING, GOOD_BODY).await;
    answer.assert_refused(
        StatusCode::UNAUTHORIZED,
        "missing_token",
        "a bearer access token from /oauth/token is required",
    );
    assert_eq!(challenge(&answer), r#"Bearer realm="incode-gateway""#);

    let forged = [("authorization", "Bearer forged")];
    let answer = harness
        .call(post(
            ONBOARDING,
            Some("application/json"),
            &forged,
            GOOD_BODY,
        ))
        .await;
    answer.assert_refused(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "the access token is not valid",
    );
    assert_eq!(
        challenge(&answer),
        r#"Bearer realm="incode-gateway", error="invalid_token", error_description="the access token is not valid""#
    );

    let twice = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
    let answer = harness
        .call(post(
            ONBOARDING,
            Some("application/json"),
            &twice,
            GOOD_BODY,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_request");
    assert!(challenge(&answer).contains(r#"error="invalid_request""#));

    // A token from the token endpoint opens the webhooks.
    let issued = harness
        .token(
            Some(&basic(CLIENT_ID, CLIENT_SECRET)),
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    let bearer = format!("Bearer {}", issued.body["access_token"].as_str().unwrap());
    let answer = harness
        .call(post(
            ONBOARDING,
            Some("application/json"),
            &[("authorization", &bearer)],
            GOOD_BODY,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(harness.stored().await.len(), 1);

    let guarded = self::harness(Guard::Header);
    let answer = guarded.post_json(ONBOARDING, GOOD_BODY).await;
    answer.assert_refused(
        StatusCode::FORBIDDEN,
        "invalid_webhook_header",
        "the request lacks a valid webhook credential",
    );
    assert!(!answer.headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn a_panicking_handler_answers_500_without_details() {
    let response = super::error::panic_response(Box::new("the secret is 42"));
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        body,
        webhook_error(
            "internal_error",
            "the request failed; see the gateway's logs"
        )
    );
}
