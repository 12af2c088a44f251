//! The public listener under attack: slow and idle connections, floods past the connection
//! limit, credential guessing behind a proxy, forged forwarding headers, poison bodies, forged
//! tokens and oversized subscription filters. After each attack Incode is still served and a
//! subscriber still reads every event.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use incode_gateway::{
    ServeArgs,
    proto::v1::{self, EventFilter},
};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use crate::support::{auth_common::*, common::*};

/// The header read timeout the timing tests use: short, so that the generous bounds below stay
/// short too.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after the header timeout a connection may still be open before the test fails: the
/// watchdog acts at once, so this is only slack for a loaded machine.
const SLACK: Duration = Duration::from_secs(4);

fn hardened_config() -> ServeArgs {
    let mut config = oauth_config();
    config.public_listener.header_read_timeout = HEADER_TIMEOUT;
    config.public_listener.request_timeout = Duration::from_secs(2);
    config.public_listener.idle_timeout = Duration::from_secs(2);
    config
}

fn public_addr(gateway: &Gateway) -> SocketAddr {
    gateway
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// Opens a connection and sends half a request head.
async fn half_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: gateway\r\nContent-Type: applic")
        .await
        .unwrap();
    stream
}

/// Waits until the peer closes `stream` (end of stream or reset), at most until `deadline`;
/// whatever the gateway sent before closing is returned.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// One HTTP/1.1 request on an open connection; the status and JSON body of the answer.
async fn raw_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a content-length");
            if received.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = serde_json::from_slice(&received[end + 4..end + 4 + length]).unwrap();
                return (status, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed before the answer was complete"
        );
        received.extend_from_slice(&buffer[..n]);
    }
}

/// Incode's whole exchange, on fresh connections: a token, then a notification.
async fn incode_delivers(gateway: &Gateway, interview_id: &str) {
    let token = fetch_token(gateway).await;
    let (status, _, answer) = post_webhook(
        gateway,
        Some(&format!("Bearer {token}")),
        &[],
        &onboarding_body(interview_id, "ONBOARDING_FINISHED"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// A subscriber from the earliest event reads exactly these interview ids, in order.
async fn subscriber_reads(gateway: &Gateway, expected: &[&str]) {
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    let events = drain_until_caught_up(&mut stream).await;
    let ids: Vec<&str> = events.iter().map(interview_id).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn slowloris_connections_are_closed_within_the_header_timeout_while_incode_is_served() {
    let gateway = Gateway::start_with(hardened_config()).await;
    let addr = public_addr(&gateway);
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..200 {
        attackers.push(half_request(addr).await);
    }

    // Incode, meanwhile, is served as usual.
    incode_delivers(&gateway, "during-slowloris").await;

    let deadline = started + HEADER_TIMEOUT + SLACK;
    for (index, stream) in attackers.iter_mut().enumerate() {
        assert!(
            closed_by(stream, deadline).await.is_some(),
            "half-sent request #{index} still open {:?} after it started",
            started.elapsed()
        );
    }
    subscriber_reads(&gateway, &["during-slowloris"]).await;
}

/// Past the connection limit, a newcomer closes the unauthenticated and slow first: Incode's
/// authenticated keep-alive connection survives a flood, and Incode's new connections get in.
#[tokio::test]
async fn a_flood_past_the_connection_limit_closes_the_attackers_connections_first() {
    let mut config = hardened_config();
    config.public_listener.max_connections = 20;
    // Long enough that no timeout, only the limit, closes anything during the flood.
    config.public_listener.header_read_timeout = Duration::from_secs(30);
    config.public_listener.idle_timeout = Duration::from_secs(60);
    let gateway = Gateway::start_with(config).await;
    let addr = public_addr(&gateway);

    // Incode's connection authenticates, then stays open, idle.
    let mut incode = TcpStream::connect(addr).await.unwrap();
    let (status, token) = raw_request(
        &mut incode,
        "POST",
        "/oauth/token",
        &[
            ("Authorization", &basic(CLIENT_ID, CLIENT_SECRET)),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let token = token["access_token"].as_str().unwrap().to_owned();

    // A flood five times the limit: every newcomer closes an older unauthenticated one.
    let mut attackers = Vec::new();
    for _ in 0..100 {
        attackers.push(half_request(addr).await);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut closed = 0;
    for stream in attackers.iter_mut().take(80) {
        if closed_by(stream, deadline).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 80,
        "the oldest 80 attackers make room for the newest"
    );

    // Incode's connection was spared, and still delivers.
    let (status, answer) = raw_request(
        &mut incode,
        "POST",
        "/webhooks/incode/onboarding-status",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        &onboarding_body("kept-connection", "ONBOARDING_FINISHED"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // And a new connection of Incode's gets in too, closing an attacker's.
    incode_delivers(&gateway, "new-connection").await;
    subscriber_reads(&gateway, &["kept-connection", "new-connection"]).await;
}

#[tokio::test]
async fn idle_connections_and_slow_bodies_are_closed() {
    let gateway = Gateway::start_with(hardened_config()).await;
    let addr = public_addr(&gateway);

    // A kept-alive connection that goes quiet is closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (status, _) = raw_request(&mut idle, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    let quiet_since = Instant::now();
    let closed = closed_by(&mut idle, quiet_since + Duration::from_secs(2) + SLACK).await;
    assert!(closed.is_some(), "an idle connection stayed open");
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        quiet_since.elapsed()
    );

    // A kept-alive connection that starts a head and stalls gets the header timeout.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let (status, _) = raw_request(&mut stalled, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    stalled.write_all(b"GET /heal").await.unwrap();
    let stalled_at = Instant::now();
    assert!(
        closed_by(&mut stalled, stalled_at + HEADER_TIMEOUT + SLACK)
            .await
            .is_some()
    );

    // A body that never completes is answered 408, with JSON, and the connection closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /oauth/token HTTP/1.1\r\nHost: gateway\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_",
    )
    .await
    .unwrap();
    let sent_at = Instant::now();
    let answer = closed_by(&mut slow, sent_at + Duration::from_secs(2) + SLACK)
        .await
        .expect("the slow request was not closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");

    // Heads over the size or field-count limit are refused by the parser, and closed.
    for (fields, size) in [(100, 10), (4, 20_000)] {
        let mut big = TcpStream::connect(addr).await.unwrap();
        let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: gateway\r\n");
        for n in 0..fields {
            head.push_str(&format!("X-Field-{n}: {}\r\n", "a".repeat(size)));
        }
        head.push_str("\r\n");
        big.write_all(head.as_bytes()).await.unwrap();
        let answer = closed_by(&mut big, Instant::now() + PATIENCE)
            .await
            .expect("an oversized head was not closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }

    incode_delivers(&gateway, "after-slow-clients").await;
    subscriber_reads(&gateway, &["after-slow-clients"]).await;
}

/// HTTP/2 (with prior knowledge, as behind a proxy speaking h2c) is served, and gets the same
/// header and idle timeouts.
#[tokio::test]
async fn http2_connections_are_served_and_get_the_same_timeouts() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let gateway = Gateway::start_with(hardened_config()).await;
    let addr = public_addr(&gateway);
    let handshake = || async {
        let stream = TcpStream::connect(addr).await.unwrap();
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap()
    };

    let (mut sender, connection) = handshake().await;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{addr}/healthz"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    drop(response);
    // Then idle, with the client still holding it: closed after the idle timeout (2 s).
    tokio::time::timeout(Duration::from_secs(2) + SLACK, connection)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap()
        .ok();

    // A connection that never sends a request is closed after the header timeout.
    let (_silent_sender, silent) = handshake().await;
    let opened = Instant::now();
    tokio::time::timeout(HEADER_TIMEOUT + SLACK, silent)
        .await
        .expect("a silent HTTP/2 connection stayed open")
        .ok();
    assert!(
        opened.elapsed() >= HEADER_TIMEOUT / 2,
        "{:?}",
        opened.elapsed()
    );
    drop(sender);

    incode_delivers(&gateway, "after-http2").await;
    subscriber_reads(&gateway, &["after-http2"]).await;
}

/// The scenario of the issue: Incode and an attacker behind the same TLS-terminating proxy. The
/// attacker's failures throttle the attacker's address only.
#[tokio::test]
async fn behind_a_trusted_proxy_the_attacker_cannot_lock_incode_out() {
    let mut config = hardened_config();
    // The proxy is the loopback peer every request comes from.
    config.public_listener.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gateway = Gateway::start_with(config).await;
    let grant = "grant_type=client_credentials";
    let as_client = |address: &'static str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-forwarded-for", address.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    // What the proxy sends: the attacker also forges Incode's address in front of its own.
    let attacker = as_client("203.0.113.10, 198.51.100.66");
    let incode = as_client("203.0.113.10");

    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (status, _, _) =
            token_request(&gateway, &attacker, Some(&basic(CLIENT_ID, "guess")), grant).await;
        statuses.push(status);
    }
    assert_eq!(statuses[..10], [StatusCode::UNAUTHORIZED; 10]);
    assert!(
        statuses[10..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    // Incode's next correct request, through the same proxy, gets its token.
    let (status, _, body) = token_request(
        &gateway,
        &incode,
        Some(&basic(CLIENT_ID, CLIENT_SECRET)),
        grant,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (status, _, _) = post_webhook(
        &gateway,
        Some(&format!("Bearer {token}")),
        &[],
        &onboarding_body("behind-proxy", "ONBOARDING_FINISHED"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The attacker is still throttled, even with the right secret.
    let (status, _, _) = token_request(
        &gateway,
        &attacker,
        Some(&basic(CLIENT_ID, CLIENT_SECRET)),
        grant,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    subscriber_reads(&gateway, &["behind-proxy"]).await;
}

/// From a peer that is not a trusted proxy, forwarding headers are ignored: rotating them does
/// not escape the throttle (and, behind an untrusted proxy, the lockout of the issue remains).
#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let gateway = Gateway::start_with(hardened_config()).await;
    let grant = "grant_type=client_credentials";
    let mut statuses = Vec::new();
    for n in 0..12 {
        let response = gateway
            .http
            .post(gateway.url("/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", basic(CLIENT_ID, "guess"))
            .header("x-forwarded-for", format!("198.51.100.{n}"))
            .header("forwarded", format!("for=198.51.100.{n}"))
            .body(grant)
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(statuses[..10], [StatusCode::UNAUTHORIZED; 10]);
    assert!(
        statuses[10..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let (status, _, _) = token_request(
        &gateway,
        &gateway.http,
        Some(&basic(CLIENT_ID, CLIENT_SECRET)),
        grant,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "all of it is one client: the peer"
    );

    // Another address is not affected.
    let other = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let (status, _, body) = token_request(
        &gateway,
        &other,
        Some(&basic(CLIENT_ID, CLIENT_SECRET)),
        grant,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The poison message of the issue: a body nested 40 levels deep is refused before it is
/// stored, and so is a number the event cannot carry; what is accepted is readable.
#[tokio::test]
async fn bodies_the_event_cannot_carry_are_refused_and_subscribers_keep_reading() {
    let gateway = Gateway::start().await;
    let mut live = gateway.subscribe(latest(), no_filter()).await;

    let mut deep = serde_json::json!("leaf");
    for _ in 0..40 {
        deep = serde_json::json!({ "nested": deep });
    }
    let body =
        serde_json::json!({ "interviewId": "deep", "onboardingStatus": "UNKNOWN", "extra": deep });
    let (status, answer) = gateway
        .post_json("/webhooks/incode/onboarding-status", &body.to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"], "too_deep");
    assert!(
        answer["detail"].as_str().unwrap().contains("24 levels"),
        "{answer}"
    );

    let (status, answer) = gateway
        .post_json(
            "/webhooks/incode/onboarding-status",
            r#"{"interviewId":"big","onboardingStatus":"UNKNOWN","amount":{"cents":12345678901234567890}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"], "unrepresentable_number");
    assert!(
        answer["detail"].as_str().unwrap().contains("amount.cents"),
        "{answer}"
    );

    // Adversarial but carriable: the deepest accepted nesting, odd keys and strings, the
    // largest exact integers, an unknown kind nested deeper than any decoder could take.
    let mut deepest = serde_json::json!([]);
    for level in 3..=24 {
        deepest = if level % 2 == 0 {
            serde_json::json!([deepest])
        } else {
            serde_json::json!({ "": deepest })
        };
    }
    let accepted = [
        (
            "/webhooks/incode/onboarding-status",
            serde_json::json!({
                "interviewId": "deepest", "onboardingStatus": "UNKNOWN", "d": deepest,
            })
            .to_string(),
        ),
        (
            "/webhooks/incode/watchlist-updated",
            serde_json::json!({
                "interviewId": "odd", "ref": "\u{0}", "search_id": "\u{2028}😀",
                "\u{0}key": [9007199254740992i64, -9007199254740992i64, 1e308, -0.0, null],
            })
            .to_string(),
        ),
        (
            "/webhooks/incode/document-expired",
            format!(
                r#"{{"interviewId":"unknown-kind","x":{}1{}}}"#,
                "[".repeat(100),
                "]".repeat(100)
            ),
        ),
    ];
    for (path, body) in &accepted {
        gateway.notify(path, body).await;
    }
    for expected in ["deepest", "odd", "unknown-kind"] {
        assert_eq!(interview_id(&next_event(&mut live).await), expected);
    }
    subscriber_reads(&gateway, &["deepest", "odd", "unknown-kind"]).await;
}

/// A forged token learns nothing from the refusal: the answer is the same whatever is wrong
/// with it, and so is the token endpoint's for an unknown client or a wrong secret.
#[tokio::test]
async fn refusals_are_generic() {
    let gateway = Gateway::start_with(oauth_config()).await;
    let body = onboarding_body("forged", "UNKNOWN");
    let mut answers = Vec::new();
    for token in [
        forge(&valid_claims(), Algorithm::HS256, OTHER_KEY, OTHER_KEY),
        forge(&valid_claims(), Algorithm::HS256, OTHER_KEY, SIGNING_KEY),
        forge(&valid_claims(), Algorithm::HS512, SIGNING_KEY, SIGNING_KEY),
        "not-a-token".to_owned(),
    ] {
        let (status, headers, answer) =
            post_webhook(&gateway, Some(&format!("Bearer {token}")), &[], &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer,
            serde_json::json!({
                "success": false,
                "error": "invalid_token",
                "detail": "the access token is not valid",
            })
        );
        answers.push((answer, headers["www-authenticate"].clone()));
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );
    assert!(!format!("{answers:?}").contains("key"));

    let grant = "grant_type=client_credentials";
    let (status, _, unknown) =
        token_request(&gateway, &gateway.http, Some(&basic("nobody", "x")), grant).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, _, wrong) =
        token_request(&gateway, &gateway.http, Some(&basic(CLIENT_ID, "x")), grant).await;
    assert_eq!(unknown, wrong);
    assert_eq!(
        unknown,
        serde_json::json!({
            "error": "invalid_client",
            "error_description": "client authentication failed",
        })
    );

    // With a shared header, its name is not given away either.
    let mut config = ServeArgs::for_tests();
    config.auth.allow_unauthenticated_webhooks = false;
    config.auth.webhook_headers = vec!["X-Incode-Secret=shh".parse().unwrap()];
    let guarded = Gateway::start_with(config).await;
    let (status, answer) = guarded
        .post_json("/webhooks/incode/onboarding-status", &body)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        !answer.to_string().to_ascii_lowercase().contains("x-incode"),
        "{answer}"
    );
}

#[tokio::test]
async fn oversized_subscription_filters_are_refused() {
    let gateway = Gateway::start().await;
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("before", "ONBOARDING_FINISHED"),
        )
        .await;

    // The issue's request: 200,000 ids. Whichever limit sees it first (the transport's message
    // size or the filter's caps) refuses it.
    let huge = EventFilter {
        interview_ids: (0..200_000).map(|n| format!("id-{n}")).collect(),
        ..EventFilter::default()
    };
    let status = gateway
        .try_subscribe(earliest(), huge)
        .await
        .map(|_| ())
        .expect_err("200,000 ids");
    assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange
        ),
        "{status:?}"
    );

    // Within the message size, the filter's own caps answer, naming the list.
    let many_ids = EventFilter {
        interview_ids: (0..5_000).map(|n| format!("id-{n}")).collect(),
        ..EventFilter::default()
    };
    let long_id = EventFilter {
        interview_ids: vec!["x".repeat(257)],
        ..EventFilter::default()
    };
    let many_types = EventFilter {
        types: vec![1; 100],
        ..EventFilter::default()
    };
    for (name, filter, expected) in [
        (
            "5,000 ids",
            many_ids,
            "filter.interview_ids has 5000 entries",
        ),
        ("a 257-byte id", long_id, "256 bytes"),
        ("100 types", many_types, "filter.types"),
    ] {
        let status = gateway
            .try_subscribe(earliest(), filter)
            .await
            .map(|_| ())
            .expect_err(name);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(status.message().contains(expected), "{name}: {status:?}");
    }

    // The largest accepted filter works, and so does reading everything.
    let largest = EventFilter {
        interview_ids: (1..1024)
            .map(|n| format!("id-{n}"))
            .chain(std::iter::once("before".to_owned()))
            .collect(),
        types: vec![v1::EventType::OnboardingStatusChanged.into()],
        ..EventFilter::default()
    };
    let mut stream = gateway.subscribe(earliest(), largest).await;
    let events = drain_until_caught_up(&mut stream).await;
    assert_eq!(events.len(), 1);
    subscriber_reads(&gateway, &["before"]).await;
}

/// A flood of refused requests does not flood the log: each `error` code gets at most 10 lines
/// a minute (the count of the others follows with its next line), and each kind of refusal is
/// still logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_requests_writes_a_bounded_number_of_log_lines() {
    const LINES_PER_MINUTE: usize = 10;
    const FLOOD: usize = 150;
    let data_dir = tempfile::tempdir().unwrap();
    let process = GatewayProcess::spawn_with(
        data_dir.path(),
        &[
            "--oauth-client-id",
            CLIENT_ID,
            "--oauth-client-secret",
            CLIENT_SECRET,
        ],
        &[],
    )
    .await;
    let http = http_client();
    let url = |path: &str| format!("{}{path}", process.base_url);
    let started = Instant::now();
    for n in 0..FLOOD {
        let not_found = http
            .get(url(&format!("/nothing-{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        let no_token = http
            .post(url(WEBHOOK))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
        // Wrong secrets: `invalid_client`, then throttled (`slow_down`).
        let guess = http
            .post(url("/oauth/token"))
            .basic_auth(CLIENT_ID, Some(format!("guess-{n}")))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert!(guess.status().is_client_error(), "{}", guess.status());
    }
    let minutes = started.elapsed().as_secs() as usize / 60;
    // A code not used above: its line comes after every line of the flood.
    let marker = http.get(url("/oauth/token")).send().await.unwrap();
    assert_eq!(marker.status(), StatusCode::METHOD_NOT_ALLOWED);
    let deadline = Instant::now() + PATIENCE;
    let rejections = loop {
        let rejections: Vec<Value> = process
            .output
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| record["message"] == "request rejected")
            .collect();
        if rejections
            .iter()
            .any(|record| record["error"] == "method_not_allowed")
        {
            break rejections;
        }
        assert!(Instant::now() < deadline, "no line for the marker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The flood may straddle a window boundary, and each window may be split by one more.
    let bound = LINES_PER_MINUTE * (minutes + 2);
    for code in ["not_found", "missing_token", "invalid_client", "slow_down"] {
        let lines: Vec<_> = rejections
            .iter()
            .filter(|record| record["error"] == code)
            .collect();
        assert!(!lines.is_empty(), "no line for {code}");
        assert!(
            lines.len() <= bound,
            "{} lines for {code} after {FLOOD} refusals",
            lines.len()
        );
        // Each line says who was refused, and why when the caller was not told.
        assert_eq!(lines[0]["client"], "127.0.0.1", "{}", lines[0]);
    }
    let reasons: Vec<_> = rejections
        .iter()
        .filter(|record| record["error"] == "invalid_client")
        .map(|record| record["reason"].clone())
        .collect();
    assert!(
        reasons
            .iter()
            .all(|reason| reason == "wrong secret for a known client id"),
        "{reasons:?}"
    );
    assert!(
        rejections.len() <= 5 * bound,
        "{} rejection lines in all",
        rejections.len()
    );
}
