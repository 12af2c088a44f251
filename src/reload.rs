//! What a reload request (SIGHUP, in the binary) changes while the gateway runs: from the
//! config file, the internal listener's `[[subscribers]]` (names, tokens, consumers) and the
//! webhook headers, and the internal listener's TLS files. Everything else is fixed at start-up.
//!
//! The configuration is read again as at start (the same command line and environment, the
//! file as it is now), checked as at start, and its subscribers and webhook headers are put in
//! force together, or neither: a file that is not valid, or that the running gateway would
//! refuse at start (a subscriber nothing can authenticate, webhooks left open), changes nothing
//! and is reported once. Calls are checked against the settings in force when they arrive; a
//! subscription stream already open keeps the identity it was opened with.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Auth, AuthSetupError, WebhookHeaderError},
    config::{LoadError, ServeArgs},
    error::error_chain,
    grpc::{
        Security, SetupError, SubscriberReloader,
        tls::{self, ReloadingTls},
    },
};

/// The config file's keys that a reload applies: the others only take effect at the next start.
const RELOADED_KEYS: &[&str] = &["subscribers", "webhooks.headers"];

/// Why the configuration could not be reloaded. The previous settings stay in force. Never
/// shows a token, a header value or another secret.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration (the file, or a value in it) is not valid.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The subscribers are not usable, or would leave the internal listener open.
    #[error(transparent)]
    Subscribers(#[from] SetupError),
    /// A webhook header is not usable.
    #[error(transparent)]
    WebhookHeader(#[from] WebhookHeaderError),
    /// The webhook headers would leave the webhooks open, or take the bearer token's place.
    #[error(transparent)]
    WebhookAuth(#[from] AuthSetupError),
    /// The reload task failed.
    #[error("the reload task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// What a reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// How many subscribers are configured now.
    pub subscribers: usize,
    /// How many webhook headers every call must now carry.
    pub webhook_headers: usize,
    /// Keys of the config file that differ from what the gateway started with and that only a
    /// restart applies.
    pub restart_needed: Vec<&'static str>,
}

/// Reloads the running gateway's reloadable settings.
pub struct Reloader {
    /// The configuration the gateway started with.
    config: ServeArgs,
    auth: Arc<Auth>,
    subscribers: SubscriberReloader,
    tls: Option<Arc<ReloadingTls>>,
}

impl Reloader {
    /// A reloader for the gateway started with `config`, whose public listener `auth` guards and
    /// whose internal listener `security` describes.
    pub fn new(config: ServeArgs, auth: Arc<Auth>, security: &Security) -> Self {
        Self {
            config,
            auth,
            subscribers: security.subscriber_reloader(),
            tls: security.tls(),
        }
    }

    /// Reads the configuration again and puts its subscribers and webhook headers in force, both
    /// or neither. Blocks on reading the file.
    pub fn reload_config(&self) -> Result<Reloaded, ReloadError> {
        let fresh = self.config.reread()?;
        let sections = fresh.file_sections().map_err(LoadError::from)?;
        let access = self.subscribers.prepare(&sections.subscriber_settings())?;
        let headers = crate::auth::webhook_headers(&fresh.auth.webhook_headers)?;
        self.auth.check_webhook_headers(&headers)?;

        let started_with = self
            .config
            .file
            .as_ref()
            .map(|file| file.settings.clone())
            .unwrap_or_default();
        let reloaded = Reloaded {
            subscribers: sections.subscribers.len(),
            webhook_headers: headers.len(),
            restart_needed: started_with.changed(&sections.settings, RELOADED_KEYS),
        };
        self.subscribers.install(access);
        self.auth.replace_webhook_headers(headers);
        Ok(reloaded)
    }

    /// Reloads the configuration and the TLS files (whatever they hold), and says what
    /// happened.
    pub async fn reload(self: &Arc<Self>) {
        let reloader = self.clone();
        let result = tokio::task::spawn_blocking(move || reloader.reload_config())
            .await
            .unwrap_or_else(|error| Err(ReloadError::Task(error)));
        match result {
            Ok(reloaded) => {
                tracing::info!(
                    subscribers = reloaded.subscribers,
                    webhook_headers = reloaded.webhook_headers,
                    "configuration reloaded"
                );
                if !reloaded.restart_needed.is_empty() {
                    tracing::warn!(
                        keys = ?reloaded.restart_needed,
                        "these settings changed in the config file and take effect only after a \
                         restart (a reload applies [[subscribers]] and webhooks.headers)"
                    );
                }
            }
            Err(error) => tracing::error!(
                error = %error_chain(&error),
                "cannot reload the configuration; the previous settings stay in force"
            ),
        }
        if let Some(tls) = &self.tls {
            tls::reload_now(tls, true).await;
        }
    }
}

/// Reloads on every request from `requests` until `shutdown`.
pub async fn watch(
    reloader: Arc<Reloader>,
    requests: impl Stream<Item = ()> + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut requests = std::pin::pin!(requests);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            request = requests.next() => match request {
                Some(()) => {
                    tracing::info!("reload requested: reading the config file and the TLS files again");
                    reloader.reload().await;
                }
                None => return,
            },
        }
    }
}

/// Reload requests from SIGHUP, listened for from the moment this is called: until then, a
/// SIGHUP ends the process on the spot (its default action), so call it before anything can
/// take long. Without a handler (or outside Unix) no request ever comes.
pub fn hangup_requests() -> impl Stream<Item = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|error| {
                tracing::error!(
                    %error,
                    "cannot listen for SIGHUP: a SIGHUP ends the gateway, and nothing reloads \
                     the configuration"
                );
            })
            .ok();
        futures::stream::unfold(hangup, |hangup| async move {
            let mut hangup = hangup?;
            hangup.recv().await?;
            Some(((), Some(hangup)))
        })
    }
    #[cfg(not(unix))]
    futures::stream::empty()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use axum::http::{HeaderMap, HeaderValue, header};

    use super::*;
    use crate::grpc::access::Refusal;

    const OLD_TOKEN: &str = "old-token-0123456789abcdef";
    const NEW_TOKEN: &str = "new-token-fedcba9876543210";

    fn file(tokens: &[&str], header: &str) -> String {
        let tokens: Vec<String> = tokens.iter().map(|t| format!("{t:?}")).collect();
        format!(
            "[webhooks]\nheaders = {{ \"X-Incode-Secret\" = {header:?} }}\n\n\
             [[subscribers]]\nname = \"billing\"\ntokens = [{}]\nconsumers = [\"billing\"]\n",
            tokens.join(", ")
        )
    }

    struct Setup {
        _dir: tempfile::TempDir,
        path: PathBuf,
        reloader: Reloader,
        auth: Arc<Auth>,
    }

    fn setup(text: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let config = ServeArgs::for_tests_with(&["--config", path.to_str().unwrap()]).unwrap();
        let sections = config.file_sections().unwrap();
        let (settings, unsaved_key) = config.auth_settings(&sections).unwrap();
        let auth = Arc::new(
            Auth::prepare(settings, unsaved_key)
                .unwrap()
                .finish()
                .unwrap(),
        );
        let security = Security::new(
            config.security_settings(&sections),
            "127.0.0.1:50051".parse().unwrap(),
        )
        .unwrap();
        let reloader = Reloader::new(config, auth.clone(), &security);
        Setup {
            _dir: dir,
            path,
            reloader,
            auth,
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    /// The subscriber `token` authenticates as, or the refusal.
    fn subscriber(setup: &Setup, token: &str) -> Result<String, Refusal> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        headers.insert(header::AUTHORIZATION, value);
        let access = setup.reloader.subscribers.current();
        access
            .authenticate(None, &headers)
            .map(|caller| caller.name().to_owned())
    }

    fn webhook_accepted(setup: &Setup, value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert("x-incode-secret", HeaderValue::from_str(value).unwrap());
        setup.auth.check_webhook(&headers).is_ok()
    }

    #[test]
    fn subscribers_and_webhook_headers_are_replaced_together() {
        let setup = setup(&file(&[OLD_TOKEN], "one"));
        assert_eq!(subscriber(&setup, OLD_TOKEN).unwrap(), "billing");
        assert!(webhook_accepted(&setup, "one"));

        write(&setup.path, &file(&[NEW_TOKEN], "two"));
        let reloaded = setup.reloader.reload_config().unwrap();
        assert_eq!(
            reloaded,
            Reloaded {
                subscribers: 1,
                webhook_headers: 1,
                restart_needed: Vec::new(),
            }
        );
        assert_eq!(subscriber(&setup, NEW_TOKEN).unwrap(), "billing");
        assert_eq!(subscriber(&setup, OLD_TOKEN), Err(Refusal::InvalidToken));
        assert!(webhook_accepted(&setup, "two"));
        assert!(!webhook_accepted(&setup, "one"));
    }

    #[test]
    fn a_file_the_gateway_would_refuse_changes_nothing() {
        let setup = setup(&file(&[OLD_TOKEN], "one"));
        let refused = [
            // Not TOML.
            format!("{}\n[[subscribers]\n", file(&[NEW_TOKEN], "two")),
            // A token too short to be one, next to a valid webhook header change.
            file(&[NEW_TOKEN, "short-hunter2"], "two"),
            // A subscriber nothing could authenticate (no tokens, no mutual TLS).
            file(&[], "two"),
            // No webhook authentication left, and open webhooks are not allowed.
            "[[subscribers]]\nname = \"billing\"\ntokens = [\"new-token-fedcba9876543210\"]\n"
                .to_owned(),
            // An unknown key.
            format!(
                "{}\n[storage]\nretension = \"1d\"\n",
                file(&[NEW_TOKEN], "two")
            ),
        ];
        for text in refused {
            write(&setup.path, &text);
            let error = setup.reloader.reload_config().unwrap_err();
            let message = error_chain(&error);
            assert!(!message.contains("hunter2"), "{message}");
            assert!(!message.contains(NEW_TOKEN), "{message}");
            // Both the old subscribers and the old header are still in force.
            assert_eq!(subscriber(&setup, OLD_TOKEN).unwrap(), "billing", "{text}");
            assert_eq!(subscriber(&setup, NEW_TOKEN), Err(Refusal::InvalidToken));
            assert!(webhook_accepted(&setup, "one"), "{text}");
            assert!(!webhook_accepted(&setup, "two"), "{text}");
        }
        std::fs::remove_file(&setup.path).unwrap();
        assert!(setup.reloader.reload_config().is_err());
        assert!(webhook_accepted(&setup, "one"));
    }

    #[test]
    fn settings_only_a_restart_applies_are_named() {
        let setup = setup(&file(&[OLD_TOKEN], "one"));
        write(
            &setup.path,
            &format!(
                "{}\n[storage]\nretention = \"2d\"\n[nats]\npassword = \"hunter2\"\n\
                 [[oauth.clients]]\nid = \"incode\"\nsecrets = [\"hunter2\"]\n",
                file(&[OLD_TOKEN], "two")
            ),
        );
        let reloaded = setup.reloader.reload_config().unwrap();
        assert_eq!(
            reloaded.restart_needed,
            ["nats.password", "oauth.clients", "storage.retention"]
        );
        // The reloadable part of the same file was applied.
        assert!(webhook_accepted(&setup, "two"));
    }
}
