//! [`AuthSettings`]: the authentication settings resolved from flags, environment variables and
//! the config file, in that order of precedence.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    ClientConfig, ClientConfigError, KeyError, Secret, ThrottleSettings, TokenKey, TokenSettings,
    WebhookHeader, WebhookHeaderError,
};
use crate::config::{
    AuthArgs, Config,
    file::{ConfigFile, ConfigFileError},
};

/// Token lifetime when none is configured.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Everything [`super::Auth`] is built from.
#[derive(Debug)]
pub struct AuthSettings {
    /// The OAuth clients.
    pub clients: Vec<ClientConfig>,
    /// Token lifetime and keys.
    pub tokens: TokenSettings,
    /// Headers every webhook call must carry.
    pub webhook_headers: Vec<WebhookHeader>,
    /// Whether webhooks may be accepted with no authentication at all.
    pub allow_unauthenticated_webhooks: bool,
    /// The throttle on failed client authentication.
    pub throttle: ThrottleSettings,
}

/// Why the authentication settings are not usable. Messages never include secret values.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// A client secret without a client id.
    #[error("--oauth-client-secret is set but --oauth-client-id is not")]
    SecretWithoutClientId,
    /// A client id without a client secret.
    #[error("--oauth-client-id is set but --oauth-client-secret is not")]
    ClientIdWithoutSecret,
    /// A client is not usable.
    #[error(transparent)]
    Client(#[from] ClientConfigError),
    /// The signing key is given twice at the same level.
    #[error("both {first} and {second} are set; give the token signing key once")]
    TwoSigningKeys {
        /// One setting.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A key file could not be read.
    #[error("cannot read the token key file {path}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key is not usable.
    #[error("the token key from {origin} is not usable")]
    Key {
        /// Where the key came from.
        origin: String,
        /// What is wrong with it.
        #[source]
        source: KeyError,
    },
    /// No signing key was configured and none could be generated.
    #[error("could not generate a token signing key")]
    GenerateKey(#[source] KeyError),
    /// The token lifetime is shorter than a second.
    #[error("the token lifetime (--token-ttl) must be at least one second")]
    TokenTtlTooShort,
    /// A webhook header is not usable.
    #[error(transparent)]
    WebhookHeader(#[from] WebhookHeaderError),
    /// A webhook header would take the place of the bearer token.
    #[error(
        "webhook header `{name}` cannot be required while OAuth clients are configured: the bearer token travels in it"
    )]
    HeaderConflictsWithBearer {
        /// The header.
        name: axum::http::HeaderName,
    },
    /// Nothing protects the webhooks and that was not explicitly allowed.
    #[error(
        "no webhook authentication is configured. Configure the OAuth client Incode uses \
         (--oauth-client-id and --oauth-client-secret, or INCODE_GATEWAY_OAUTH_CLIENT_ID and \
         INCODE_GATEWAY_OAUTH_CLIENT_SECRET, or [[oauth.clients]] in the --config file), or a shared \
         header (--webhook-header NAME=VALUE), or pass --allow-unauthenticated-webhooks to accept \
         webhooks from anyone"
    )]
    NoWebhookAuth,
}

impl AuthSettings {
    /// Resolves the settings: flags and environment first, then the config file, then defaults.
    pub fn from_config(config: &Config) -> Result<Self, AuthSetupError> {
        let file = match &config.config_file {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Self::resolve(&config.auth, file)
    }

    fn resolve(args: &AuthArgs, file: ConfigFile) -> Result<Self, AuthSetupError> {
        // `[[subscribers]]` belongs to the internal listener (crate::grpc).
        let ConfigFile {
            oauth, webhooks, ..
        } = file;

        // The client given by flags replaces a file client with the same id.
        let mut clients: Vec<ClientConfig> = oauth
            .clients
            .into_iter()
            .map(|entry| ClientConfig {
                id: entry.id,
                secrets: entry.secrets,
            })
            .collect();
        match (&args.oauth_client_id, &args.oauth_client_secret) {
            (Some(id), Some(secret)) => {
                clients.retain(|client| &client.id != id);
                clients.push(ClientConfig {
                    id: id.clone(),
                    secrets: vec![secret.clone()],
                });
            }
            (None, Some(_)) => return Err(AuthSetupError::SecretWithoutClientId),
            (Some(_), None) => return Err(AuthSetupError::ClientIdWithoutSecret),
            (None, None) => {}
        }

        let ttl = args
            .token_ttl
            .or(oauth.token_ttl)
            .unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl < Duration::from_secs(1) {
            return Err(AuthSetupError::TokenTtlTooShort);
        }

        let from_flags = signing_key(
            args.token_signing_key.as_ref(),
            "--token-signing-key",
            args.token_signing_key_file.as_deref(),
            "--token-signing-key-file",
        )?;
        let from_file = signing_key(
            oauth.signing_key.as_ref(),
            "oauth.signing_key",
            oauth.signing_key_file.as_deref(),
            "oauth.signing_key_file",
        )?;
        let signing_key = match from_flags.or(from_file) {
            Some(key) => key,
            None => {
                tracing::warn!(
                    "no token signing key is configured; using a random one: access tokens will not \
                     survive a restart and will not work across replicas. Set \
                     --token-signing-key-file (or INCODE_GATEWAY_TOKEN_SIGNING_KEY) to keep them"
                );
                TokenKey::generate().map_err(AuthSetupError::GenerateKey)?
            }
        };

        let mut verify_only_keys = Vec::new();
        for (index, key) in oauth.verify_keys.iter().enumerate() {
            verify_only_keys.push(parse_key(key, || format!("oauth.verify_keys[{index}]"))?);
        }
        for path in &oauth.verify_key_files {
            verify_only_keys.push(read_key(path, "oauth.verify_key_files")?);
        }
        for (index, key) in args.token_verify_keys.iter().enumerate() {
            verify_only_keys.push(parse_key(key, || {
                format!("--token-verify-key #{}", index + 1)
            })?);
        }
        for path in &args.token_verify_key_files {
            verify_only_keys.push(read_key(path, "--token-verify-key-file")?);
        }

        // Flags add headers and replace file headers of the same name.
        let mut webhook_headers = Vec::new();
        for (name, value) in &webhooks.headers {
            webhook_headers.push(WebhookHeader::new(name, value)?);
        }
        for spec in &args.webhook_headers {
            let header = WebhookHeader::parse(spec)?;
            webhook_headers.retain(|existing| existing.name() != header.name());
            webhook_headers.push(header);
        }

        Ok(Self {
            clients,
            tokens: TokenSettings {
                ttl,
                signing_key,
                verify_only_keys,
            },
            webhook_headers,
            allow_unauthenticated_webhooks: args.allow_unauthenticated_webhooks
                || webhooks.allow_unauthenticated,
            throttle: ThrottleSettings::default(),
        })
    }
}

fn signing_key(
    inline: Option<&Secret>,
    inline_name: &'static str,
    path: Option<&Path>,
    path_name: &'static str,
) -> Result<Option<TokenKey>, AuthSetupError> {
    match (inline, path) {
        (Some(_), Some(_)) => Err(AuthSetupError::TwoSigningKeys {
            first: inline_name,
            second: path_name,
        }),
        (Some(key), None) => parse_key(key, || inline_name.to_owned()).map(Some),
        (None, Some(path)) => read_key(path, path_name).map(Some),
        (None, None) => Ok(None),
    }
}

fn parse_key(key: &Secret, origin: impl FnOnce() -> String) -> Result<TokenKey, AuthSetupError> {
    TokenKey::parse(key).map_err(|source| AuthSetupError::Key {
        origin: origin(),
        source,
    })
}

fn read_key(path: &Path, setting: &str) -> Result<TokenKey, AuthSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::ReadKeyFile {
        path: path.to_owned(),
        source,
    })?;
    parse_key(&Secret::new(text), || {
        format!("{setting} {}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::webhook::check_headers,
        config::file::{ClientEntry, OAuthSection, WebhooksSection},
    };

    const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

    fn file_with_client(id: &str, secret: &str) -> ConfigFile {
        ConfigFile {
            oauth: OAuthSection {
                token_ttl: Some(Duration::from_secs(60)),
                signing_key: Some(Secret::new(KEY_A)),
                clients: vec![ClientEntry {
                    id: id.into(),
                    secrets: vec![Secret::new(secret)],
                }],
                ..OAuthSection::default()
            },
            webhooks: WebhooksSection {
                headers: [("X-A".to_owned(), Secret::new("file"))].into(),
                allow_unauthenticated: false,
            },
            subscribers: Vec::new(),
        }
    }

    #[test]
    fn flags_override_the_file() {
        let args = AuthArgs {
            oauth_client_id: Some("incode".into()),
            oauth_client_secret: Some(Secret::new("from-flags")),
            token_ttl: Some(Duration::from_secs(120)),
            token_signing_key: Some(Secret::new(KEY_B)),
            webhook_headers: vec![Secret::new("X-A=flag")],
            ..AuthArgs::default()
        };
        let settings =
            AuthSettings::resolve(&args, file_with_client("incode", "from-file")).unwrap();
        assert_eq!(settings.clients.len(), 1);
        assert_eq!(settings.clients[0].secrets[0].expose(), "from-flags");
        assert_eq!(settings.tokens.ttl, Duration::from_secs(120));
        let key_b = TokenKey::parse(&Secret::new(KEY_B)).unwrap();
        assert_eq!(settings.tokens.signing_key.id(), key_b.id());
        // The flag's `X-A` replaced the file's: its value is required, the file's refused.
        assert_eq!(settings.webhook_headers.len(), 1);
        let with_x_a = |value: &'static str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("x-a", axum::http::HeaderValue::from_static(value));
            headers
        };
        check_headers(&settings.webhook_headers, &with_x_a("flag")).unwrap();
        assert!(check_headers(&settings.webhook_headers, &with_x_a("file")).is_err());

        let settings =
            AuthSettings::resolve(&AuthArgs::default(), file_with_client("other", "x")).unwrap();
        assert_eq!(settings.tokens.ttl, Duration::from_secs(60));
        let key_a = TokenKey::parse(&Secret::new(KEY_A)).unwrap();
        assert_eq!(settings.tokens.signing_key.id(), key_a.id());
    }

    #[test]
    fn defaults_and_inconsistencies() {
        let settings = AuthSettings::resolve(&AuthArgs::default(), ConfigFile::default()).unwrap();
        assert_eq!(settings.tokens.ttl, DEFAULT_TOKEN_TTL);
        assert!(settings.clients.is_empty());

        let half = AuthArgs {
            oauth_client_id: Some("incode".into()),
            ..AuthArgs::default()
        };
        assert!(matches!(
            AuthSettings::resolve(&half, ConfigFile::default()),
            Err(AuthSetupError::ClientIdWithoutSecret)
        ));
        let twice = AuthArgs {
            token_signing_key: Some(Secret::new(KEY_A)),
            token_signing_key_file: Some("/nonexistent".into()),
            ..AuthArgs::default()
        };
        assert!(matches!(
            AuthSettings::resolve(&twice, ConfigFile::default()),
            Err(AuthSetupError::TwoSigningKeys { .. })
        ));
        let short = AuthArgs {
            token_signing_key: Some(Secret::new("c2hvcnQ=")),
            ..AuthArgs::default()
        };
        let error = AuthSettings::resolve(&short, ConfigFile::default()).unwrap_err();
        assert!(error.to_string().contains("--token-signing-key"), "{error}");
    }
}
