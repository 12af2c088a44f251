use axum::http::StatusCode;

use super::*;

#[test]
fn the_unauthenticated_go_first_then_the_longest_idle() {
    let connection = |id| Arc::new(Connection::new(id));
    let (slow, busy_stranger, idle_incode, busy_incode) =
        (connection(0), connection(1), connection(2), connection(3));
    let _request = busy_stranger.request_started(false);
    idle_incode.authenticated.store(true, Ordering::Relaxed);
    busy_incode.authenticated.store(true, Ordering::Relaxed);
    let _served = busy_incode.request_started(false);

    let rank = |c: &Connection| c.eviction_rank().map(|(class, _)| class);
    assert_eq!(rank(&slow), Some(0));
    assert_eq!(rank(&busy_stranger), Some(1));
    assert_eq!(rank(&idle_incode), Some(2));
    assert_eq!(rank(&busy_incode), None, "never closed for room");

    // Among idle authenticated connections, the one idle longest goes first, whenever each
    // was accepted.
    let older = connection(4);
    std::thread::sleep(Duration::from_millis(5));
    let newer = connection(5);
    for c in [&older, &newer] {
        c.authenticated.store(true, Ordering::Relaxed);
    }
    drop(newer.request_started(false));
    std::thread::sleep(Duration::from_millis(5));
    drop(older.request_started(false));
    assert!(newer.eviction_rank() < older.eviction_rank());
}

#[test]
fn deadlines_follow_the_connection_state() {
    let limits = ListenerSettings {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1,
        http2_max_concurrent_streams: 1,
    };
    let connection = Arc::new(Connection::new(0));
    // New: the first head within the header timeout of the accept.
    assert_eq!(
        connection.deadline(&limits),
        Some(connection.accepted_at + limits.header_read_timeout)
    );
    // Busy: the request timeout applies instead.
    let request = connection.request_started(false);
    assert_eq!(connection.deadline(&limits), None);
    drop(request);
    // Idle: the idle timeout, until a byte of the next head arrives.
    let idle = connection.deadline(&limits).unwrap();
    assert!(idle >= connection.accepted_at + limits.idle_timeout);
    connection.on_read();
    let head = connection.deadline(&limits).unwrap();
    assert!(head < idle);
    // HTTP/2 connections are not timed from bytes (pings and settings are not heads).
    let h2 = Arc::new(Connection::new(1));
    drop(h2.request_started(true));
    let idle = h2.deadline(&limits);
    h2.on_read();
    assert_eq!(h2.deadline(&limits), idle);
}

async fn json_of(response: Response<Body>) -> serde_json::Value {
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_request_out_of_time_is_408_or_503_and_closes_the_connection() {
    let slow_body = timed_out(false, Version::HTTP_11);
    assert_eq!(slow_body.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(slow_body.headers()[header::CONNECTION], "close");
    assert_eq!(
        json_of(slow_body).await,
        serde_json::json!({
            "success": false,
            "error": "request_timeout",
            "detail": "the request body did not arrive in time",
        })
    );
    let slow_answer = timed_out(true, Version::HTTP_2);
    assert_eq!(slow_answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!slow_answer.headers().contains_key(header::CONNECTION));
    assert_eq!(
        json_of(slow_answer).await,
        serde_json::json!({
            "success": false,
            "error": "unavailable",
            "detail": "the request could not be completed in time; retry later",
        })
    );
}

/// A request still in flight when the shutdown deadline passes is answered 503 at once,
/// whatever its handler is waiting for, and its connection is closed.
#[tokio::test]
async fn a_request_in_flight_when_the_listener_gives_up_is_answered_503() {
    // The handler says when it has started, then never answers.
    let started = Arc::new(Notify::new());
    let handler_started = started.clone();
    let app = Router::new().route(
        "/held",
        axum::routing::post(move || async move {
            handler_started.notify_one();
            std::future::pending::<&'static str>().await
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = ListenerSettings {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4,
        http2_max_concurrent_streams: 4,
    };
    let (shutdown, give_up) = (CancellationToken::new(), CancellationToken::new());
    let served = tokio::spawn(serve(
        listener,
        app,
        limits,
        TrustedProxies::none(),
        shutdown.clone(),
        give_up.clone(),
    ));
    let mut connection = TcpStream::connect(address).await.unwrap();
    let request = "POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    tokio::io::AsyncWriteExt::write_all(&mut connection, request.as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the request never reached its handler");
    // The request is in flight until the listener gives up.
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut connection, &mut answer);
    tokio::pin!(read);
    shutdown.cancel();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut read)
            .await
            .is_err(),
        "answered before the deadline"
    );
    give_up.cancel();
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer and no close")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        serde_json::json!({
            "success": false,
            "error": "unavailable",
            "detail": "the gateway is shutting down; retry later",
        })
    );
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the listener did not finish")
        .unwrap()
        .unwrap();
}
