//! The optional TOML configuration file (`--config FILE`): a key for every flag of `serve`
//! ([`keys::FILE_KEYS`](super::keys::FILE_KEYS)), and what does not fit in flags: several OAuth
//! clients with several secrets each (`[[oauth.clients]]`), and the internal listener's
//! subscribers (`[[subscribers]]`). Flags and `INCODE_GATEWAY_*` variables win over the file,
//! and the file over the defaults. Unknown keys are refused, so a typo does not silently leave
//! the gateway open. `incode-gateway.example.toml` lists every key.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::keys::{STRUCTURED_KEYS, flag_of, path_of};
use crate::auth::Secret;

/// A loaded config file.
pub struct ConfigFile {
    /// The flags it sets, by long name, each as its values would be written on the command line.
    settings: BTreeMap<&'static str, Vec<String>>,
    /// What is not a flag.
    pub sections: FileSections,
}

impl fmt::Debug for ConfigFile {
    // Values may be secrets: only the flags set are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .field("sections", &self.sections)
            .finish()
    }
}

/// The parts of the file that are not flags.
#[derive(Debug, Clone, Default)]
pub struct FileSections {
    /// `[[oauth.clients]]`.
    pub oauth_clients: Vec<ClientEntry>,
    /// `[[subscribers]]`: the identities that may use the internal listener.
    pub subscribers: Vec<SubscriberEntry>,
    /// What the file's flag settings were, to tell which ones a later version of the file
    /// changes.
    pub settings: SettingDigests,
}

/// A digest of each setting of a file, by key: enough to see that a setting changed without
/// keeping its value, which may be a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SettingDigests(BTreeMap<&'static str, [u8; 32]>);

impl fmt::Debug for SettingDigests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SettingDigests {
    fn insert<'a>(&mut self, key: &'static str, parts: impl IntoIterator<Item = &'a [u8]>) {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        self.0.insert(key, hasher.finalize().into());
    }

    /// The keys whose setting differs in `newer` (set, changed or removed), but for the keys in
    /// `except`.
    pub fn changed(&self, newer: &Self, except: &[&str]) -> Vec<&'static str> {
        let keys: BTreeSet<&'static str> = self.0.keys().chain(newer.0.keys()).copied().collect();
        keys.into_iter()
            .filter(|key| !except.contains(key) && self.0.get(key) != newer.0.get(key))
            .collect()
    }
}

/// One `[[oauth.clients]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The client id.
    pub id: String,
    /// Its secrets, plain or argon2id PHC strings.
    pub secrets: Vec<Secret>,
}

/// One `[[subscribers]]` entry: an identity on the internal listener.
#[derive(Debug, Clone, Deserialize)]
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
    /// The file sets flags, but the configuration was built in code rather than loaded from
    /// the command line, so they would be ignored.
    #[error(
        "the config file {path} sets flags, which only take effect when the configuration is loaded with Cli::load_from"
    )]
    FlagsNotApplied {
        /// The file.
        path: PathBuf,
    },
}

/// A problem at a place in the text: (line, column, message).
type Problem = (usize, usize, String);

/// Checks the values the file gives a flag (its long name), as the flag itself would: `Err`
/// says why they are refused, without repeating them.
pub type ValueCheck<'a> = &'a dyn Fn(&str, &[String]) -> Result<(), String>;

impl ConfigFile {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        Self::load_checked(path, &|_, _| Ok(()))
    }

    /// Reads and parses the file, and checks each flag's values with `check`, so that a refused
    /// value is reported at its key, never quoted.
    pub fn load_checked(path: &Path, check: ValueCheck<'_>) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_checked(&text, check).map_err(|(line, column, message)| {
            ConfigFileError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })
    }

    /// The values the file gives a flag (by long name), in command-line form.
    pub fn values_of(&self, flag: &str) -> Option<&[String]> {
        self.settings.get(flag).map(Vec::as_slice)
    }

    /// Whether the file sets any flag.
    pub fn sets_flags(&self) -> bool {
        !self.settings.is_empty()
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        Self::parse_checked(text, &|_, _| Ok(()))
    }

    /// Parses the file's text and checks each flag's values with `check`; of several refused
    /// values, the first in the text is reported.
    pub fn parse_checked(text: &str, check: ValueCheck<'_>) -> Result<Self, Problem> {
        let file = Self::parse_unchecked(text)?;
        let refused = file.settings.iter().filter_map(|(flag, values)| {
            let reason = check(flag, values).err()?;
            let key = path_of(flag)?;
            let (line, column) = locate(text, key);
            let message = format!("`{key}` (--{flag}): {}", redact_quoted(&reason));
            Some((line, column, message))
        });
        match refused.min() {
            Some(problem) => Err(problem),
            None => Ok(file),
        }
    }

    fn parse_unchecked(text: &str) -> Result<Self, Problem> {
        let table: toml::Table = toml::from_str(text).map_err(|error| {
            let offset = error.span().map_or(0, |span| span.start);
            let (line, column) = position(text, offset);
            (line, column, redact_quoted(error.message()))
        })?;
        let mut file = Self {
            settings: BTreeMap::new(),
            sections: FileSections::default(),
        };
        file.read_table(text, "", &table)?;
        for (flag, values) in &file.settings {
            if let Some(key) = path_of(flag) {
                let parts = values.iter().map(String::as_bytes);
                file.sections.settings.insert(key, parts);
            }
        }
        Ok(file)
    }

    fn read_table(&mut self, text: &str, prefix: &str, table: &toml::Table) -> Result<(), Problem> {
        for (name, value) in table {
            let path = format!("{prefix}{name}");
            let problem = |message: String| {
                let (line, column) = locate(text, &path);
                (line, column, message)
            };
            if let Some(flag) = flag_of(&path) {
                let values = flag_values(&path, value).map_err(problem)?;
                self.settings.insert(flag, values);
            } else if STRUCTURED_KEYS.contains(&path.as_str()) {
                self.read_structured(&path, value).map_err(problem)?;
            } else if let toml::Value::Table(inner) = value
                && is_section(&path)
            {
                self.read_table(text, &format!("{path}."), inner)?;
            } else {
                return Err(problem(format!(
                    "unknown key `{path}`; incode-gateway.example.toml lists every key"
                )));
            }
        }
        Ok(())
    }

    fn read_structured(&mut self, path: &str, value: &toml::Value) -> Result<(), String> {
        if let Some(key) = STRUCTURED_KEYS.iter().find(|key| **key == path) {
            // The parsed value prints the same whenever the entries are the same.
            let printed = format!("{value:?}");
            self.sections.settings.insert(key, [printed.as_bytes()]);
        }
        let redacted =
            |error: toml::de::Error| format!("`{path}`: {}", redact_quoted(error.message()));
        match path {
            "oauth.clients" => {
                self.sections.oauth_clients = value.clone().try_into().map_err(redacted)?;
            }
            _ => self.sections.subscribers = value.clone().try_into().map_err(redacted)?,
        }
        Ok(())
    }
}

/// Whether `path` is a section that holds keys.
fn is_section(path: &str) -> bool {
    let prefix = format!("{path}.");
    super::keys::FILE_KEYS
        .iter()
        .map(|key| key.path)
        .chain(STRUCTURED_KEYS.iter().copied())
        .any(|key| key.starts_with(&prefix))
}

/// A value in the form a flag takes it: one string per value.
fn flag_values(path: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        other => Err(format!(
            "`{path}` must be a string, an integer or a boolean, not {}",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        // `[webhooks] headers = { NAME = "VALUE" }`, as well as a list of "NAME=VALUE".
        toml::Value::Table(headers) if path == "webhooks.headers" => headers
            .iter()
            .map(|(name, value)| scalar(value).map(|value| format!("{name}={value}")))
            .collect(),
        other => scalar(other).map(|text| vec![text]),
    }
}

/// The line and column of the key `path` in `text`, best effort (1, 1 when not found).
fn locate(text: &str, path: &str) -> (usize, usize) {
    let Ok(document) = toml::de::DeTable::parse(text) else {
        return (1, 1);
    };
    let mut table = document.get_ref();
    let mut span = None;
    for part in path.split('.') {
        let Some((key, value)) = table.iter().find(|(key, _)| key.get_ref().as_ref() == part)
        else {
            break;
        };
        span = Some(key.span());
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    span.map_or((1, 1), |span| position(text, span.start))
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_sections_and_structured_entries_parse() {
        let file = ConfigFile::parse(
            r#"
            log_format = "json"

            [public]
            addr = "0.0.0.0:8443"
            trusted_proxies = ["10.0.0.0/8", "192.168.0.0/16"]
            max_connections = 100

            [oauth]
            token_ttl = "30m"
            signing_key_file = "/run/secrets/signing-key"
            verify_keys = ["b2xkLWtleQ=="]
            disable_throttle = true

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
            tokens = ["a-token-of-sixteen+"]
            consumers = ["billing-*"]
            "#,
        )
        .unwrap();
        let values = |flag| file.values_of(flag).unwrap().to_vec();
        assert_eq!(values("log-format"), ["json"]);
        assert_eq!(values("public-addr"), ["0.0.0.0:8443"]);
        assert_eq!(values("trusted-proxies"), ["10.0.0.0/8", "192.168.0.0/16"]);
        assert_eq!(values("max-connections"), ["100"]);
        assert_eq!(values("token-ttl"), ["30m"]);
        assert_eq!(values("disable-auth-throttle"), ["true"]);
        assert_eq!(values("webhook-header"), ["X-Incode-Secret=shared"]);
        assert_eq!(file.sections.oauth_clients.len(), 2);
        assert_eq!(file.sections.oauth_clients[0].secrets.len(), 2);
        assert_eq!(file.sections.subscribers[0].name, "billing");
        let debug = format!("{file:?}");
        assert!(
            !debug.contains("new-secret") && !debug.contains("shared"),
            "{debug}"
        );
    }

    #[test]
    fn changed_settings_are_named_by_key_without_keeping_values() {
        let before = ConfigFile::parse(
            "[storage]\nretention = \"7d\"\n[nats]\npassword = \"hunter2\"\n\
             [webhooks]\nheaders = { \"X-A\" = \"one\" }\n",
        )
        .unwrap()
        .sections
        .settings;
        let after = ConfigFile::parse(
            "[storage]\nretention = \"7d\"\nmax_events = 5\n[nats]\npassword = \"hunter3\"\n\
             [webhooks]\nheaders = { \"X-A\" = \"two\" }\n",
        )
        .unwrap()
        .sections
        .settings;
        assert_eq!(
            before.changed(&after, &["webhooks.headers"]),
            ["nats.password", "storage.max_events"]
        );
        assert_eq!(
            before.changed(&after, &[]),
            ["nats.password", "storage.max_events", "webhooks.headers"]
        );
        assert!(before.changed(&before, &[]).is_empty());
        let removed = ConfigFile::parse("").unwrap().sections.settings;
        assert_eq!(
            before.changed(&removed, &["webhooks.headers"]),
            ["nats.password", "storage.retention"]
        );
        let debug = format!("{before:?}");
        assert!(
            debug.contains("nats.password") && !debug.contains("hunter2"),
            "{debug}"
        );

        // Structured entries count as one setting each.
        let clients = |secret: &str| {
            ConfigFile::parse(&format!(
                "[[oauth.clients]]\nid = \"incode\"\nsecrets = [\"{secret}\"]\n\
                 [[subscribers]]\nname = \"billing\"\n"
            ))
            .unwrap()
            .sections
            .settings
        };
        assert_eq!(
            clients("one").changed(&clients("two"), &["subscribers"]),
            ["oauth.clients"]
        );
        assert!(clients("one").changed(&clients("one"), &[]).is_empty());
        assert_eq!(
            clients("one").changed(&removed, &["oauth.clients"]),
            ["subscribers"]
        );
    }

    #[test]
    fn errors_say_where_and_do_not_repeat_values() {
        for (text, line) in [
            (
                "[oauth]\n[[oauth.clients]]\nid = \"a\"\nsecrets = \"hunter2\"\n",
                2,
            ),
            ("[oauth]\nsigning_key = \"hunter2\n", 2),
            ("[oauth]\nsigning_kee = \"hunter2\"\n", 2),
            ("\n[public]\naddr = 1.5\n", 3),
        ] {
            let (at, _, message) = ConfigFile::parse(text).unwrap_err();
            assert_eq!(at, line, "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let (_, _, message) = ConfigFile::parse("[oauth]\nsigning_kee = 1\n").unwrap_err();
        assert!(message.contains("`oauth.signing_kee`"), "{message}");
        let (_, _, message) = ConfigFile::parse("[nope]\nx = 1\n").unwrap_err();
        assert!(message.contains("`nope`"), "{message}");
    }
}
