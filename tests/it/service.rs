//! Health, reflection and shutdown.

use incode_gateway::{ServeArgs, proto::v1::subscribe_response::Response};
use reqwest::StatusCode;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::common::*;

#[tokio::test]
async fn http_health_endpoints_answer() {
    let gateway = Gateway::start().await;
    let (status, body) = gateway.get_json("/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = gateway.get_json("/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
}

#[tokio::test]
async fn grpc_health_and_reflection_answer() {
    let gateway = Gateway::start().await;
    let mut health = HealthClient::new(gateway.channel().await);
    for service in ["", "incode.gateway.v1.EventStreamService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(gateway.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"incode.gateway.v1.EventStreamService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn the_public_listener_does_not_serve_grpc_and_the_internal_one_not_webhooks() {
    let gateway = Gateway::start().await;
    let response = gateway
        .http
        .post(gateway.url("/incode.gateway.v1.EventStreamService/Subscribe"))
        .header("content-type", "application/grpc")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // The internal listener answers HTTP/1.1 (for /metrics) but serves no webhook: at most a
    // gRPC "unimplemented", and nothing is stored.
    let response = gateway
        .http
        .post(format!("http://{}/webhooks/incode", gateway.grpc_addr))
        .header("content-type", "application/json")
        .body(onboarding_body("a", "UNKNOWN"))
        .send()
        .await
        .unwrap();
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    assert!(!body.contains("success"), "{body}");
    assert_eq!(grpc_status.as_deref(), Some("12"), "expected UNIMPLEMENTED");
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(expect_caught_up(&mut stream).await, 0);
}

#[tokio::test]
async fn shutdown_ends_streams_and_returns() {
    let mut config = ServeArgs::for_tests();
    config.shutdown_timeout = std::time::Duration::from_secs(5);
    let gateway = Gateway::start_with(config).await;
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert!(matches!(
        next_message(&mut stream).await,
        Response::CaughtUp(_)
    ));
    gateway.stop().await.unwrap();
    // As the contract says: UNAVAILABLE, which clients retry (against another replica, or this
    // one once it is back), resuming after the last sequence they saw. A clean end (OK) would
    // read as "finished" to a client written from the proto.
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap();
    match end {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}
