//! The OAuth 2.0 token endpoint, `POST /oauth/token` (RFC 6749): the client credentials grant
//! (§4.4), with the client authenticated by HTTP Basic (§2.3.1) as Incode does, or by
//! `client_id` and `client_secret` in the body. Successes are §5.1, errors have §5.2's body shape
//! `{"error":"…","error_description":"…"}` rather than the webhooks' one, with §5.2's codes plus
//! two it does not define (see `ErrorCode`).

use std::{borrow::Cow, net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        State,
        rejection::{BytesRejection, FailedToBufferBody},
    },
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

use super::{AppState, PeerIp, auth::Connection};
use crate::{
    auth::{ClientAuthError, ClientCredentials, Secret},
    error::error_chain,
};

/// The realm of the `WWW-Authenticate` challenges.
pub(super) const REALM: &str = "incode-gateway";

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

/// The `error` codes of §5.2, plus three it does not define: `slow_down` (registered by RFC 8628,
/// §3.5, for "wait before trying again") for throttled clients, with 429, and
/// `temporarily_unavailable` (503) and `server_error` (500), from the authorization endpoint's
/// list (§4.1.2.1), for our own limits and failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    UnsupportedGrantType,
    SlowDown,
    TemporarilyUnavailable,
    ServerError,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::SlowDown => "slow_down",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::UnsupportedGrantType => StatusCode::BAD_REQUEST,
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::SlowDown => StatusCode::TOO_MANY_REQUESTS,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer of the token endpoint.
#[derive(Debug)]
struct OAuthError {
    code: ErrorCode,
    description: Cow<'static, str>,
    retry_after: Option<Duration>,
}

impl OAuthError {
    fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.as_str(),
            error_description: &self.description,
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        no_store(headers);
        if self.code == ErrorCode::InvalidClient {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="incode-gateway""#),
            );
        }
        if let Some(retry_after) = self.retry_after {
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
        Err(error) => error.code.as_str(),
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
) -> Result<Response, OAuthError> {
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            OAuthError::invalid_request("the request body is too large")
        }
        _ => OAuthError::invalid_request("the request body could not be read"),
    })?;
    let credentials = parse_request(headers, &body)?;

    let client = match Arc::clone(state.auth())
        .authenticate_client(source, credentials)
        .instrument(tracing::info_span!(
            "authenticate client",
            otel.name = "oauth authenticate client"
        ))
        .await
    {
        Ok(client) => client,
        Err(ClientAuthError::InvalidClient(reason)) => {
            // The reason is for the operator; the caller learns only that it failed.
            tracing::info!(%source, %reason, "client authentication failed");
            return Err(OAuthError::new(
                ErrorCode::InvalidClient,
                "client authentication failed",
            ));
        }
        Err(ClientAuthError::Busy) => {
            tracing::warn!(%source, "client authentication refused: too many secret checks running");
            return Err(OAuthError {
                retry_after: Some(Duration::from_secs(1)),
                ..OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the gateway is busy checking other credentials; retry shortly",
                )
            });
        }
        Err(ClientAuthError::Throttled(throttled)) => {
            tracing::warn!(%source, retry_after = ?throttled.retry_after, "client authentication throttled");
            return Err(OAuthError {
                retry_after: Some(throttled.retry_after),
                ..OAuthError::new(
                    ErrorCode::SlowDown,
                    "too many failed client authentications from this address; retry later",
                )
            });
        }
        Err(error @ ClientAuthError::Internal(_)) => {
            tracing::error!(error = %error_chain(&error), "client authentication failed to run");
            return Err(OAuthError::new(
                ErrorCode::ServerError,
                "the request failed; see the gateway's logs",
            ));
        }
    };

    let issued = state.auth().tokens().issue(&client).map_err(|error| {
        tracing::error!(error = %error_chain(&error), "could not issue an access token");
        OAuthError::new(
            ErrorCode::ServerError,
            "the request failed; see the gateway's logs",
        )
    })?;
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
fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<ClientCredentials, OAuthError> {
    require_form(headers)?;
    let params = Params::parse(body)?;
    match params.grant_type.as_deref() {
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "only the client_credentials grant is supported",
            ));
        }
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
    parse_request(headers, body).map_err(|error| (error.code.status(), error.code.as_str()))
}

/// `application/x-www-form-urlencoded`, with any parameters (§4.4.2).
fn require_form(headers: &HeaderMap) -> Result<(), OAuthError> {
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
        Err(OAuthError::invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ))
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
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        fn set<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), OAuthError> {
            if slot.replace(value).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "the {name} parameter is repeated"
                )));
            }
            Ok(())
        }
        let mut params = Self::default();
        let body = std::str::from_utf8(body)
            .map_err(|_| OAuthError::invalid_request("the form body is not UTF-8"))?;
        for pair in body.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(name), Some(value)) = (form_decode(name), form_decode(value)) else {
                return Err(OAuthError::invalid_request(
                    "a form parameter does not decode to UTF-8",
                ));
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
) -> Result<ClientCredentials, OAuthError> {
    let basic = basic_credentials(headers)?;
    match (basic, params.client_id, params.client_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::invalid_request(
            "the client authenticated twice: with HTTP Basic and with client_secret in the body",
        )),
        (Some(basic), Some(id), None) if basic.id != id => Err(OAuthError::invalid_request(
            "client_id in the body differs from the HTTP Basic one",
        )),
        (Some(basic), _, None) => Ok(basic),
        (None, Some(id), secret) => Ok(ClientCredentials {
            id,
            secret: secret.unwrap_or_default(),
        }),
        (None, None, Some(_)) => Err(OAuthError::invalid_request("client_id is missing")),
        (None, None, None) => Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client authentication is required (HTTP Basic)",
        )),
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
fn basic_credentials(headers: &HeaderMap) -> Result<Option<ClientCredentials>, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "the Authorization header is repeated",
            ));
        }
        (Some(value), None) => value,
    };
    let malformed = || OAuthError::invalid_request("malformed HTTP Basic credentials");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "only HTTP Basic client authentication is supported",
        ));
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
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(
            basic_credentials(&headers).unwrap_err().code,
            ErrorCode::InvalidClient
        );
    }

    #[test]
    fn parameters_follow_section_3_1() {
        let params = Params::parse(b"grant_type=client_credentials&scope=&client_id=&x=1").unwrap();
        assert_eq!(params.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(params.client_id, None);
        let error = Params::parse(b"grant_type=a&grant_type=b").unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.description.contains("grant_type"));
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
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{body:?}");
        }
    }
}
