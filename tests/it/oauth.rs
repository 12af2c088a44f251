//! The token endpoint, `POST /oauth/token`, as Incode and as an attacker would call it.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use incode_gateway::auth::{Secret, hash_secret};
use reqwest::StatusCode;

use crate::support::{auth_common::*, common::*};

#[tokio::test]
async fn incode_gets_a_token_with_basic_auth_and_its_webhook_is_delivered() {
    let gateway = Gateway::start_with(oauth_config()).await;
    let mut stream = gateway.subscribe(latest(), no_filter()).await;

    let (status, headers, body) = token_request(
        &gateway,
        &gateway.http,
        Some(&basic(CLIENT_ID, CLIENT_SECRET)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "a compact JWT");

    let (status, _, answer) = post_webhook(
        &gateway,
        Some(&format!("Bearer {token}")),
        &[],
        &onboarding_body("flow-1", "ONBOARDING_FINISHED"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, serde_json::json!({ "success": true }));

    let event = next_event(&mut stream).await;
    assert_eq!(event.sequence, 1);
    let Some(incode_gateway::proto::v1::event::Payload::OnboardingStatusChanged(changed)) =
        event.payload
    else {
        panic!("wrong payload")
    };
    assert_eq!(changed.interview_id, "flow-1");
}

struct Case {
    name: &'static str,
    authorization: Option<String>,
    content_type: &'static str,
    body: String,
    status: StatusCode,
    error: &'static str,
}

#[tokio::test]
async fn every_error_of_section_5_2_is_answered_as_the_rfc_says() {
    let gateway = Gateway::start_with(oauth_config()).await;
    let good = basic(CLIENT_ID, CLIENT_SECRET);
    let grant = "grant_type=client_credentials";
    let body_credentials = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
    );
    const FORM: &str = "application/x-www-form-urlencoded";
    let cases = [
        Case {
            name: "wrong content type",
            authorization: Some(good.clone()),
            content_type: "application/json",
            body: grant.into(),
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
        },
        Case {
            name: "missing grant_type",
            authorization: Some(good.clone()),
            content_type: FORM,
            body: "scope=webhooks".into(),
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
        },
        Case {
            name: "repeated grant_type",
            authorization: Some(good.clone()),
            content_type: FORM,
            body: format!("{grant}&{grant}"),
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
        },
        Case {
            name: "Basic that is not base64",
            authorization: Some("Basic %%%".into()),
            content_type: FORM,
            body: grant.into(),
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
        },
        Case {
            name: "Basic without a colon",
            authorization: Some(format!("Basic {}", STANDARD.encode("incode"))),
            content_type: FORM,
            body: grant.into(),
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
        },
        Case {
            name: "Basic and body credentials at once",
            authorization: Some(good.clone()),
            content_type: FORM,
            body: body_credentials.clone(),
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
        },
        Case {
            name: "another grant",
            authorization: Some(good.clone()),
            content_type: FORM,
            body: "grant_type=password&username=a&password=b".into(),
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
        },
        Case {
            name: "no client authentication",
            authorization: None,
            content_type: FORM,
            body: grant.into(),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
        },
        Case {
            name: "wrong secret",
            authorization: Some(basic(CLIENT_ID, "not-the-secret")),
            content_type: FORM,
            body: grant.into(),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
        },
        Case {
            name: "unknown client",
            authorization: Some(basic("someone", CLIENT_SECRET)),
            content_type: FORM,
            body: grant.into(),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
        },
        Case {
            name: "unsupported authentication scheme",
            authorization: Some("Bearer abc".into()),
            content_type: FORM,
            body: grant.into(),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
        },
        Case {
            name: "wrong secret in the body",
            authorization: None,
            content_type: FORM,
            body: format!("{grant}&client_id={CLIENT_ID}&client_secret=nope"),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
        },
    ];

    for Case {
        name,
        authorization,
        content_type,
        body,
        status: expected_status,
        error: expected_error,
    } in cases
    {
        let mut request = gateway
            .http
            .post(gateway.url("/oauth/token"))
            .header("content-type", content_type)
            .body(body);
        if let Some(authorization) = &authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        let (status, answer) = answer(response).await;
        assert_eq!(status, expected_status, "{name}: {answer}");
        assert_eq!(answer["error"], expected_error, "{name}: {answer}");
        assert!(
            answer["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{name}: {answer}"
        );
        assert_eq!(answer.as_object().unwrap().len(), 2, "{name}: {answer}");
        assert_eq!(headers["cache-control"], "no-store", "{name}");
        let challenge = headers.get("www-authenticate").map(|v| v.to_str().unwrap());
        if expected_error == "invalid_client" {
            assert_eq!(challenge, Some(r#"Basic realm="incode-gateway""#), "{name}");
        } else {
            assert_eq!(challenge, None, "{name}");
        }
    }

    // Still serving, and the right credentials still work.
    fetch_token(&gateway).await;
}

#[tokio::test]
async fn basic_credentials_are_form_urlencoded_before_base64() {
    let id = "incode gateway/é";
    let secret = "p@ss:w+rd%&=é";
    let mut config = oauth_config();
    config.auth.oauth_client_id = Some(id.into());
    config.auth.oauth_client_secret = Some(Secret::new(secret));
    let gateway = Gateway::start_with(config).await;

    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let encoded = format!("{}:{}", encode(id), encode(secret));
    assert_ne!(encoded, format!("{id}:{secret}"));
    let (status, _, body) = token_request(
        &gateway,
        &gateway.http,
        Some(&format!("Basic {}", STANDARD.encode(encoded))),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // One reading per request: a client that skips the encoding step, with a secret that
    // decoding changes ('+', '%'), is refused.
    let (status, _, body) = token_request(
        &gateway,
        &gateway.http,
        Some(&basic(id, secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Without those characters, both ways of sending it are the same.
    let mut config = oauth_config();
    config.auth.oauth_client_secret = Some(Secret::new("p@ss:w rd/é"));
    let plain = Gateway::start_with(config).await;
    for authorization in [
        basic(CLIENT_ID, "p@ss:w rd/é"),
        format!(
            "Basic {}",
            STANDARD.encode(format!("{CLIENT_ID}:{}", encode("p@ss:w rd/é")))
        ),
    ] {
        let (status, _, body) = token_request(
            &plain,
            &plain.http,
            Some(&authorization),
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{authorization}: {body}");
    }

    // An encoding of something else is not.
    let wrong = format!("{}:{}", encode(id), encode("p@ss:w+rd%&=e"));
    let (status, _, _) = token_request(
        &gateway,
        &gateway.http,
        Some(&format!("Basic {}", STANDARD.encode(wrong))),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn credentials_in_the_body_work_and_scope_is_accepted() {
    let mut config = oauth_config();
    config.auth.token_ttl = Some(Duration::from_secs(120));
    let gateway = Gateway::start_with(config).await;
    let (status, headers, body) = token_request(
        &gateway,
        &gateway.http,
        None,
        &format!(
            "grant_type=client_credentials&scope=webhooks&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(body["expires_in"], 120);

    let token = body["access_token"].as_str().unwrap();
    let (status, _, answer) = post_webhook(
        &gateway,
        Some(&format!("Bearer {token}")),
        &[],
        &onboarding_body("body-1", "UNKNOWN"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Secret rotation: a client from the config file with an old plain secret and a new argon2id
/// hashed one; both work until the old one is removed.
#[tokio::test]
async fn clients_from_the_config_file_with_rotated_and_hashed_secrets() {
    let hashed = hash_secret("new-secret-7d1e").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[oauth]
token_ttl = "10m"

[[oauth.clients]]
id = "incode"
secrets = ["old-secret-3a9b", "{hashed}"]

[[oauth.clients]]
id = "staging"
secrets = ["staging-secret"]
"#,
            hashed = hashed.as_str()
        ),
    )
    .unwrap();
    let config =
        incode_gateway::ServeArgs::for_tests_with(&["--config", path.to_str().unwrap()]).unwrap();
    assert!(!config.auth.allow_unauthenticated_webhooks);
    let gateway = Gateway::start_with(config).await;

    for (id, secret, expected) in [
        ("incode", "old-secret-3a9b", StatusCode::OK),
        ("incode", "new-secret-7d1e", StatusCode::OK),
        ("staging", "staging-secret", StatusCode::OK),
        ("incode", "staging-secret", StatusCode::UNAUTHORIZED),
        ("incode", hashed.as_str(), StatusCode::UNAUTHORIZED),
    ] {
        let (status, _, body) = token_request(
            &gateway,
            &gateway.http,
            Some(&basic(id, secret)),
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(status, expected, "{id}/{secret}: {body}");
        if status == StatusCode::OK {
            assert_eq!(body["expires_in"], 600);
            let token = body["access_token"].as_str().unwrap();
            let (status, _, answer) = post_webhook(
                &gateway,
                Some(&format!("Bearer {token}")),
                &[],
                &onboarding_body(&format!("{id}-{secret}"), "UNKNOWN"),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    }
    assert_stored(&gateway, 3).await;
}

/// Repeated failures from one address are throttled, even when the right secret finally comes
/// from there; a client with the right secret at another address is not slowed at all.
///
/// The throttle allows 10 failures at once and one more every 6 s, in real time: the bounds below
/// hold however slow the machine is.
#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    const BURST: u64 = 10;
    const REFILL: Duration = Duration::from_secs(6);
    let gateway = Gateway::start_with(oauth_config()).await;
    let attacker = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let wrong = basic(CLIENT_ID, "guess");
    let right = basic(CLIENT_ID, CLIENT_SECRET);
    let grant = "grant_type=client_credentials";

    // Failures until the first 429: the whole burst, and no more than time has refilled.
    let started = Instant::now();
    let mut refused = 0;
    let (retry_after, body) = loop {
        let (status, headers, body) = token_request(&gateway, &attacker, Some(&wrong), grant).await;
        match status {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                break (retry_after, body);
            }
            other => panic!("unexpected {other}: {body}"),
        }
        let refilled = started.elapsed().as_secs_f64() / REFILL.as_secs_f64();
        assert!(
            refused as f64 <= BURST as f64 + refilled.ceil(),
            "{refused} failures in {:?} and still not throttled",
            started.elapsed()
        );
    };
    assert!(refused >= BURST, "throttled after only {refused} failures");
    assert!(
        (1..=REFILL.as_secs()).contains(&retry_after),
        "{retry_after}"
    );
    assert_eq!(body["error"], "slow_down");

    // While throttled, even the right secret from the attacker's address is not checked. Sent
    // right after a failure was charged, the answer comes well inside the 6 s that failure costs;
    // should the machine be too slow for that, try again.
    let mut throttled = false;
    for _ in 0..3 {
        let sent = Instant::now();
        let (status, _, _) = token_request(&gateway, &attacker, Some(&right), grant).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            throttled = true;
            break;
        }
        assert!(
            sent.duration_since(started) >= REFILL,
            "the right secret went through at once, while throttled: {status}"
        );
        // A slow machine gave time for a refill: spend it on a failure and try again at once.
        let (status, _, _) = token_request(&gateway, &attacker, Some(&wrong), grant).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        throttled,
        "the right secret was never refused while throttled"
    );

    // The right secret at another address is never slowed, and many successes in a row never
    // add up to a throttle.
    for _ in 0..30 {
        fetch_token(&gateway).await;
    }
}

#[tokio::test]
async fn the_token_endpoint_only_takes_post() {
    let gateway = Gateway::start_with(oauth_config()).await;
    let response = gateway
        .http
        .get(gateway.url("/oauth/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, StatusCode::METHOD_NOT_ALLOWED);
}
