//! The token endpoint's answers, through the router.

use super::*;

#[tokio::test]
async fn token_endpoint_errors_have_the_rfc_6749_shape() {
    let harness = harness(Guard::OAuth);
    let client = basic(CLIENT_ID, CLIENT_SECRET);
    let form = Some("application/x-www-form-urlencoded");
    let grant = "grant_type=client_credentials";
    let request = |content_type, authorization: Option<&str>, body: Body| {
        let headers: Vec<_> = authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        post("/oauth/token", content_type, &headers, body)
    };
    let cases = [
        (
            request(form, Some(&client), "scope=x".into()),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            ),
        ),
        (
            request(form, Some(&client), "grant_type=password".into()),
            (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ),
        ),
        (
            request(form, Some(&client), "grant_type=a&grant_type=b".into()),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the grant_type parameter is repeated",
            ),
        ),
        (
            request(form, None, grant.into()),
            (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required (HTTP Basic)",
            ),
        ),
        (
            request(form, Some("Bearer x"), grant.into()),
            (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "only HTTP Basic client authentication is supported",
            ),
        ),
        (
            request(form, Some("Basic !!!"), grant.into()),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "malformed HTTP Basic credentials",
            ),
        ),
        (
            request(Some("application/json"), Some(&client), grant.into()),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            ),
        ),
        (
            request(form, Some(&client), vec![b'x'; 2048].into()),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body is too large",
            ),
        ),
    ];
    for (request, (status, error, description)) in cases {
        let answer = harness.call(request).await;
        assert_eq!(
            (answer.status, &answer.body),
            (status, &token_error(error, description))
        );
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(answer.headers[header::PRAGMA], "no-cache");
        assert_eq!(
            answer.headers.contains_key(header::WWW_AUTHENTICATE),
            status == StatusCode::UNAUTHORIZED,
            "{description}"
        );
    }
}

#[tokio::test]
async fn failed_client_authentication_is_generic_then_throttled() {
    let harness = harness(Guard::OAuth);
    let grant = "grant_type=client_credentials";
    let wrong = basic(CLIENT_ID, "wrong");
    let unknown = basic("nobody", CLIENT_SECRET);
    for authorization in [&wrong, &unknown] {
        let answer = harness.token(Some(authorization), grant).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.body,
            token_error("invalid_client", "client authentication failed")
        );
        assert_eq!(
            answer.headers[header::WWW_AUTHENTICATE],
            r#"Basic realm="incode-gateway""#
        );
    }
    // The burst of two is spent: even the right secret waits.
    let answer = harness
        .token(Some(&basic(CLIENT_ID, CLIENT_SECRET)), grant)
        .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        answer.body,
        token_error(
            "slow_down",
            "too many failed client authentications from this address; retry later"
        )
    );
    let retry_after: u64 = answer.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry_after), "{retry_after}");
}
