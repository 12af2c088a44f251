use super::*;

/// Obtains and caches the bearer token, as Incode does for organisations using OAuth 2.0.
pub(super) struct TokenSource {
    pub(super) http: Http,
    pub(super) url: Uri,
    /// `Basic base64(urlencode(id):urlencode(secret))`.
    pub(super) authorization: HeaderValue,
    pub(super) current: Mutex<Option<Token>>,
    pub(super) obtained: AtomicU64,
}

pub(super) struct Token {
    /// `Bearer <access_token>`, marked sensitive.
    pub(super) authorization: HeaderValue,
    /// When to obtain the next one: shortly before this one expires.
    pub(super) refresh_at: Instant,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    pub(super) access_token: String,
    pub(super) expires_in: f64,
}

impl TokenSource {
    pub(super) fn new(
        http: Http,
        url: Uri,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<Self, TokenFetchError> {
        Ok(Self {
            http,
            url,
            authorization: basic_authorization(client_id, client_secret.expose())?,
            current: Mutex::new(None),
            obtained: AtomicU64::new(0),
        })
    }

    /// Obtains the first token; returns how long it is valid.
    pub(super) async fn obtain_first(&self) -> Result<Duration, TokenFetchError> {
        let (token, expires_in) = self.obtain().await?;
        *self.current.lock().await = Some(token);
        Ok(expires_in)
    }

    /// The `Authorization` header for the next notification: the current token, or a new one
    /// when it is about to expire. Concurrent callers wait for one request.
    pub(super) async fn bearer(&self) -> Result<HeaderValue, TokenFetchError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.authorization.clone());
        }
        let (token, _) = self.obtain().await?;
        let authorization = token.authorization.clone();
        *current = Some(token);
        Ok(authorization)
    }

    pub(super) async fn obtain(&self) -> Result<(Token, Duration), TokenFetchError> {
        let requested = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let body = Bytes::from_static(b"grant_type=client_credentials");
        let answered = self
            .http
            .post(&self.url, &headers, body)
            .await
            .map_err(TokenFetchError::Request)?;
        if !answered.status.is_success() {
            return Err(TokenFetchError::Refused {
                status: answered.status,
                body: excerpt(&answered.body),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&answered.body).map_err(TokenFetchError::InvalidAnswer)?;
        let expires_in = Duration::try_from_secs_f64(answer.expires_in).map_err(|_| {
            TokenFetchError::InvalidExpiry {
                expires_in: answer.expires_in,
            }
        })?;
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", answer.access_token))
            .map_err(|_| TokenFetchError::InvalidCredentials)?;
        authorization.set_sensitive(true);
        self.obtained.fetch_add(1, Ordering::Relaxed);
        // Renew a little early (a tenth of the lifetime, at most 30 s) so that no notification
        // goes out with a token that expires on the way.
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        Ok((
            Token {
                authorization,
                refresh_at: requested + (expires_in - margin),
            },
            expires_in,
        ))
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))`, marked sensitive (RFC 6749, section 2.3.1).
pub(super) fn basic_authorization(
    client_id: &str,
    client_secret: &str,
) -> Result<HeaderValue, TokenFetchError> {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(client_secret));
    let mut value = HeaderValue::try_from(format!("Basic {}", BASE64.encode(credentials)))
        .map_err(|_| TokenFetchError::InvalidCredentials)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The beginning of an answer body, for error messages.
pub(super) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
