//! The optional TOML configuration file (`--config FILE`): what does not fit in flags, such as
//! several OAuth clients with several secrets each, or the internal listener's subscribers.
//! Unknown keys are refused, so a typo does not silently leave the gateway open. The format is
//! documented in the README and in docs/internal-listener.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::auth::Secret;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The token endpoint and its tokens.
    #[serde(default)]
    pub oauth: OAuthSection,
    /// The webhook endpoints.
    #[serde(default)]
    pub webhooks: WebhooksSection,
    /// `[[subscribers]]`: the identities that may use the internal listener.
    #[serde(default)]
    pub subscribers: Vec<SubscriberEntry>,
}

/// One `[[subscribers]]` entry: an identity on the internal listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberEntry {
    /// Its name; a client certificate whose SAN DNS name (or, without DNS names, CN) is this
    /// name authenticates as this subscriber.
    pub name: String,
    /// Bearer tokens it may present, plain or as `sha256:<hex digest>`.
    #[serde(default)]
    pub tokens: Vec<Secret>,
    /// The durable consumers (and consumer groups) it may use and acknowledge; `*` matches any
    /// run of characters.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Whether it may subscribe without a consumer (the plain stream); default true.
    #[serde(default = "default_true")]
    pub read_stream: bool,
}

fn default_true() -> bool {
    true
}

/// `[oauth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    /// Lifetime of issued tokens, e.g. `"1h"`.
    #[serde(default, deserialize_with = "duration")]
    pub token_ttl: Option<Duration>,
    /// The signing key, base64.
    pub signing_key: Option<Secret>,
    /// A file holding the signing key.
    pub signing_key_file: Option<PathBuf>,
    /// Verify-only keys, base64.
    #[serde(default)]
    pub verify_keys: Vec<Secret>,
    /// Files holding verify-only keys.
    #[serde(default)]
    pub verify_key_files: Vec<PathBuf>,
    /// `[[oauth.clients]]`.
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
}

/// One `[[oauth.clients]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The client id.
    pub id: String,
    /// Its secrets, plain or argon2id PHC strings.
    pub secrets: Vec<Secret>,
}

/// `[webhooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    /// Headers every webhook call must carry, name to value.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Accept webhooks without authentication.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the format. The message has quoted text
    /// blanked out, since it may be a secret.
    #[error("the config file {path} is not valid (line {line}, column {column}): {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong, without quoted values.
        message: String,
    },
}

impl ConfigFile {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, column, message)| ConfigFileError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        })
    }

    /// Parses the file's text; on error, the position and a redacted message.
    fn parse(text: &str) -> Result<Self, (usize, usize, String)> {
        toml::from_str(text).map_err(|error| {
            let offset = error.span().map_or(0, |span| span.start);
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column, redact_quoted(error.message()))
        })
    }
}

/// Replaces the content of every `"..."` in a parser message with `…`: serde quotes the
/// offending value that way, and it may be a secret. (Field names are in backticks and stay.)
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if quoted {
                out.push('…');
            }
            out.push(c);
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    if quoted {
        out.push('…');
    }
    out.trim_end().to_owned()
}

fn duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let file = ConfigFile::parse(
            r#"
            [oauth]
            token_ttl = "30m"
            signing_key_file = "/run/secrets/signing-key"
            verify_keys = ["b2xkLWtleQ=="]

            [[oauth.clients]]
            id = "incode"
            secrets = ["new-secret", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"]

            [[oauth.clients]]
            id = "staging"
            secrets = ["other"]

            [webhooks]
            headers = { "X-Incode-Secret" = "shared" }

            [[subscribers]]
            name = "billing"
            tokens = ["billing-token-0123456789", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
            consumers = ["billing", "billing-*"]

            [[subscribers]]
            name = "metrics"
            read_stream = false
            "#,
        )
        .unwrap();
        assert_eq!(file.oauth.token_ttl, Some(Duration::from_secs(1800)));
        assert_eq!(file.oauth.clients.len(), 2);
        assert_eq!(file.oauth.clients[0].secrets.len(), 2);
        assert_eq!(file.webhooks.headers["X-Incode-Secret"].expose(), "shared");
        assert!(!file.webhooks.allow_unauthenticated);
        assert!(!format!("{file:?}").contains("new-secret"));
        assert_eq!(file.subscribers.len(), 2);
        assert_eq!(file.subscribers[0].consumers, ["billing", "billing-*"]);
        assert!(file.subscribers[0].read_stream);
        assert!(file.subscribers[1].tokens.is_empty() && !file.subscribers[1].read_stream);
        assert!(!format!("{file:?}").contains("billing-token"));
    }

    #[test]
    fn errors_say_where_and_do_not_repeat_values() {
        for (text, line) in [
            (
                "[oauth]\n[[oauth.clients]]\nid = \"a\"\nsecrets = \"hunter2\"\n",
                4,
            ),
            ("[oauth]\nsigning_key = \"hunter2\n", 2),
            ("[oauth]\nsigning_kee = \"hunter2\"\n", 2),
            ("[[subscribers]]\nname = \"a\"\ntokens = \"hunter2\"\n", 3),
            ("[[subscribers]]\nname = \"a\"\ntoken = [\"hunter2\"]\n", 3),
        ] {
            let (at, _, message) = ConfigFile::parse(text).unwrap_err();
            assert_eq!(at, line, "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let (_, _, message) = ConfigFile::parse("[oauth]\nsigning_kee = 1\n").unwrap_err();
        assert!(message.contains("`signing_kee`"), "{message}");
    }
}
