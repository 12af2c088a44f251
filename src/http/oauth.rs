//! The OAuth 2.0 token endpoint, `POST /oauth/token` (RFC 6749): the client credentials grant
//! (§4.4), with the client authenticated by HTTP Basic (§2.3.1) as Incode does, or by
//! `client_id` and `client_secret` in the body. Successes are §5.1, errors have §5.2's body shape
//! `{"error":"…","error_description":"…"}` rather than the webhooks' one, with §5.2's codes plus
//! three it does not define (see `TokenRequestError`).

use std::{borrow::Cow, net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::Serialize;
use tracing::Instrument;

use super::{
    AppState, PeerIp,
    auth::Connection,
    error::{SEE_THE_LOGS, is_too_large},
    rejections::Rejection,
};
use crate::{
    auth::{ClientAuthError, ClientCredentials, IssueError, Secret},
    error::{ErrorKind, ServiceError, log_failure},
};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/oauth/token", post(token))
}

/// §5.1.
#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

/// Why a token request was refused, answered in §5.2's shape with §5.2's `error` codes plus
/// three it does not define: `slow_down` (registered by RFC 8628, §3.5, for "wait before trying
/// again") for throttled clients, with 429, and `temporarily_unavailable` (503) and
/// `server_error` (500), from the authorization endpoint's list (§4.1.2.1), for our own limits
/// and failures.
#[derive(Debug, thiserror::Error)]
enum TokenRequestError {
    #[error("the request body is too large")]
    BodyTooLarge,
    #[error("the request body could not be read")]
    UnreadableBody(#[source] BytesRejection),
    #[error("Content-Type must be application/x-www-form-urlencoded")]
    NotAForm,
    #[error("the form body is not UTF-8")]
    FormNotUtf8,
    #[error("a form parameter does not decode to UTF-8")]
    ParameterNotUtf8,
    #[error("the {name} parameter is repeated")]
    RepeatedParameter { name: &'static str },
    #[error("{name} is missing")]
    MissingParameter { name: &'static str },
    #[error("only the client_credentials grant is supported")]
    UnsupportedGrantType,
    #[error("the Authorization header is repeated")]
    RepeatedAuthorization,
    #[error("malformed HTTP Basic credentials")]
    MalformedBasic,
    #[error("the client authenticated twice: with HTTP Basic and with client_secret in the body")]
    TwoAuthentications,
    #[error("client_id in the body differs from the HTTP Basic one")]
    ClientIdMismatch,
    #[error("client authentication is required (HTTP Basic)")]
    NoClientAuthentication,
    #[error("only HTTP Basic client authentication is supported")]
    NotBasic,
    #[error(transparent)]
    Authentication(#[from] ClientAuthError),
    #[error("could not issue an access token")]
    Issue(#[source] IssueError),
}

impl ServiceError for TokenRequestError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NoClientAuthentication
            | Self::NotBasic
            | Self::Authentication(ClientAuthError::InvalidClient(_)) => ErrorKind::Unauthenticated,
            Self::Authentication(ClientAuthError::Throttled(_)) => ErrorKind::ResourceExhausted,
            Self::Authentication(ClientAuthError::Busy) => ErrorKind::Unavailable,
            Self::Authentication(ClientAuthError::Internal(_)) | Self::Issue(_) => {
                ErrorKind::Internal
            }
            _ => ErrorKind::BadRequest,
        }
    }

    fn code(&self) -> &'static str {
        match (self, self.kind()) {
            (Self::UnsupportedGrantType, _) => "unsupported_grant_type",
            (_, ErrorKind::Unauthenticated) => "invalid_client",
            (_, ErrorKind::ResourceExhausted) => "slow_down",
            (_, ErrorKind::Unavailable) => "temporarily_unavailable",
            (_, ErrorKind::Internal) => "server_error",
            _ => "invalid_request",
        }
    }

    fn public_message(&self) -> Cow<'_, str> {
        if self.is_failure() {
            SEE_THE_LOGS.into()
        } else {
            self.to_string().into()
        }
    }

    /// A busy gateway refuses, and is logged with the rejections, with the client's address.
    fn is_failure(&self) -> bool {
        self.kind() == ErrorKind::Internal
    }
}

impl TokenRequestError {
    /// What the rate-limited log of rejections says of this refusal (the caller was told
    /// `detail`), with what the caller is not told; `None` for a failure of the gateway, which
    /// is logged with its causes instead.
    fn rejection(&self, detail: String) -> Option<Rejection> {
        let rejection = Rejection::new(self.http_status(), self.code(), detail);
        match self {
            Self::Authentication(ClientAuthError::InvalidClient(reason)) => {
                Some(rejection.with_reason(reason.to_string()))
            }
            // The gateway's own limits: an operator may have to raise them.
            Self::Authentication(ClientAuthError::Throttled(_) | ClientAuthError::Busy) => {
                Some(rejection.logged_as_warning())
            }
            _ if self.is_failure() => None,
            _ => Some(rejection),
        }
    }

    /// How long the client should wait before trying again, if it should.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Authentication(ClientAuthError::Throttled(throttled)) => {
                Some(throttled.retry_after)
            }
            Self::Authentication(ClientAuthError::Busy) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<BytesRejection> for TokenRequestError {
    fn from(rejection: BytesRejection) -> Self {
        if is_too_large(&rejection) {
            Self::BodyTooLarge
        } else {
            Self::UnreadableBody(rejection)
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl IntoResponse for TokenRequestError {
    fn into_response(self) -> Response {
        log_failure(&self);
        let detail = self.public_message();
        let body = ErrorBody {
            error: self.code(),
            error_description: &detail,
        };
        let mut response = (self.http_status(), Json(body)).into_response();
        if let Some(rejection) = self.rejection(detail.into_owned()) {
            response.extensions_mut().insert(rejection);
        }
        let headers = response.headers_mut();
        no_store(headers);
        if self.kind() == ErrorKind::Unauthenticated {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="incode-gateway""#),
            );
        }
        if let Some(retry_after) = self.retry_after() {
            // Whole seconds, rounded up: never invite a retry that is still too early.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// Tokens and their errors must not be cached (§5.1).
fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

async fn token(
    State(state): State<AppState>,
    PeerIp(source): PeerIp,
    Connection(connection): Connection,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!(
        "issue token",
        otel.name = "oauth issue token",
        oauth.outcome = tracing::field::Empty,
    );
    let result = issue(&state, source, &headers, body)
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok(_) => {
            if let Some(connection) = connection {
                connection.mark_authenticated();
            }
            "issued"
        }
        Err(error) => error.code(),
    };
    span.record("oauth.outcome", outcome);
    state.metrics().token_request(outcome);
    match result {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn issue(
    state: &AppState,
    source: IpAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TokenRequestError> {
    let credentials = parse_request(headers, &body?)?;
    let client = Arc::clone(state.auth())
        .authenticate_client(source, credentials)
        .instrument(tracing::info_span!(
            "authenticate client",
            otel.name = "oauth authenticate client"
        ))
        .await?;
    let issued = state
        .auth()
        .tokens()
        .issue(&client)
        .map_err(TokenRequestError::Issue)?;
    tracing::info!(client_id = %client, token_id = %issued.token_id, expires_in = issued.expires_in, "access token issued");
    let mut response = Json(TokenResponse {
        access_token: issued.access_token.expose(),
        token_type: "Bearer",
        expires_in: issued.expires_in,
    })
    .into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// The client credentials of a token request (headers and the whole body), checked for
/// everything but the secret itself: the form content type, the parameters, the grant.
fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<ClientCredentials, TokenRequestError> {
    require_form(headers)?;
    let params = Params::parse(body)?;
    match params.grant_type.as_deref() {
        None => {
            return Err(TokenRequestError::MissingParameter { name: "grant_type" });
        }
        Some("client_credentials") => {}
        Some(_) => return Err(TokenRequestError::UnsupportedGrantType),
    }
    client_credentials(headers, params)
}

/// [`parse_request`] for the fuzz targets: the credentials, or the status and `error` code of
/// the refusal.
#[doc(hidden)]
pub fn parse_token_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ClientCredentials, (StatusCode, &'static str)> {
    parse_request(headers, body).map_err(|error| (error.http_status(), error.code()))
}

/// `application/x-www-form-urlencoded`, with any parameters (§4.4.2).
fn require_form(headers: &HeaderMap) -> Result<(), TokenRequestError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if is_form {
        Ok(())
    } else {
        Err(TokenRequestError::NotAForm)
    }
}

/// The body parameters this endpoint reads.
#[derive(Debug, Default)]
struct Params {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
}

impl Params {
    /// §3.1: parameters without a value count as omitted, none may appear twice, and unknown
    /// ones (`scope` among them: this endpoint grants one fixed access) are ignored. Names and
    /// values must decode to UTF-8 (Appendix B): a lossy decoding would read different bytes as
    /// the same credentials.
    fn parse(body: &[u8]) -> Result<Self, TokenRequestError> {
        fn set<T>(
            slot: &mut Option<T>,
            name: &'static str,
            value: T,
        ) -> Result<(), TokenRequestError> {
            if slot.replace(value).is_some() {
                return Err(TokenRequestError::RepeatedParameter { name });
            }
            Ok(())
        }
        let mut params = Self::default();
        let body = std::str::from_utf8(body).map_err(|_| TokenRequestError::FormNotUtf8)?;
        for pair in body.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(name), Some(value)) = (form_decode(name), form_decode(value)) else {
                return Err(TokenRequestError::ParameterNotUtf8);
            };
            let value = zeroize::Zeroizing::new(value);
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                "grant_type" => set(&mut params.grant_type, "grant_type", value.to_string())?,
                "client_id" => set(&mut params.client_id, "client_id", value.to_string())?,
                "client_secret" => set(
                    &mut params.client_secret,
                    "client_secret",
                    Secret::new(value.as_str()),
                )?,
                _ => {}
            }
        }
        Ok(params)
    }
}

/// The credentials presented: HTTP Basic or the body, not both (§2.3).
fn client_credentials(
    headers: &HeaderMap,
    params: Params,
) -> Result<ClientCredentials, TokenRequestError> {
    let basic = basic_credentials(headers)?;
    match (basic, params.client_id, params.client_secret) {
        (Some(_), _, Some(_)) => Err(TokenRequestError::TwoAuthentications),
        (Some(basic), Some(id), None) if basic.id != id => Err(TokenRequestError::ClientIdMismatch),
        (Some(basic), _, None) => Ok(basic),
        (None, Some(id), secret) => Ok(ClientCredentials {
            id,
            secret: secret.unwrap_or_default(),
        }),
        (None, None, Some(_)) => Err(TokenRequestError::MissingParameter { name: "client_id" }),
        (None, None, None) => Err(TokenRequestError::NoClientAuthentication),
    }
}

/// Base64 with or without padding: some clients leave it out.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The credentials of an `Authorization: Basic` header, if there is one.
///
/// §2.3.1 has the client form-urlencode its id and secret before base64, so they are decoded
/// that way, and only that way: one reading per request, so one secret check. (A client that
/// skips the encoding step still works when its id and secret have no `%` or `+`, which is
/// why the gateway warns at start-up about configured secrets that do.)
fn basic_credentials(headers: &HeaderMap) -> Result<Option<ClientCredentials>, TokenRequestError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => return Err(TokenRequestError::RepeatedAuthorization),
        (Some(value), None) => value,
    };
    let malformed = || TokenRequestError::MalformedBasic;
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(TokenRequestError::NotBasic);
    }
    let decoded = BASE64
        .decode(encoded.trim())
        .map_err(|_| malformed())
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| malformed()))
        .map(Secret::new)?;
    let (id, secret) = decoded.expose().split_once(':').ok_or_else(malformed)?;
    let id = form_decode(id).ok_or_else(malformed)?;
    let secret = form_decode(secret).map(Secret::new).ok_or_else(malformed)?;
    Ok(Some(ClientCredentials { id, secret }))
}

/// `application/x-www-form-urlencoded` decoding of one value; `None` if it is not UTF-8 then.
fn form_decode(text: &str) -> Option<String> {
    let spaced = zeroize::Zeroizing::new(text.replace('+', " "));
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn pair(credentials: &ClientCredentials) -> (&str, &str) {
        (credentials.id.as_str(), credentials.secret.expose())
    }

    #[test]
    fn basic_credentials_are_form_decoded_once() {
        let plain = basic_credentials(&basic("incode:s3cret")).unwrap().unwrap();
        assert_eq!(pair(&plain), ("incode", "s3cret"));

        let encoded = basic_credentials(&basic("my+client:p%40ss%3Aw+rd"))
            .unwrap()
            .unwrap();
        assert_eq!(pair(&encoded), ("my client", "p@ss:w rd"));

        // Only the first colon separates: an unencoded secret may contain more.
        let colon = basic_credentials(&basic("a:b:c")).unwrap().unwrap();
        assert_eq!(pair(&colon), ("a", "b:c"));
        // Percent signs that encode nothing stay as they are.
        let literal = basic_credentials(&basic("a:100%")).unwrap().unwrap();
        assert_eq!(pair(&literal), ("a", "100%"));
    }

    #[test]
    fn malformed_basic_credentials_are_invalid_requests() {
        // Not base64; no colon; not UTF-8; a percent-encoded byte that is not UTF-8 ("a:%ff").
        for value in [
            "Basic !!!",
            "Basic bm9jb2xvbg==",
            "Basic //79",
            "Basic YTolZmY=",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            let error = basic_credentials(&headers).unwrap_err();
            assert!(
                matches!(error, TokenRequestError::MalformedBasic),
                "{value}"
            );
            assert_eq!(error.code(), "invalid_request");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(
            basic_credentials(&headers).unwrap_err().code(),
            "invalid_client"
        );
    }

    async fn rendered(error: TokenRequestError) -> (StatusCode, HeaderMap, serde_json::Value) {
        use http_body_util::BodyExt;
        let response = error.into_response();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    /// The answers no request from outside can provoke on purpose.
    #[tokio::test]
    async fn our_own_limits_and_failures_are_answered_without_details() {
        for (error, status, code, description, retry_after) in [
            (
                TokenRequestError::Authentication(ClientAuthError::Busy),
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the gateway is busy checking other credentials; retry shortly",
                Some("1"),
            ),
            (
                TokenRequestError::Issue(IssueError::Clock),
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the request failed; see the gateway's logs",
                None,
            ),
        ] {
            let (answered, headers, body) = rendered(error).await;
            let expected = serde_json::json!({ "error": code, "error_description": description });
            assert_eq!((answered, body), (status, expected));
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            let retry = headers.get(header::RETRY_AFTER);
            assert_eq!(retry.map(|value| value.to_str().unwrap()), retry_after);
        }
    }

    #[test]
    fn parameters_follow_section_3_1() {
        let params = Params::parse(b"grant_type=client_credentials&scope=&client_id=&x=1").unwrap();
        assert_eq!(params.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(params.client_id, None);
        let error = Params::parse(b"grant_type=a&grant_type=b").unwrap_err();
        assert_eq!(error.code(), "invalid_request");
        assert!(error.public_message().contains("grant_type"));
        let params = Params::parse(b"client_id=my+client%21&&client_secret=a%2Bb%3D").unwrap();
        assert_eq!(params.client_id.as_deref(), Some("my client!"));
        assert_eq!(params.client_secret.unwrap().expose(), "a+b=");
        // Found by fuzzing: invalid UTF-8, raw or percent-encoded, used to be replaced by
        // U+FFFD, so that different secrets read the same.
        for body in [
            &b"client_id=a&client_secret=\xff"[..],
            b"client_secret=%ff",
            b"%ff=x",
        ] {
            let error = Params::parse(body).unwrap_err();
            assert_eq!(error.code(), "invalid_request", "{body:?}");
        }
    }
}
