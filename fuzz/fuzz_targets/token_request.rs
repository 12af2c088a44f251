//! The token endpoint's request parsing: the `Authorization: Basic` header and the form body.
//! Input: one byte with the length of the header value, the header value, then the body.

#![no_main]

use http::{HeaderMap, HeaderValue, header};
use incode_gateway::http::fuzzing::parse_token_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&length, rest)) = data.split_first() else {
        return;
    };
    let (authorization, body) = rest.split_at(usize::from(length).min(rest.len()));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        headers.insert(header::AUTHORIZATION, value);
    }
    match parse_token_request(&headers, body) {
        Ok(credentials) => {
            // Decoding only ever shrinks what was sent (percent-decoding and base64, with
            // invalid UTF-8 refused rather than replaced).
            assert!(credentials.id.len() <= data.len());
            assert!(credentials.secret.expose().len() <= data.len());
        }
        Err((status, code)) => {
            assert!(status.is_client_error(), "{status} {code}");
            assert!(!code.is_empty());
        }
    }
});
