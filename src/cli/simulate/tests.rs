use incode_gateway::config::simulate::parse_url;

use super::*;

#[test]
fn basic_authorization_form_encodes_id_and_secret() {
    let value = basic_authorization("id:1", "p@ss word/+").unwrap();
    assert!(value.is_sensitive());
    let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
    let decoded = String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap();
    assert_eq!(decoded, "id%3A1:p%40ss+word%2F%2B");
}

#[test]
fn incode_counts_200_json_and_204_as_delivered() {
    let answer = |status: u16, json: bool| Answer::Status {
        status: StatusCode::from_u16(status).unwrap(),
        json,
    };
    assert!(answer(200, true).acknowledged());
    assert!(answer(204, false).acknowledged());
    assert!(!answer(200, false).acknowledged());
    assert!(!answer(201, true).acknowledged());
    assert!(!answer(503, true).acknowledged());
    assert!(!Answer::TimedOut.acknowledged());
    assert!(!Answer::Failed.acknowledged());
}

#[test]
fn json_content_types_are_recognised() {
    let headers = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    };
    assert!(is_json(&headers("application/json")));
    assert!(is_json(&headers("Application/JSON; charset=utf-8")));
    assert!(!is_json(&headers("text/plain")));
    assert!(!is_json(&headers("application/jsonp")));
    assert!(!is_json(&HeaderMap::new()));
}

#[test]
fn sessions_go_through_incode_statuses_in_order_and_never_repeat() {
    let mut generator = Generator::new(Kind::OnboardingStatus, Some(7));
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..500 {
        let notification = generator.next_notification();
        assert_eq!(notification.kind, NotificationKind::OnboardingStatus);
        let body: serde_json::Value = serde_json::from_slice(&notification.body).unwrap();
        let id = body["interviewId"].as_str().unwrap();
        assert_eq!(id.len(), 24);
        let status = body["onboardingStatus"].as_str().unwrap().to_owned();
        seen.entry(id.to_owned()).or_default().push(status);
    }
    assert!(
        seen.len() > SESSIONS_IN_PROGRESS,
        "sessions finish and new ones start"
    );
    for statuses in seen.values() {
        assert!(statuses.len() <= LIFECYCLE.len() + 1, "{statuses:?}");
        for (status, expected) in statuses.iter().zip(LIFECYCLE) {
            assert_eq!(status, expected);
        }
        if let Some(review) = statuses.get(LIFECYCLE.len()) {
            assert!(REVIEWS.contains(&review.as_str()), "{statuses:?}");
        }
    }
}

#[test]
fn the_same_seed_makes_the_same_onboarding_notifications() {
    let bodies = |seed| {
        let mut generator = Generator::new(Kind::OnboardingStatus, Some(seed));
        (0..20)
            .map(|_| generator.next_notification().body)
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(1), bodies(1));
    assert_ne!(bodies(1), bodies(2));
}

#[test]
fn mixed_sends_both_kinds() {
    let mut generator = Generator::new(Kind::Mixed, Some(3));
    let kinds: Vec<_> = (0..100)
        .map(|_| generator.next_notification().kind)
        .collect();
    let watchlist = kinds
        .iter()
        .filter(|kind| **kind == NotificationKind::WatchlistUpdated)
        .count();
    assert!(
        (5..50).contains(&watchlist),
        "{watchlist} watchlist updates in 100"
    );
}

#[test]
fn percentiles_are_nearest_rank() {
    let mut tally = Tally::default();
    for ms in 1..=100 {
        tally.record(Delivery {
            attempts: vec![Attempt {
                latency: Duration::from_millis(ms),
                answer: Answer::Status {
                    status: StatusCode::OK,
                    json: true,
                },
            }],
            token_error: None,
        });
    }
    let summary = tally.summarize(Duration::from_secs(1), 0, false);
    assert_eq!(summary.latency_ms.p50, Some(50.0));
    assert_eq!(summary.latency_ms.p90, Some(90.0));
    assert_eq!(summary.latency_ms.p99, Some(99.0));
    assert_eq!(summary.latency_ms.max, Some(100.0));
    assert_eq!(
        (summary.sent, summary.acknowledged, summary.requests),
        (100, 100, 100)
    );
}

#[test]
fn secrets_are_not_shown_by_debug() {
    let secret: Secret = "hunter2".parse().unwrap();
    assert!(!format!("{secret:?}").contains("hunter2"));
}

#[test]
fn endpoints_append_to_the_base_path() {
    let url = |base: &str, path| {
        endpoint(&parse_url(base).unwrap(), path)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        url("http://127.0.0.1:8080", "oauth/token"),
        "http://127.0.0.1:8080/oauth/token"
    );
    assert_eq!(
        url(
            "http://gw.internal/prefix/",
            "webhooks/incode/onboarding-status"
        ),
        "http://gw.internal/prefix/webhooks/incode/onboarding-status"
    );
    assert!(parse_url("https://gw.example").is_err());
    assert!(parse_url("127.0.0.1:8080").is_err());
}
