//! Loading the configuration: the command line, the `INCODE_GATEWAY_*` variables and the config
//! file, each value with the precedence of where it came from, and loading it again for a
//! reload.

use std::{ffi::OsString, path::PathBuf, sync::Arc};

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::{Cli, Command, ServeArgs, file};
use crate::auth::Secret;

impl Cli {
    /// The command line of this process, its `INCODE_GATEWAY_*` variables, and the config file
    /// `--config` (or `INCODE_GATEWAY_CONFIG`) names, with that precedence.
    pub fn load() -> Result<Self, LoadError> {
        Self::load_from(std::env::args_os(), Environment::Read)
    }

    /// Parses `args` (the program name first), the environment when `environment` says so,
    /// and the config file the result names: flags win over variables, variables over the
    /// file, the file over the defaults.
    pub fn load_from<I, T>(args: I, environment: Environment) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = match environment {
            Environment::Read => Self::command(),
            Environment::Ignore => without_env(Self::command()),
        };
        let matches = command.clone().try_get_matches_from(&args)?;
        let source = Arc::new(LoadSource { args, environment });
        let Some(path) = config_path(&matches) else {
            let mut cli = Self::from_arg_matches(&matches)?;
            cli.for_each_config(|config| config.source = Some(source.clone()));
            return Ok(cli);
        };
        let file = file::ConfigFile::load_checked(&path, &|flag, values| {
            check_file_values(&command, &matches, flag, values)
        })?;
        let command = with_file_defaults(command, &file);
        let matches = command.try_get_matches_from(&source.args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let sections = Arc::new(file.sections.clone());
        cli.for_each_config(|config| {
            config.add_file_lists(&file);
            config.file = Some(sections.clone());
            config.source = Some(source.clone());
        });
        Ok(cli)
    }

    /// Applies `change` to the configuration of `serve`, given with the subcommand or without.
    fn for_each_config(&mut self, mut change: impl FnMut(&mut ServeArgs)) {
        change(&mut self.serve);
        if let Some(Command::Serve(config)) = &mut self.command {
            change(config);
        }
    }

    /// Parses `args` (the program name first) as the command line alone says them: no
    /// `INCODE_GATEWAY_*` variable is read, so that tests and programs embedding the gateway get
    /// the documented defaults whatever the environment they run in holds.
    pub fn try_parse_args_only<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::load_from(args, Environment::Ignore)
    }
}

/// What a configuration was loaded from, to load it again ([`ServeArgs::reread`]).
pub(super) struct LoadSource {
    args: Vec<OsString>,
    environment: Environment,
}

impl std::fmt::Debug for LoadSource {
    // The command line may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadSource")
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// Whether [`Cli::load_from`] reads `INCODE_GATEWAY_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Read them, as the binary does.
    Read,
    /// Ignore them, for tests and embedding.
    Ignore,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line (or a variable) is not valid, or asked for help or the version.
    #[error(transparent)]
    Arguments(#[from] clap::Error),
    /// The config file is not usable.
    #[error(transparent)]
    File(#[from] file::ConfigFileError),
}

/// The config file `serve` is to read, from the command line or the environment.
fn config_path(matches: &ArgMatches) -> Option<PathBuf> {
    serve_matches(matches)?
        .get_one::<PathBuf>("config_file")
        .cloned()
}

/// The matches of `serve`'s arguments, given with or without the subcommand.
fn serve_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("serve", serve)) => Some(serve),
        Some(_) => None,
        None => Some(matches),
    }
}

/// Checks the values the config file gives the flag `flag` with the flag's own parser, unless
/// a flag or a variable gives it values instead (those win, so the file's are not used). A
/// refusal says why in words of its own: clap's message would quote the value, which may be a
/// secret, and name the flag, not the key of the file.
fn check_file_values(
    command: &clap::Command,
    matches: &ArgMatches,
    flag: &str,
    values: &[String],
) -> Result<(), String> {
    let Some(arg) = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(flag))
    else {
        return Ok(());
    };
    let overridden = serve_matches(matches)
        .and_then(|serve| serve.value_source(arg.get_id().as_str()))
        .is_some_and(|source| {
            matches!(
                source,
                clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
            )
        });
    if overridden && !ADDED_TO_FILE_LISTS.contains(&flag) {
        return Ok(());
    }
    let list = matches!(arg.get_action(), clap::ArgAction::Append);
    if values.len() > 1 && !list {
        return Err("takes one value, not a list".to_owned());
    }
    // The argument alone, taking a value whatever its action (a switch's value comes from the
    // file as `true` or `false`), parsed as clap parses it.
    let alone = arg.clone().env(None).action(if list {
        clap::ArgAction::Append
    } else {
        clap::ArgAction::Set
    });
    let probe = clap::Command::new("config-file")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(alone);
    for value in values {
        if let Err(error) = probe
            .clone()
            .try_get_matches_from([format!("--{flag}={value}")])
        {
            return Err(refusal_reason(&error, value));
        }
    }
    Ok(())
}

/// Why clap refused `value`, without `value` itself.
fn refusal_reason(error: &clap::Error, value: &str) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            let valid: Vec<String> = valid.iter().map(|value| format!("`{value}`")).collect();
            format!("must be one of {}", valid.join(", "))
        }
        _ => match std::error::Error::source(error) {
            Some(reason) => without_value(&reason.to_string(), value),
            None => "not a valid value".to_owned(),
        },
    }
}

/// `message` with every standalone occurrence of `value` (not inside a longer word) blanked.
fn without_value(message: &str, value: &str) -> String {
    if value.is_empty() {
        return message.to_owned();
    }
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(value) {
        out.push_str(&rest[..at]);
        let after = &rest[at + value.len()..];
        let standalone = !is_word(out.chars().next_back()) && !is_word(after.chars().next());
        out.push_str(if standalone { "…" } else { value });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The lists a flag or variable adds to rather than replaces, as they always have: verify-only
/// keys add up (a key being rotated out stays accepted wherever it is configured), and a
/// `--webhook-header` replaces only the file's header of the same name, so that no header the
/// file requires is dropped by setting another one elsewhere. See [`ServeArgs::add_file_lists`].
const ADDED_TO_FILE_LISTS: [&str; 3] = [
    "token-verify-key-file",
    "token-verify-key",
    "webhook-header",
];

/// `command` with the settings of `file` as the defaults of the flags they belong to: clap then
/// gives a flag, then its variable, then the file, then the built-in default. The lists of
/// [`ADDED_TO_FILE_LISTS`] are combined after parsing instead.
fn with_file_defaults(command: clap::Command, file: &file::ConfigFile) -> clap::Command {
    let apply = |command: clap::Command| {
        let ids: Vec<(String, Vec<String>)> = command
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?;
                if ADDED_TO_FILE_LISTS.contains(&long) {
                    return None;
                }
                let values = file.values_of(long)?;
                Some((arg.get_id().to_string(), values.to_vec()))
            })
            .collect();
        ids.into_iter().fold(command, |command, (id, values)| {
            command.mut_arg(id, |arg| {
                // A secret from the file must not show in `--help` as a default.
                let secret = arg.is_hide_env_values_set();
                arg.default_values(values).hide_default_value(secret)
            })
        })
    };
    apply(command).mut_subcommand("serve", apply)
}

/// `command` with the environment variables of its arguments (and its subcommands') removed.
fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.env(None))
        .mut_subcommands(without_env)
}

impl ServeArgs {
    /// The defaults, as `serve` with no flags would have them (whatever `INCODE_GATEWAY_*`
    /// variables the environment holds), with both listeners on ephemeral loopback ports,
    /// webhooks open to anyone, and no data directory: set `data_dir` (a temporary directory)
    /// before running with it. For tests.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests() -> Self {
        let mut config = match Cli::try_parse_args_only(["incode-gateway"]) {
            Ok(cli) => cli.serve,
            // No argument and no file to refuse: only a definition error, which every test
            // would show.
            Err(LoadError::Arguments(error)) => error.exit(),
            Err(error) => {
                eprintln!("incode-gateway: {error}");
                std::process::exit(2)
            }
        };
        config.public_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.internal_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.storage = super::StorageKind::Embedded;
        config.data_dir = PathBuf::new();
        config.auth.allow_unauthenticated_webhooks = true;
        config
    }

    /// The parts of the config file that are not flags: as [`Cli::load_from`] read them, or
    /// read now from `config_file` for a configuration built in code. Such a configuration
    /// cannot take the file's flag settings (only [`Cli::load_from`] gives them their place in
    /// the precedence), so a file with any is refused rather than half applied.
    pub fn file_sections(&self) -> Result<Arc<file::FileSections>, file::ConfigFileError> {
        if let Some(sections) = &self.file {
            return Ok(sections.clone());
        }
        let Some(path) = &self.config_file else {
            return Ok(Arc::default());
        };
        let file = file::ConfigFile::load(path)?;
        if file.sets_flags() {
            return Err(file::ConfigFileError::FlagsNotApplied { path: path.clone() });
        }
        Ok(Arc::new(file.sections))
    }

    /// The configuration as it reads now: the same command line and environment with the config
    /// file as it is now, for what can change while the gateway runs (see [`crate::reload`]).
    /// A configuration built in code keeps its settings and reads its config file's sections
    /// again.
    pub fn reread(&self) -> Result<Self, LoadError> {
        if let Some(source) = &self.source {
            return Ok(
                Cli::load_from(source.args.iter().cloned(), source.environment)?.into_serve_args(),
            );
        }
        let mut fresh = self.clone();
        fresh.file = None;
        fresh.file = Some(fresh.file_sections()?);
        Ok(fresh)
    }

    /// Like [`ServeArgs::for_tests`], with `args` (flags, `--config FILE`) on the command line too.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests_with(args: &[&str]) -> Result<Self, LoadError> {
        let mut config = Cli::try_parse_args_only(
            std::iter::once("incode-gateway").chain(args.iter().copied()),
        )?
        .serve;
        let defaults = Self::for_tests();
        config.public_addr = defaults.public_addr;
        config.internal_addr = defaults.internal_addr;
        config.data_dir = defaults.data_dir;
        Ok(config)
    }

    /// Adds the lists of [`ADDED_TO_FILE_LISTS`] that `file` holds to those the flags and
    /// variables gave: the file's verify-only keys before the others, and the file's webhook
    /// headers except those a flag or variable sets again by name (header names are
    /// case-insensitive).
    fn add_file_lists(&mut self, file: &file::ConfigFile) {
        let values = |flag| file.values_of(flag).unwrap_or_default().iter().cloned();
        let auth = &mut self.auth;
        auth.token_verify_key_files = values("token-verify-key-file")
            .map(PathBuf::from)
            .chain(std::mem::take(&mut auth.token_verify_key_files))
            .collect();
        auth.token_verify_keys = values("token-verify-key")
            .map(Secret::from)
            .chain(std::mem::take(&mut auth.token_verify_keys))
            .collect();
        let header_name = |header: &str| {
            header
                .split_once('=')
                .map(|(name, _)| name.trim().to_ascii_lowercase())
        };
        let set_again: Vec<Option<String>> = auth
            .webhook_headers
            .iter()
            .map(|header| header_name(header.expose()))
            .collect();
        auth.webhook_headers = values("webhook-header")
            .filter(|header| !set_again.contains(&header_name(header)))
            .map(Secret::from)
            .chain(std::mem::take(&mut auth.webhook_headers))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use clap::CommandFactory;

    use super::*;
    use crate::telemetry::LogFormat;

    fn parse(args: &[&str]) -> Result<Cli, LoadError> {
        Cli::try_parse_args_only(std::iter::once("incode-gateway").chain(args.iter().copied()))
    }

    fn write_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let (_dir, path) = write_file(
            "log_format = \"json\"\n[public]\naddr = \"127.0.0.1:9999\"\nmax_connections = 7\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n[storage]\nretention = \"2d\"\n\
             [internal]\nallow_anonymous_reads = true\n",
        );
        let config = parse(&["--config", &path, "--retention", "3d"])
            .unwrap()
            .serve;
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.public_addr, SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert_eq!(config.public_listener.max_connections, 7);
        assert_eq!(config.public_listener.trusted_proxies.len(), 1);
        assert_eq!(
            config.retention,
            Duration::from_secs(3 * 24 * 3600),
            "the flag wins"
        );
        assert!(config.internal.allow_anonymous_reads);
        assert_eq!(
            config.dedup_window,
            Duration::from_secs(24 * 3600),
            "a default stays"
        );
        // The same through the subcommand.
        let Some(Command::Serve(config)) = parse(&["serve", "--config", &path]).unwrap().command
        else {
            panic!("serve expected");
        };
        assert_eq!(config.retention, Duration::from_secs(2 * 24 * 3600));
        assert!(config.file.is_some());
    }

    #[test]
    fn verify_keys_add_up_and_a_webhook_header_replaces_only_its_name() {
        let (_dir, path) = write_file(
            "[oauth]\nverify_keys = [\"ZmlsZS1rZXk=\"]\nverify_key_files = [\"/file.key\"]\n\
             [webhooks]\nheaders = { \"X-Incode-Secret\" = \"file\", \"X-Other\" = \"kept\" }\n",
        );
        let exposed = |secrets: &[Secret]| -> Vec<String> {
            secrets.iter().map(|s| s.expose().to_owned()).collect()
        };
        for args in [vec!["--config", &path], vec!["serve", "--config", &path]] {
            let mut args = args;
            args.extend([
                "--token-verify-key",
                "ZmxhZy1rZXk=",
                "--token-verify-key-file",
                "/flag.key",
                "--webhook-header",
                "x-incode-secret=flag",
            ]);
            let cli = parse(&args).unwrap();
            let config = match cli.command {
                Some(Command::Serve(config)) => config,
                _ => cli.serve,
            };
            let auth = &config.auth;
            assert_eq!(
                exposed(&auth.token_verify_keys),
                ["ZmlsZS1rZXk=", "ZmxhZy1rZXk="]
            );
            assert_eq!(
                auth.token_verify_key_files,
                [PathBuf::from("/file.key"), PathBuf::from("/flag.key")]
            );
            assert_eq!(
                exposed(&auth.webhook_headers),
                ["X-Other=kept", "x-incode-secret=flag"]
            );
        }
        // Without flags, the file's lists as they are.
        let auth = parse(&["--config", &path]).unwrap().serve.auth;
        assert_eq!(exposed(&auth.token_verify_keys), ["ZmlsZS1rZXk="]);
        assert_eq!(auth.webhook_headers.len(), 2);
    }

    #[test]
    fn a_bad_value_in_the_file_is_refused_at_its_key_without_the_value() {
        let (_dir, path) = write_file("[public]\nmax_connections = \"many\"\n");
        let error = parse(&["--config", &path]).unwrap_err().to_string();
        assert!(
            error.contains(&path)
                && error.contains("line 2, column 1")
                && error.contains("`public.max_connections` (--max-connections)")
                && !error.contains("many"),
            "{error}"
        );
        // A flag wins over the file: the file's value is not used, so not refused either.
        let config = parse(&["--config", &path, "--max-connections", "7"]).unwrap();
        assert_eq!(config.serve.public_listener.max_connections, 7);
        let (_dir, path) = write_file("[public]\nmax_conections = 3\n");
        let error = parse(&["--config", &path]).unwrap_err().to_string();
        assert!(error.contains("public.max_conections"), "{error}");
    }

    #[test]
    fn refusals_keep_the_reason_and_drop_the_value() {
        assert_eq!(
            without_value("3000 is not in 1..=1000", "3000"),
            "… is not in 1..=1000"
        );
        assert_eq!(
            without_value("expected number at 0", "e"),
            "expected number at 0"
        );
        assert_eq!(without_value("x: x1 x", "x"), "…: x1 …");
    }

    #[test]
    fn secrets_from_the_file_are_not_shown_as_defaults() {
        let (_dir, path) = write_file("[nats]\npassword = \"file-password-61c2\"\n");
        let command = with_file_defaults(
            Cli::command(),
            &file::ConfigFile::load(std::path::Path::new(&path)).unwrap(),
        );
        let help = command
            .find_subcommand("serve")
            .unwrap()
            .clone()
            .render_long_help()
            .to_string();
        assert!(!help.contains("file-password-61c2"), "{help}");
        let config = parse(&["--config", &path]).unwrap().serve;
        assert_eq!(config.nats.password.unwrap().expose(), "file-password-61c2");
    }

    /// Names of the variables the arguments of `command` and of its subcommands read.
    fn variables(command: &clap::Command) -> Vec<String> {
        let own = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned());
        let nested = command.get_subcommands().flat_map(variables);
        own.chain(nested.collect::<Vec<_>>()).collect()
    }

    #[test]
    fn parsing_arguments_only_reads_no_variable() {
        let all = variables(&Cli::command());
        for expected in [
            "INCODE_GATEWAY_WEBHOOK_HEADER",
            "INCODE_GATEWAY_INTERNAL_ADDR",
            "INCODE_GATEWAY_TAIL_ADDR",
            "INCODE_GATEWAY_SIMULATE_CLIENT_SECRET",
        ] {
            assert!(
                all.iter().any(|name| name == expected),
                "{expected} in {all:?}"
            );
        }
        assert_eq!(
            variables(&without_env(Cli::command())),
            Vec::<String>::new()
        );
    }
}
