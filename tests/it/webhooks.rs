//! Incode's side: every webhook shape, deduplication of retries, and bad input.

use incode_gateway::proto::v1::{self, event::Payload};
use prost_types::value::Kind;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::common::*;

#[tokio::test]
async fn onboarding_status_is_delivered_with_every_field() {
    let gateway = Gateway::start().await;
    let mut stream = gateway.subscribe(latest(), no_filter()).await;
    let body = json!({
        "interviewId": "64f0c1a2e4b0",
        "externalId": "customer-42",
        "onboardingStatus": "MANUAL_REVIEW_APPROVED",
        "flowId": "flow-7",
        "clientId": "acme",
        "nested": { "a": [1, true, null] }
    })
    .to_string();
    gateway
        .notify("/webhooks/incode/onboarding-status", &body)
        .await;

    let event = next_event(&mut stream).await;
    assert_eq!(event.sequence, 1);
    assert_eq!(event.r#type(), v1::EventType::OnboardingStatusChanged);
    assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "id {}", event.id);
    assert!(event.received_at.is_some());
    let Some(Payload::OnboardingStatusChanged(changed)) = event.payload else {
        panic!("wrong payload: {:?}", event.payload)
    };
    assert_eq!(changed.interview_id, "64f0c1a2e4b0");
    assert_eq!(changed.external_id.as_deref(), Some("customer-42"));
    assert_eq!(
        changed.onboarding_status(),
        v1::OnboardingStatus::ManualReviewApproved
    );
    assert_eq!(changed.onboarding_status_raw, "MANUAL_REVIEW_APPROVED");
    let fields = changed.additional_fields.unwrap().fields;
    assert_eq!(fields.len(), 3, "{fields:?}");
    assert_eq!(
        fields["flowId"].kind,
        Some(Kind::StringValue("flow-7".into()))
    );
    assert_eq!(
        fields["clientId"].kind,
        Some(Kind::StringValue("acme".into()))
    );
    let Some(Kind::StructValue(nested)) = &fields["nested"].kind else {
        panic!("nested is not a struct")
    };
    let Some(Kind::ListValue(list)) = &nested.fields["a"].kind else {
        panic!("nested.a is not a list")
    };
    assert_eq!(list.values.len(), 3);
    assert_eq!(list.values[0].kind, Some(Kind::NumberValue(1.0)));
    assert_eq!(list.values[1].kind, Some(Kind::BoolValue(true)));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn watchlist_update_is_delivered_with_every_field() {
    let gateway = Gateway::start().await;
    let mut stream = gateway.subscribe(latest(), no_filter()).await;
    let body = json!({ "interviewId": "i-1", "ref": "ref-9", "search_id": "s-3", "extra": 2.5 })
        .to_string();
    gateway
        .notify("/webhooks/incode/watchlist-updated", &body)
        .await;

    let event = next_event(&mut stream).await;
    assert_eq!(event.r#type(), v1::EventType::WatchlistUpdated);
    let Some(Payload::WatchlistUpdated(updated)) = event.payload else {
        panic!("wrong payload")
    };
    assert_eq!(updated.interview_id, "i-1");
    assert_eq!(updated.r#ref, "ref-9");
    assert_eq!(updated.search_id, "s-3");
    assert_eq!(
        updated.additional_fields.unwrap().fields["extra"].kind,
        Some(Kind::NumberValue(2.5))
    );
}

#[tokio::test]
async fn the_single_url_recognises_each_shape() {
    let gateway = Gateway::start().await;
    let mut stream = gateway.subscribe(latest(), no_filter()).await;
    gateway
        .notify(
            "/webhooks/incode",
            &onboarding_body("a", "ONBOARDING_FINISHED"),
        )
        .await;
    gateway
        .notify(
            "/webhooks/incode",
            r#"{"interviewId":"b","ref":"r","search_id":"s"}"#,
        )
        .await;
    let unknown = r#"{"interviewId":"c","documentExpired":true}"#;
    gateway.notify("/webhooks/incode", unknown).await;

    let first = next_event(&mut stream).await;
    assert_eq!(first.r#type(), v1::EventType::OnboardingStatusChanged);
    let second = next_event(&mut stream).await;
    assert_eq!(second.r#type(), v1::EventType::WatchlistUpdated);
    let third = next_event(&mut stream).await;
    assert_eq!(third.r#type(), v1::EventType::UnrecognizedNotification);
    let Some(Payload::UnrecognizedNotification(kept)) = third.payload else {
        panic!("wrong payload")
    };
    assert_eq!(kept.kind, "unknown");
    assert_eq!(kept.raw_json, unknown);
    assert_eq!(kept.interview_id, "c");
}

#[tokio::test]
async fn other_kinds_and_unknown_statuses_are_kept() {
    let gateway = Gateway::start().await;
    let mut stream = gateway.subscribe(latest(), no_filter()).await;
    let body = r#"{"interviewId":"x","anything":[1,2,3]}"#;
    gateway
        .notify("/webhooks/incode/document-expired", body)
        .await;
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("y", "SOME_FUTURE_STATUS"),
        )
        .await;

    let kept = next_event(&mut stream).await;
    let Some(Payload::UnrecognizedNotification(kept)) = kept.payload else {
        panic!("wrong payload")
    };
    assert_eq!(kept.kind, "document-expired");
    assert_eq!(kept.raw_json, body);

    let unknown = next_event(&mut stream).await;
    let Some(Payload::OnboardingStatusChanged(changed)) = unknown.payload else {
        panic!("wrong payload")
    };
    assert_eq!(
        changed.onboarding_status(),
        v1::OnboardingStatus::Unspecified
    );
    assert_eq!(changed.onboarding_status_raw, "SOME_FUTURE_STATUS");
}

#[tokio::test]
async fn a_retry_is_acknowledged_but_not_stored_twice() {
    let gateway = Gateway::start().await;
    let body = onboarding_body("retry-1", "ONBOARDING_FINISHED");
    gateway
        .notify("/webhooks/incode/onboarding-status", &body)
        .await;
    gateway
        .notify("/webhooks/incode/onboarding-status", &body)
        .await;
    // A different body is a different notification.
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("retry-1", "MANUAL_REVIEW_APPROVED"),
        )
        .await;

    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    let first = next_event(&mut stream).await;
    let second = next_event(&mut stream).await;
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert_eq!(expect_caught_up(&mut stream).await, 2);
}

#[tokio::test]
async fn concurrent_identical_requests_store_one_event() {
    let gateway = Gateway::start().await;
    let body = onboarding_body("race", "ONBOARDING_FINISHED");
    let requests = (0..16).map(|_| gateway.post_json("/webhooks/incode/onboarding-status", &body));
    for (status, answer) in futures::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    assert_eq!(expect_caught_up(&mut stream).await, 1);
}

#[tokio::test]
async fn bad_input_is_answered_4xx_with_a_reason_and_the_service_keeps_serving() {
    let gateway = Gateway::start().await;
    let path = "/webhooks/incode/onboarding-status";
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "application/json",
            b"{oops".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "application/json",
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "application/json",
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
            "not_an_object",
        ),
        (
            "application/json",
            b"\"text\"".to_vec(),
            StatusCode::BAD_REQUEST,
            "not_an_object",
        ),
        (
            "application/json",
            b"{\"a\":\"\xff\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
        ),
        (
            "application/json",
            br#"{"onboardingStatus":"UNKNOWN"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
        ),
        (
            "application/json",
            br#"{"interviewId":"a"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
        ),
        (
            "application/json",
            br#"{"interviewId":["a"],"onboardingStatus":"UNKNOWN"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "application/json",
            br#"{"interviewId":"a","onboardingStatus":7}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "application/json",
            br#"{"interviewId":"a","externalId":{},"onboardingStatus":"UNKNOWN"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "text/plain",
            onboarding_body("a", "UNKNOWN").into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "application/json",
            format!(
                r#"{{"interviewId":"a","onboardingStatus":"UNKNOWN","pad":"{}"}}"#,
                "x".repeat(70_000)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (content_type, body, expected_status, expected_error) in cases {
        let response = gateway
            .http
            .post(gateway.url(path))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = answer(response).await;
        assert_eq!(
            status,
            expected_status,
            "{answer} for {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(answer["success"], false);
        assert_eq!(answer["error"], expected_error, "{answer}");
        assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    // No content type at all, an invalid kind, an unknown path and a wrong method.
    let response = gateway
        .http
        .post(gateway.url(path))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, body) = gateway.post_json("/webhooks/incode/bad%20kind", "{}").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_kind"))
    );
    let (status, _) = gateway.post_json("/nope", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = gateway.http.get(gateway.url(path)).send().await.unwrap();
    assert_eq!(answer(response).await.0, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing was stored, and the gateway still serves.
    gateway
        .notify(path, &onboarding_body("after", "UNKNOWN"))
        .await;
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    assert_eq!(expect_caught_up(&mut stream).await, 1);
}
