//! Who may call the public listener: the OAuth clients Incode authenticates as, the access tokens
//! they get, the guard every webhook call passes, and the throttle on failed client
//! authentication.
//!
//! [`Auth`] is built once at start-up from [`AuthSettings`], which the configuration resolves;
//! only its webhook headers change afterwards, on a reload. The HTTP layer asks it to
//! authenticate a client at the token endpoint ([`Auth::authenticate_client`]) and to check a
//! webhook call ([`Auth::check_webhook`]), which yields the [`Authenticated`] proof that the
//! webhook handlers require.

pub mod bearer;
mod clients;
mod secret;
mod settings;
mod throttle;
mod token;
mod webhook;

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use axum::http::HeaderMap;

pub use clients::{
    ARGON2_BOUNDS, Argon2Bounds, ClientConfigError, ClientCredentials, ClientId, ClientRegistry,
    ClientSettings, CredentialsRefused, hash_secret,
};
pub use secret::Secret;
pub use settings::{
    AuthSettings, AuthSetupError, DEFAULT_TOKEN_TTL, KeyPolicy, MAX_TOKEN_TTL, SIGNING_KEY_FILE,
    UnsavedKey, parse_key, read_key, webhook_headers,
};
pub use throttle::{Charge, FailureThrottle, ThrottleSettings, Throttled};
pub use token::{
    ALGORITHM, AUDIENCE, Claims, ISSUER, IssueError, IssuedToken, KeyError, LEEWAY, MIN_KEY_BYTES,
    TokenError, TokenKey, TokenSettings, Tokens,
};
pub use webhook::{
    Authenticated, WebhookAuthError, WebhookHeader, WebhookHeaderError, check_headers,
};

/// Why client authentication at the token endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// The source failed too often lately.
    #[error("too many failed client authentications from this address; retry later")]
    Throttled(Throttled),
    /// Too many secret checks are running; the attempt was not checked (nor charged).
    #[error("the gateway is busy checking other credentials; retry shortly")]
    Busy,
    /// Unknown client, or a secret that is not one of its secrets (the reason is for the log).
    #[error("client authentication failed")]
    InvalidClient(CredentialsRefused),
    /// The verification task failed.
    #[error("client authentication could not be completed")]
    Internal(#[source] tokio::task::JoinError),
}

/// The authentication state of the public listener.
#[derive(Debug)]
pub struct Auth {
    clients: ClientRegistry,
    tokens: Tokens,
    /// Replaced as a whole when the configuration is reloaded: a call is checked against one
    /// set of headers, never half of two.
    webhook_headers: RwLock<Arc<[WebhookHeader]>>,
    allow_unauthenticated_webhooks: bool,
    throttle: FailureThrottle,
    /// Permits for argon2 checks running at once; an attempt finding none is refused at once.
    secret_checks: Arc<tokio::sync::Semaphore>,
}

impl Auth {
    /// Authentication as `settings` say. Refuses settings that leave the webhooks open unless
    /// that is explicitly allowed, and then warns.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthSetupError> {
        let clients = ClientRegistry::new(settings.clients)?;
        check_webhook_headers(
            &clients,
            &settings.webhook_headers,
            settings.allow_unauthenticated_webhooks,
        )?;
        tracing::info!(
            oauth_clients = clients.len(),
            webhook_headers = settings.webhook_headers.len(),
            token_ttl = ?settings.tokens.ttl,
            signing_key_id = settings.tokens.signing_key.id(),
            verify_only_keys = settings.tokens.verify_only_keys.len(),
            "webhook authentication configured"
        );
        Ok(Self {
            clients,
            tokens: Tokens::new(settings.tokens),
            webhook_headers: RwLock::new(settings.webhook_headers.into()),
            allow_unauthenticated_webhooks: settings.allow_unauthenticated_webhooks,
            throttle: FailureThrottle::new(settings.throttle),
            secret_checks: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_secret_checks,
            )),
        })
    }

    /// Authentication as `settings` say, with every check made and nothing written: the signing
    /// key generated for the data directory with them, if one was, is stored by
    /// [`PreparedAuth::finish`].
    pub fn prepare(
        settings: AuthSettings,
        unsaved_key: Option<UnsavedKey>,
    ) -> Result<PreparedAuth, AuthSetupError> {
        Ok(PreparedAuth {
            auth: Self::new(settings)?,
            unsaved_key,
        })
    }

    /// Issues and verifies access tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Whether webhook calls need a bearer token (OAuth clients are configured).
    pub fn requires_bearer_token(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The client `credentials` authenticate as. `source` is the client's address, whose failures
    /// are throttled.
    pub async fn authenticate_client(
        self: Arc<Self>,
        source: IpAddr,
        credentials: ClientCredentials,
    ) -> Result<ClientId, ClientAuthError> {
        let charge = self
            .throttle
            .try_acquire(source, Instant::now())
            .map_err(ClientAuthError::Throttled)?;
        // Fail fast rather than queue: a queue of argon2 checks is a queue of seconds.
        let Ok(permit) = self.secret_checks.clone().try_acquire_owned() else {
            self.throttle.refund(charge, Instant::now());
            return Err(ClientAuthError::Busy);
        };
        let auth = self.clone();
        // Argon2 takes tens of milliseconds of CPU by design: keep it off the async workers.
        let verified = tokio::task::spawn_blocking(move || {
            let verified = auth.clients.verify(&credentials);
            drop(permit);
            verified
        })
        .await
        .map_err(ClientAuthError::Internal)?;
        match verified {
            Ok(client) => {
                self.throttle.refund(charge, Instant::now());
                Ok(client)
            }
            Err(reason) => Err(ClientAuthError::InvalidClient(reason)),
        }
    }

    /// Checks a webhook call's headers: the bearer token when OAuth clients are configured (it
    /// must have been issued to one of them), and every configured webhook header.
    pub fn check_webhook(&self, headers: &HeaderMap) -> Result<Authenticated, WebhookAuthError> {
        let client = if self.clients.is_empty() {
            None
        } else {
            let token = webhook::bearer_token(headers)?;
            let claims = self.tokens.verify(token)?;
            let client = self
                .clients
                .get(&claims.sub)
                .ok_or(TokenError::UnknownClient)?;
            Some(client.clone())
        };
        webhook::check_headers(&self.current_webhook_headers(), headers)?;
        Ok(Authenticated::new(client))
    }

    /// Whether `headers` could replace the webhook headers: refused, as at start-up, when they
    /// would leave the webhooks open without that being allowed, or take the bearer token's
    /// place. Changes nothing.
    pub fn check_webhook_headers(&self, headers: &[WebhookHeader]) -> Result<(), AuthSetupError> {
        check_webhook_headers(&self.clients, headers, self.allow_unauthenticated_webhooks)
    }

    /// Requires `headers` (checked with [`Auth::check_webhook_headers`]) of every webhook call
    /// from now on.
    pub fn replace_webhook_headers(&self, headers: Vec<WebhookHeader>) {
        *self
            .webhook_headers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = headers.into();
    }

    fn current_webhook_headers(&self) -> Arc<[WebhookHeader]> {
        self.webhook_headers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Refuses webhook headers that leave the webhooks open without that being allowed (and warns
/// when it is), or that would take the bearer token's place.
fn check_webhook_headers(
    clients: &ClientRegistry,
    headers: &[WebhookHeader],
    allow_unauthenticated: bool,
) -> Result<(), AuthSetupError> {
    if clients.is_empty() && headers.is_empty() {
        if !allow_unauthenticated {
            return Err(AuthSetupError::NoWebhookAuth);
        }
        tracing::warn!(
            "WEBHOOKS ARE NOT AUTHENTICATED: anyone who can reach the public listener can inject \
             events. Configure an OAuth client or a webhook header before exposing it"
        );
    }
    if !clients.is_empty()
        && let Some(header) = headers
            .iter()
            .find(|header| header.name() == axum::http::header::AUTHORIZATION)
    {
        return Err(AuthSetupError::HeaderConflictsWithBearer {
            name: header.name().clone(),
        });
    }
    Ok(())
}

/// [`Auth`] checked and built by [`Auth::prepare`], before anything was written.
#[derive(Debug)]
#[must_use = "`finish` stores the generated signing key"]
pub struct PreparedAuth {
    auth: Auth,
    unsaved_key: Option<UnsavedKey>,
}

impl PreparedAuth {
    /// Stores the signing key generated for the data directory, if one was, and hands over the
    /// authentication state. Call it once start-up may write.
    pub fn finish(self) -> Result<Auth, AuthSetupError> {
        if let Some(key) = self.unsaved_key {
            key.store()?;
        }
        Ok(self.auth)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;

    fn auth(burst: u32) -> Arc<Auth> {
        Arc::new(
            Auth::new(AuthSettings {
                clients: vec![ClientSettings {
                    id: "incode".into(),
                    secrets: vec![Secret::new("s3cret")],
                }],
                tokens: TokenSettings {
                    ttl: Duration::from_secs(60),
                    signing_key: TokenKey::generate().unwrap(),
                    verify_only_keys: Vec::new(),
                },
                webhook_headers: Vec::new(),
                allow_unauthenticated_webhooks: false,
                throttle: ThrottleSettings {
                    burst,
                    ..ThrottleSettings::default()
                },
                max_concurrent_secret_checks: 2,
            })
            .unwrap(),
        )
    }

    fn credentials(secret: &str) -> ClientCredentials {
        ClientCredentials {
            id: "incode".into(),
            secret: Secret::new(secret),
        }
    }

    const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[tokio::test]
    async fn secret_checks_fail_fast_when_all_are_taken_and_are_not_charged() {
        let auth = auth(3);
        let held = auth
            .secret_checks
            .clone()
            .acquire_many_owned(2)
            .await
            .unwrap();
        for _ in 0..10 {
            let refused = auth
                .clone()
                .authenticate_client(SOURCE, credentials("x"))
                .await;
            assert!(matches!(refused, Err(ClientAuthError::Busy)), "{refused:?}");
        }
        drop(held);
        // Ten refusals while busy charged nothing: three failures are still allowed.
        for _ in 0..3 {
            let refused = auth
                .clone()
                .authenticate_client(SOURCE, credentials("x"))
                .await;
            assert!(
                matches!(
                    refused,
                    Err(ClientAuthError::InvalidClient(
                        CredentialsRefused::WrongSecret
                    ))
                ),
                "{refused:?}"
            );
        }
        let throttled = auth
            .clone()
            .authenticate_client(SOURCE, credentials("s3cret"))
            .await;
        assert!(
            matches!(throttled, Err(ClientAuthError::Throttled(_))),
            "{throttled:?}"
        );
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert!(
            auth.clone()
                .authenticate_client(other, credentials("s3cret"))
                .await
                .is_ok()
        );
    }
}
