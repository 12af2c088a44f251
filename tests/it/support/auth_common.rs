//! Helpers for the authentication tests: a gateway with an OAuth client, token requests as
//! Incode makes them, and tokens forged outside the gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use incode_gateway::{
    ServeArgs,
    auth::{AUDIENCE, ISSUER, Secret, TokenKey},
};
use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Value, json};

use crate::support::common::*;

pub const CLIENT_ID: &str = "incode";
pub const CLIENT_SECRET: &str = "s3cret-for-incode-4f9c";
/// 32 bytes, base64.
pub const SIGNING_KEY: &str = "c2lnbmluZy1rZXktZm9yLXRlc3RzLTAxMjM0NTY3ODk=";
/// Another 32 bytes, base64.
pub const OTHER_KEY: &str = "b3RoZXIta2V5LWZvci10ZXN0cy0wMTIzNDU2Nzg5YWI=";

pub const WEBHOOK: &str = "/webhooks/incode/onboarding-status";

/// A configuration with one OAuth client and a fixed signing key; webhooks need a token.
pub fn oauth_config() -> ServeArgs {
    let mut config = ServeArgs::for_tests();
    config.auth.allow_unauthenticated_webhooks = false;
    config.auth.oauth_client_id = Some(CLIENT_ID.into());
    config.auth.oauth_client_secret = Some(Secret::new(CLIENT_SECRET));
    config.auth.token_signing_key = Some(Secret::new(SIGNING_KEY));
    config
}

/// `Authorization: Basic` as RFC 6749 §2.3.1 has it, for an id and secret that need no encoding.
pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// The token endpoint's answer to a form body with these extra headers.
pub async fn token_request(
    gateway: &Gateway,
    client: &reqwest::Client,
    authorization: Option<&str>,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = client
        .post(gateway.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let (status, body) = answer(response).await;
    (status, headers, body)
}

/// A token obtained as Incode obtains it.
pub async fn fetch_token(gateway: &Gateway) -> String {
    let (status, headers, body) = token_request(
        gateway,
        &gateway.http,
        Some(&basic(CLIENT_ID, CLIENT_SECRET)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Posts a notification with this `Authorization` header (if any).
pub async fn post_webhook(
    gateway: &Gateway,
    authorization: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = gateway
        .http
        .post(gateway.url(WEBHOOK))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let (status, body) = answer(response).await;
    (status, headers, body)
}

/// Asserts that the log holds exactly `count` events.
pub async fn assert_stored(gateway: &Gateway, count: u64) {
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    for expected in 1..=count {
        assert_eq!(next_event(&mut stream).await.sequence, expected);
    }
    assert_eq!(expect_caught_up(&mut stream).await, count);
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims as the gateway would issue them to `CLIENT_ID`, valid for an hour.
pub fn valid_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": CLIENT_ID,
        "iat": now,
        "exp": now + 3600,
        "jti": "forged-1",
    })
}

/// The HMAC algorithms tokens can be forged with.
#[derive(Debug, Clone, Copy)]
pub enum Algorithm {
    HS256,
    HS512,
}

/// A token signed outside the gateway with `key` (base64), naming `kid_of`'s key id: a JWS
/// compact serialisation (RFC 7515) written from scratch.
pub fn forge(claims: &Value, algorithm: Algorithm, key: &str, kid_of: &str) -> String {
    let signing = TokenKey::parse(&Secret::new(key)).unwrap();
    let named = TokenKey::parse(&Secret::new(kid_of)).unwrap();
    let alg = format!("{algorithm:?}");
    let header = json!({ "alg": alg, "typ": "JWT", "kid": named.id() });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match algorithm {
        Algorithm::HS256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(signing.expose_bytes()).unwrap();
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Algorithm::HS512 => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(signing.expose_bytes()).unwrap();
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An unsigned token (`alg: none`) with these claims, naming the signing key.
pub fn unsigned(claims: &Value) -> String {
    let kid = TokenKey::parse(&Secret::new(SIGNING_KEY)).unwrap();
    let header = json!({ "alg": "none", "typ": "JWT", "kid": kid.id() });
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
