//! Every error answer of the public listener is in the documentation's error tables, and every
//! row of those tables is an answer the gateway gives: each is provoked here. The tables are the
//! ones headed `| status | `error` | cause |` wherever they are in the README and `docs/` (today
//! both are in docs/http-api.md); the token endpoint's is the one naming
//! `unsupported_grant_type`.

use std::{collections::BTreeSet, net::IpAddr, path::Path, sync::Arc, time::Duration};

use incode_gateway::{
    ServeArgs,
    auth::{Secret, hash_secret},
    log::{EmbeddedLog, EventLog, Storage},
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{auth_common::*, common::*};

/// Answers no test can provoke from outside, and why.
const UNPROVOKABLE: &[(u16, &str, &str)] = &[
    (500, "internal_error", "a handler that panics"),
    (
        500,
        "server_error",
        "a token that cannot be signed, or a crashed verification task",
    ),
];

type Rows = BTreeSet<(u16, String)>;

/// The documented (status, error) pairs: the webhook (and generic) table, and the token
/// endpoint's.
fn documented() -> (Rows, Rows) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        files.extend(entries.map(|entry| entry.unwrap().path()));
    }
    let mut tables: Vec<Rows> = Vec::new();
    for file in files
        .iter()
        .filter(|file| file.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        let mut current: Option<Rows> = None;
        for line in text.lines() {
            if line.starts_with("| status | `error` |") {
                current = Some(Rows::new());
                continue;
            }
            let Some(rows) = current.as_mut() else {
                continue;
            };
            if !line.starts_with('|') {
                tables.push(current.take().unwrap());
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Ok(status) = cells[1].parse::<u16>() else {
                continue; // the | --- | line
            };
            for code in cells[2].split('`').skip(1).step_by(2) {
                rows.insert((status, code.to_owned()));
            }
        }
        tables.extend(current);
    }
    let (token, webhook): (Vec<Rows>, Vec<Rows>) = tables.into_iter().partition(|rows| {
        rows.iter()
            .any(|(_, code)| code == "unsupported_grant_type")
    });
    assert_eq!(
        (webhook.len(), token.len()),
        (1, 1),
        "expected one webhook error table and one token endpoint table"
    );
    (
        webhook.into_iter().next().unwrap(),
        token.into_iter().next().unwrap(),
    )
}

/// A request written by hand, for what a well-behaved client cannot send; returns the status and
/// the JSON answer.
async fn raw(gateway: &Gateway, request: &[u8]) -> (u16, Value) {
    let address = gateway.base_url.trim_start_matches("http://");
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    connection.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, connection.read_to_end(&mut answer))
        .await
        .expect("no answer in time")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_documented_and_every_documented_one_happens() {
    let (documented_webhook, documented_token) = documented();
    let mut webhook = Rows::new();
    let mut token = Rows::new();

    // OAuth and a shared header, small bodies.
    let mut config = oauth_config();
    config.auth.webhook_headers = vec![Secret::new("X-Check=ok")];
    config.max_body_bytes = 1024;
    config.public_listener.request_timeout = Duration::from_secs(1);
    let gateway = Gateway::start_with(config).await;
    let bearer = format!("Bearer {}", fetch_token(&gateway).await);
    let path = WEBHOOK;

    let call = async |method: Method,
                      path: &str,
                      content_type: Option<&str>,
                      headers: &[(&str, &str)],
                      body: Vec<u8>| {
        let mut request = gateway.http.request(method, gateway.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        (status, answer["error"].as_str().unwrap().to_owned())
    };
    let good: &[(&str, &str)] = &[("authorization", &bearer), ("x-check", "ok")];
    let json = Some("application/json");
    for (content_type, headers, body) in [
        (json, good, b"{oops".to_vec()),
        (json, good, b"{\"a\":\"\xff\"}".to_vec()),
        (json, good, b"[1]".to_vec()),
        (json, good, deep_body(30).into_bytes()),
        (
            json,
            good,
            br#"{"interviewId":"n","onboardingStatus":"UNKNOWN","n":12345678901234567890}"#
                .to_vec(),
        ),
        (json, good, br#"{"onboardingStatus":"UNKNOWN"}"#.to_vec()),
        (
            json,
            good,
            br#"{"interviewId":7,"onboardingStatus":"UNKNOWN"}"#.to_vec(),
        ),
        (Some("text/plain"), good, b"{}".to_vec()),
        (json, good, vec![b' '; 2048]),
        (json, &[("x-check", "ok")][..], b"{}".to_vec()),
        (
            json,
            &[("authorization", "Bearer forged"), ("x-check", "ok")][..],
            b"{}".to_vec(),
        ),
        (
            json,
            &[("authorization", bearer.as_str())][..],
            b"{}".to_vec(),
        ),
    ] {
        webhook.insert(call(Method::POST, path, content_type, headers, body).await);
    }
    // Two Authorization headers (reqwest would merge nothing: it sends both).
    let (status, answer) = raw(
        &gateway,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {bearer}\r\n\
             Authorization: {bearer}\r\nX-Check: ok\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await;
    webhook.insert((status, answer["error"].as_str().unwrap().to_owned()));
    webhook.insert(
        call(
            Method::POST,
            "/webhooks/incode/bad%20kind",
            json,
            good,
            b"{}".to_vec(),
        )
        .await,
    );
    webhook.insert(call(Method::GET, "/nope", None, &[], Vec::new()).await);
    webhook.insert(call(Method::GET, path, None, good, Vec::new()).await);
    // A body that breaks off: chunked encoding with a chunk size that is not a number.
    let (status, answer) = raw(
        &gateway,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {bearer}\r\n\
             X-Check: ok\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             zz\r\n"
        )
        .as_bytes(),
    )
    .await;
    webhook.insert((status, answer["error"].as_str().unwrap().to_owned()));
    // A body that never arrives in full, past the request timeout.
    let (status, answer) = raw(
        &gateway,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nX-Check: ok\r\n\
             Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await;
    webhook.insert((status, answer["error"].as_str().unwrap().to_owned()));

    // The token endpoint.
    let form = Some("application/x-www-form-urlencoded");
    let client = basic(CLIENT_ID, CLIENT_SECRET);
    let authenticated: &[(&str, &str)] = &[("authorization", &client)];
    for (content_type, headers, body) in [
        (form, authenticated, b"scope=x".to_vec()),
        (form, authenticated, b"grant_type=password".to_vec()),
        (
            form,
            authenticated,
            format!("grant_type=client_credentials&pad={}", "x".repeat(2048)).into_bytes(),
        ),
        (
            form,
            &[("authorization", basic(CLIENT_ID, "wrong").as_str())][..],
            b"grant_type=client_credentials".to_vec(),
        ),
    ] {
        token.insert(call(Method::POST, "/oauth/token", content_type, headers, body).await);
    }
    // Failures from one address until it is throttled.
    let attacker = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 3]))
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let wrong = basic(CLIENT_ID, "wrong");
    for _ in 0..30 {
        let (status, _, answer) = token_request(
            &gateway,
            &attacker,
            Some(&wrong),
            "grant_type=client_credentials",
        )
        .await;
        token.insert((
            status.as_u16(),
            answer["error"].as_str().unwrap().to_owned(),
        ));
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }

    // A body whose event would be too large for subscribers' decoders, on a gateway that takes
    // large bodies.
    let mut config = ServeArgs::for_tests();
    config.max_body_bytes = 4 << 20;
    let large = Gateway::start_with(config).await;
    let body = serde_json::json!({
        "interviewId": "large", "onboardingStatus": "UNKNOWN", "blob": "x".repeat(1 << 20),
    });
    let (status, answer) = large.post_json(path, &body.to_string()).await;
    webhook.insert((
        status.as_u16(),
        answer["error"].as_str().unwrap().to_owned(),
    ));

    // Every argon2 check allowed at once busy: concurrent requests of a client with a hashed
    // secret, one check at a time.
    let mut config = oauth_config();
    config.auth.oauth_client_secret =
        Some(Secret::new(hash_secret(CLIENT_SECRET).unwrap().as_str()));
    config.client_auth_limits.max_concurrent_secret_checks = 1;
    let hashed = Gateway::start_with(config).await;
    let mut busy = None;
    for _ in 0..20 {
        let requests = (0..8).map(|_| {
            token_request(
                &hashed,
                &hashed.http,
                Some(&client),
                "grant_type=client_credentials",
            )
        });
        let answers = futures::future::join_all(requests).await;
        busy = answers
            .into_iter()
            .find(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE);
        if busy.is_some() {
            break;
        }
    }
    let (status, _, answer) = busy.expect("no request found every secret check busy");
    token.insert((
        status.as_u16(),
        answer["error"].as_str().unwrap().to_owned(),
    ));

    // A log that cannot take the notification.
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().to_owned();
    let log = Arc::new(EmbeddedLog::open(data_dir.path(), config.embedded_settings()).unwrap());
    let closed = Gateway::start_with_storage(data_dir, config, Storage::new(log.clone())).await;
    log.close().await.unwrap();
    let (status, answer) = closed
        .post_json(path, &onboarding_body("late", "UNKNOWN"))
        .await;
    webhook.insert((
        status.as_u16(),
        answer["error"].as_str().unwrap().to_owned(),
    ));

    for (status, code, _) in UNPROVOKABLE {
        let row = (*status, (*code).to_owned());
        assert!(
            documented_webhook.contains(&row) || documented_token.contains(&row),
            "{status} {code} is not documented"
        );
        if documented_webhook.contains(&row) {
            webhook.insert(row);
        } else {
            token.insert(row);
        }
    }
    assert_eq!(
        webhook, documented_webhook,
        "webhook answers (left) and the documented ones (right) differ"
    );
    assert_eq!(
        token, documented_token,
        "token endpoint answers (left) and the documented ones (right) differ"
    );
}

/// A notification body nested `levels` objects deep.
fn deep_body(levels: usize) -> String {
    let mut deep = serde_json::json!("leaf");
    for _ in 0..levels {
        deep = serde_json::json!({ "a": deep });
    }
    serde_json::json!({ "interviewId": "deep", "onboardingStatus": "UNKNOWN", "extra": deep })
        .to_string()
}
