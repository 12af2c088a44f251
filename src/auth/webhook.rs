//! What a webhook call must carry to be accepted: a bearer token issued to a configured client,
//! the configured shared-secret headers, or both. [`Authenticated`] is the proof that it did.

use std::fmt;

use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    ClientId, Secret, TokenError,
    bearer::{Authorization, authorization},
};

/// Proof that a webhook call passed the guard. Only the guard makes one, and the webhook
/// handlers cannot store a notification without it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    client: Option<ClientId>,
}

impl Authenticated {
    pub(super) fn new(client: Option<ClientId>) -> Self {
        Self { client }
    }

    /// The client whose bearer token the call carried; `None` when no token is required.
    pub fn client(&self) -> Option<&ClientId> {
        self.client.as_ref()
    }
}

/// A header every webhook call must carry with exactly this value (Incode's "custom headers").
pub struct WebhookHeader {
    name: HeaderName,
    value_digest: [u8; 32],
}

impl fmt::Debug for WebhookHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHeader")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a `--webhook-header` is not usable. The messages never include the value.
#[derive(Debug, thiserror::Error)]
pub enum WebhookHeaderError {
    /// No `=` between name and value.
    #[error("a webhook header must be given as NAME=VALUE")]
    MissingEquals,
    /// The name is not a valid HTTP header name.
    #[error("`{name}` is not a valid HTTP header name")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The value is empty.
    #[error("webhook header `{name}` has an empty value")]
    EmptyValue {
        /// The header.
        name: HeaderName,
    },
    /// The value has characters an HTTP header value cannot have.
    #[error("webhook header `{name}` has a value with characters not allowed in HTTP headers")]
    InvalidValue {
        /// The header.
        name: HeaderName,
    },
}

impl WebhookHeader {
    /// Parses `NAME=VALUE`.
    pub fn parse(spec: &Secret) -> Result<Self, WebhookHeaderError> {
        let (name, value) = spec
            .expose()
            .split_once('=')
            .ok_or(WebhookHeaderError::MissingEquals)?;
        Self::new(name, &Secret::new(value))
    }

    /// A header named `name` that must have `value`.
    pub fn new(name: &str, value: &Secret) -> Result<Self, WebhookHeaderError> {
        let name =
            HeaderName::try_from(name.trim()).map_err(|_| WebhookHeaderError::InvalidName {
                name: name.to_owned(),
            })?;
        let value = value.expose();
        if value.is_empty() {
            return Err(WebhookHeaderError::EmptyValue { name });
        }
        if axum::http::HeaderValue::from_str(value).is_err() {
            return Err(WebhookHeaderError::InvalidValue { name });
        }
        Ok(Self {
            name,
            value_digest: Sha256::digest(value.as_bytes()).into(),
        })
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// Whether the request has this header exactly once, with the expected value. Compared as
    /// fixed-length digests in constant time, so neither the value nor its length leaks.
    fn is_present_in(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => {
                let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
                bool::from(digest.ct_eq(&self.value_digest))
            }
            _ => false,
        }
    }
}

/// Why a webhook call was refused. The messages are safe to show to the caller.
#[derive(Debug, thiserror::Error)]
pub enum WebhookAuthError {
    /// No `Authorization: Bearer` header.
    #[error("a bearer access token from /oauth/token is required")]
    MissingToken,
    /// More than one `Authorization` header.
    #[error("only one Authorization header is allowed")]
    AmbiguousAuthorization,
    /// The token is not acceptable.
    #[error(transparent)]
    InvalidToken(#[from] TokenError),
    /// A required header is missing, repeated or has the wrong value.
    #[error("the request lacks the expected `{name}` header")]
    HeaderMismatch {
        /// The header.
        name: HeaderName,
    },
}

/// The bearer token in `Authorization`, if the header uses the Bearer scheme (RFC 6750 §2.1).
pub(super) fn bearer_token(headers: &HeaderMap) -> Result<&str, WebhookAuthError> {
    match authorization(headers) {
        Authorization::Bearer(token) => std::str::from_utf8(token)
            .ok()
            .filter(|token| token.bytes().all(|byte| byte.is_ascii_graphic()))
            .ok_or_else(|| TokenError::Malformed.into()),
        // Another scheme is "no token" to us (RFC 6750 §3.1: no error code in the challenge).
        Authorization::Absent | Authorization::OtherScheme => Err(WebhookAuthError::MissingToken),
        Authorization::EmptyBearer => Err(TokenError::Malformed.into()),
        Authorization::Repeated => Err(WebhookAuthError::AmbiguousAuthorization),
    }
}

/// Checks that `headers` carry every one of the `required` webhook headers.
pub fn check_headers(
    required: &[WebhookHeader],
    headers: &HeaderMap,
) -> Result<(), WebhookAuthError> {
    match required
        .iter()
        .find(|header| !header.is_present_in(headers))
    {
        Some(missing) => Err(WebhookAuthError::HeaderMismatch {
            name: missing.name.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, header};

    use super::*;

    #[test]
    fn header_specs_parse_and_never_echo_the_value() {
        let header = WebhookHeader::parse(&Secret::new("X-Incode-Secret=s3cr=t")).unwrap();
        assert_eq!(header.name().as_str(), "x-incode-secret");
        assert!(!format!("{header:?}").contains("s3cr"));
        for (spec, expected) in [
            ("no-equals-s3cret", "NAME=VALUE"),
            ("bad name=s3cret", "not a valid HTTP header name"),
            ("X-A=", "empty value"),
            ("X-A=s3cret\n", "not allowed"),
        ] {
            let error = WebhookHeader::parse(&Secret::new(spec))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn a_header_must_be_there_once_with_the_value() {
        let required = [WebhookHeader::parse(&Secret::new("X-Key=right")).unwrap()];
        let mut headers = HeaderMap::new();
        assert!(check_headers(&required, &headers).is_err());
        headers.insert("x-key", HeaderValue::from_static("wrong"));
        assert!(check_headers(&required, &headers).is_err());
        headers.insert("x-key", HeaderValue::from_static("right"));
        assert!(check_headers(&required, &headers).is_ok());
        headers.append("x-key", HeaderValue::from_static("right"));
        assert!(check_headers(&required, &headers).is_err());
    }

    #[test]
    fn bearer_tokens_are_found_only_in_the_bearer_scheme() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            headers
        };
        assert_eq!(bearer_token(&with("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&with("bearer  abc")).unwrap(), "abc");
        assert!(matches!(
            bearer_token(&with("Basic YTpi")),
            Err(WebhookAuthError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(&with("Bearer")),
            Err(WebhookAuthError::InvalidToken(TokenError::Malformed))
        ));
        assert!(matches!(
            bearer_token(&HeaderMap::new()),
            Err(WebhookAuthError::MissingToken)
        ));
        let mut twice = with("Bearer a");
        twice.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(matches!(
            bearer_token(&twice),
            Err(WebhookAuthError::AmbiguousAuthorization)
        ));
    }
}
