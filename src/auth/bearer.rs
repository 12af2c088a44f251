//! The `Authorization` header read once, one way, for both listeners: what it holds, in terms of
//! a bearer token (RFC 6750 §2.1). Each listener decides what an answer means for it: the public
//! listener takes another scheme as "no token" (RFC 6750 §3.1 has such a challenge carry no
//! error code), the internal listener refuses it as malformed, which tells a misconfigured
//! client what to send instead.

use http::{HeaderMap, header};

/// What a request's `Authorization` header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// There is no `Authorization` header.
    Absent,
    /// `Bearer <token>` (the scheme in any case), with a token that is not empty.
    Bearer(&'a [u8]),
    /// Another scheme, such as `Basic`.
    OtherScheme,
    /// `Bearer` without a token.
    EmptyBearer,
    /// The header is given more than once.
    Repeated,
}

/// Reads the `Authorization` header of `headers`.
pub fn authorization(headers: &HeaderMap) -> Authorization<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Authorization::Absent,
        (Some(_), Some(_)) => return Authorization::Repeated,
        (Some(value), None) => value.as_bytes(),
    };
    let (scheme, token) = match value.iter().position(|&byte| byte == b' ') {
        Some(end) => value.split_at(end),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Authorization::OtherScheme;
    }
    match token.trim_ascii() {
        [] => Authorization::EmptyBearer,
        token => Authorization::Bearer(token),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_header_reads_as_one_of_five_answers() {
        for (values, expected) in [
            (&[][..], Authorization::Absent),
            (&["Bearer abc"], Authorization::Bearer(b"abc")),
            (&["bearer  abc "], Authorization::Bearer(b"abc")),
            (&["BEARER abc"], Authorization::Bearer(b"abc")),
            (&["Basic YTpi"], Authorization::OtherScheme),
            (&["Basic"], Authorization::OtherScheme),
            (&["Bearerabc"], Authorization::OtherScheme),
            (&["Bearer"], Authorization::EmptyBearer),
            (&["Bearer   "], Authorization::EmptyBearer),
            (&["Bearer a", "Bearer b"], Authorization::Repeated),
        ] {
            assert_eq!(authorization(&headers(values)), expected, "{values:?}");
        }
    }
}
