use super::*;

/// Incode's side of the calls.
pub(super) struct Incode {
    pub(super) http: Http,
    pub(super) tokens: Option<TokenSource>,
    pub(super) onboarding_status_url: Uri,
    pub(super) watchlist_url: Uri,
}

/// What became of one notification.
pub(super) struct Delivery {
    pub(super) attempts: Vec<Attempt>,
    /// Set when no token could be obtained, so nothing was sent.
    pub(super) token_error: Option<String>,
}

impl Delivery {
    pub(super) fn acknowledged(&self) -> bool {
        self.attempts
            .last()
            .is_some_and(|attempt| attempt.answer.acknowledged())
    }
}

/// One HTTP call.
pub(super) struct Attempt {
    pub(super) latency: Duration,
    pub(super) answer: Answer,
}

/// How a call was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// A status, and whether the content type was JSON.
    Status { status: StatusCode, json: bool },
    /// No answer within `--timeout`.
    TimedOut,
    /// No answer: the connection failed.
    Failed,
}

impl Answer {
    /// Incode's rule: delivered when answered `200` with a JSON body, or `204`.
    pub(super) fn acknowledged(&self) -> bool {
        match self {
            Self::Status { status, json } => {
                (*status == StatusCode::OK && *json) || *status == StatusCode::NO_CONTENT
            }
            Self::TimedOut | Self::Failed => false,
        }
    }

    pub(super) fn label(&self) -> String {
        match self {
            Self::Status { status, json } if *status == StatusCode::OK && !json => {
                "200 not JSON".to_owned()
            }
            Self::Status { status, .. } => status.as_u16().to_string(),
            Self::TimedOut => "timeout".to_owned(),
            Self::Failed => "connection failed".to_owned(),
        }
    }
}

impl Incode {
    /// Sends a notification, and sends it once more, identical, if the first call failed.
    pub(super) async fn deliver(&self, notification: Notification) -> Delivery {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(tokens) = &self.tokens {
            match tokens.bearer().await {
                Ok(bearer) => {
                    headers.insert(header::AUTHORIZATION, bearer);
                }
                Err(error) => {
                    return Delivery {
                        attempts: Vec::new(),
                        token_error: Some(incode_gateway::error::error_chain(&error)),
                    };
                }
            }
        }
        let url = match notification.kind {
            NotificationKind::OnboardingStatus => &self.onboarding_status_url,
            NotificationKind::WatchlistUpdated => &self.watchlist_url,
        };
        let first = self.call(url, &headers, &notification.body).await;
        let retry = !first.answer.acknowledged();
        let mut attempts = vec![first];
        if retry {
            attempts.push(self.call(url, &headers, &notification.body).await);
        }
        Delivery {
            attempts,
            token_error: None,
        }
    }

    pub(super) async fn call(&self, url: &Uri, headers: &HeaderMap, body: &Bytes) -> Attempt {
        let started = Instant::now();
        let answer = match self.http.post(url, headers, body.clone()).await {
            Ok(answered) => Answer::Status {
                status: answered.status,
                json: is_json(&answered.headers),
            },
            Err(CallError::TimedOut { .. }) => Answer::TimedOut,
            Err(_) => Answer::Failed,
        };
        Attempt {
            latency: started.elapsed(),
            answer,
        }
    }
}

/// Whether the answer's content type is JSON (`application/json`, parameters allowed).
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}
