//! The webhook guard: only calls with a good bearer token (and the configured shared headers)
//! are stored; everything else is refused before anything is appended.

use incode_gateway::{ServeArgs, auth::Secret};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{auth_common::*, common::*};

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

#[tokio::test]
async fn bad_or_missing_tokens_are_refused_and_nothing_is_stored() {
    let gateway = Gateway::start_with(oauth_config()).await;
    let body = onboarding_body("forged", "ONBOARDING_FINISHED");
    let now = now();

    let good = fetch_token(&gateway).await;
    let tampered = {
        // Same header and signature, claims of another client.
        let parts: Vec<&str> = good.split('.').collect();
        let forged = forge(
            &with(valid_claims(), "sub", "someone-else".into()),
            Algorithm::HS256,
            OTHER_KEY,
            SIGNING_KEY,
        );
        let claims = forged.split('.').nth(1).unwrap();
        format!("{}.{}.{}", parts[0], claims, parts[2])
    };
    let invalid_tokens = [
        (
            "expired",
            forge(
                &with(
                    with(valid_claims(), "iat", (now - 7200).into()),
                    "exp",
                    (now - 3600).into(),
                ),
                Algorithm::HS256,
                SIGNING_KEY,
                SIGNING_KEY,
            ),
        ),
        ("tampered", tampered),
        (
            "signed with another key under our key id",
            forge(&valid_claims(), Algorithm::HS256, OTHER_KEY, SIGNING_KEY),
        ),
        (
            "signed with an unknown key",
            forge(&valid_claims(), Algorithm::HS256, OTHER_KEY, OTHER_KEY),
        ),
        ("alg none", unsigned(&valid_claims())),
        (
            "another algorithm with our key",
            forge(&valid_claims(), Algorithm::HS512, SIGNING_KEY, SIGNING_KEY),
        ),
        (
            "wrong audience",
            forge(
                &with(valid_claims(), "aud", "someone-else".into()),
                Algorithm::HS256,
                SIGNING_KEY,
                SIGNING_KEY,
            ),
        ),
        (
            "wrong issuer",
            forge(
                &with(valid_claims(), "iss", "someone-else".into()),
                Algorithm::HS256,
                SIGNING_KEY,
                SIGNING_KEY,
            ),
        ),
        (
            "a client that is not configured",
            forge(
                &with(valid_claims(), "sub", "someone-else".into()),
                Algorithm::HS256,
                SIGNING_KEY,
                SIGNING_KEY,
            ),
        ),
        (
            "issued in the future",
            forge(
                &with(valid_claims(), "iat", (now + 600).into()),
                Algorithm::HS256,
                SIGNING_KEY,
                SIGNING_KEY,
            ),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    for (name, token) in &invalid_tokens {
        let (status, headers, answer) =
            post_webhook(&gateway, Some(&format!("Bearer {token}")), &[], &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {answer}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with(r#"Bearer realm="incode-gateway", error="invalid_token""#),
            "{name}: {challenge}"
        );
        assert_eq!(answer["success"], false, "{name}");
        assert_eq!(answer["error"], "invalid_token", "{name}: {answer}");
    }

    // No credentials at all, or another scheme: a challenge without an error code.
    for authorization in [None, Some(basic(CLIENT_ID, CLIENT_SECRET))] {
        let (status, headers, answer) =
            post_webhook(&gateway, authorization.as_deref(), &[], &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(
            headers["www-authenticate"],
            r#"Bearer realm="incode-gateway""#
        );
        assert_eq!(answer["error"], "missing_token");
    }

    // Every other webhook endpoint is guarded too.
    for path in [
        "/webhooks/incode",
        "/webhooks/incode/watchlist-updated",
        "/webhooks/incode/document-expired",
    ] {
        let (status, _) = gateway.post_json(path, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }

    assert_stored(&gateway, 0).await;

    // The genuine token, and one forged with our own key and claims, are the only ones stored.
    let genuine = forge(&valid_claims(), Algorithm::HS256, SIGNING_KEY, SIGNING_KEY);
    for token in [good, genuine] {
        let (status, _, answer) =
            post_webhook(&gateway, Some(&format!("Bearer {token}")), &[], &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_stored(&gateway, 1).await;
}

/// Key rotation: a new gateway signs with a new key and keeps the old one to verify, so tokens
/// Incode got before the rotation keep working until they expire.
#[tokio::test]
async fn a_token_signed_by_a_verify_only_key_is_accepted() {
    let before = Gateway::start_with(oauth_config()).await;
    let old_token = fetch_token(&before).await;

    let dir = tempfile::tempdir().unwrap();
    let old_key_file = dir.path().join("old.key");
    std::fs::write(&old_key_file, format!("{SIGNING_KEY}\n")).unwrap();
    let mut rotated = oauth_config();
    rotated.auth.token_signing_key = Some(Secret::new(OTHER_KEY));
    rotated.auth.token_verify_key_files = vec![old_key_file];
    let after = Gateway::start_with(rotated).await;
    let new_token = fetch_token(&after).await;
    assert_ne!(
        old_token.split('.').next(),
        new_token.split('.').next(),
        "the header names another key"
    );
    for (n, token) in [&old_token, &new_token].into_iter().enumerate() {
        let (status, _, answer) = post_webhook(
            &after,
            Some(&format!("Bearer {token}")),
            &[],
            &onboarding_body(&format!("rotated-{n}"), "UNKNOWN"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_stored(&after, 2).await;

    // Once the old key is dropped, its tokens are refused.
    let mut forgotten = oauth_config();
    forgotten.auth.token_signing_key = Some(Secret::new(OTHER_KEY));
    let dropped = Gateway::start_with(forgotten).await;
    let (status, _, _) = post_webhook(
        &dropped,
        Some(&format!("Bearer {old_token}")),
        &[],
        &onboarding_body("dropped", "UNKNOWN"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_stored(&dropped, 0).await;
}

#[tokio::test]
async fn a_shared_header_alone_guards_the_webhooks() {
    let mut config = ServeArgs::for_tests();
    config.auth.allow_unauthenticated_webhooks = false;
    config.auth.webhook_headers = vec![Secret::new("X-Incode-Secret=shared-7c21")];
    let gateway = Gateway::start_with(config).await;
    let body = onboarding_body("header", "UNKNOWN");

    for extra in [
        vec![],
        vec![("x-incode-secret", "wrong")],
        vec![("x-incode-secret", "shared-7c2")],
        vec![("x-incode-secret", "shared-7c21x")],
        vec![("x-other", "shared-7c21")],
    ] {
        let (status, _, answer) = post_webhook(&gateway, None, &extra, &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{extra:?}: {answer}");
        assert_eq!(answer["error"], "invalid_webhook_header");
    }
    assert_stored(&gateway, 0).await;

    let (status, _, answer) =
        post_webhook(&gateway, None, &[("X-Incode-Secret", "shared-7c21")], &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_stored(&gateway, 1).await;
}

#[tokio::test]
async fn a_shared_header_and_a_token_are_both_required_when_both_are_configured() {
    let mut config = oauth_config();
    config.auth.webhook_headers = vec![Secret::new("X-Incode-Secret=shared-7c21")];
    let gateway = Gateway::start_with(config).await;
    let bearer = format!("Bearer {}", fetch_token(&gateway).await);
    let header = [("x-incode-secret", "shared-7c21")];
    let body = onboarding_body("both", "UNKNOWN");

    let (status, _, _) = post_webhook(&gateway, None, &header, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = post_webhook(&gateway, Some(&bearer), &[], &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_stored(&gateway, 0).await;
    let (status, _, answer) = post_webhook(&gateway, Some(&bearer), &header, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_stored(&gateway, 1).await;
}

#[tokio::test]
async fn health_stays_open() {
    let gateway = Gateway::start_with(oauth_config()).await;
    for path in ["/healthz", "/readyz"] {
        let response = gateway.http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(answer(response).await.0, StatusCode::OK, "{path}");
    }
}
