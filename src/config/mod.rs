//! The gateway's configuration, on top of every feature: the command line, read from flags,
//! their `INCODE_GATEWAY_*` environment equivalents, and an optional TOML file ([`file`]) with a
//! key for every flag ([`keys`]), in that order of precedence, then the defaults (`load`).
//! `incode-gateway serve --help` lists every flag with its default; this module is the one place
//! they are defined, the tools' options too ([`tail`], [`simulate`]; the tools themselves are
//! the binary's).
//!
//! It is also the only module that turns arguments into the features' runtime settings
//! (`…Args` are clap's, `…Settings` the features'): [`ServeArgs`] builds each, by topic, and no
//! feature module reads the configuration itself.
//! - `serve`: `serve`'s own flags, the storage, consumer groups and the public router;
//! - `public`: the public listener's timeouts, limits and trusted proxies;
//! - `auth`: OAuth clients, token keys, webhook headers and the limits on client
//!   authentication;
//! - `nats`: the NATS JetStream backend;
//! - `internal`: the internal listener's TLS, subscribers and transport limits.

mod auth;
pub mod file;
mod internal;
pub mod keys;
mod load;
mod nats;
mod public;
mod serve;
pub mod simulate;
pub mod tail;

use std::time::Duration;

use clap::{Parser, Subcommand};

pub use auth::{AuthArgs, ClientAuthLimitArgs};
pub use internal::InternalListenerArgs;
pub use load::{Environment, LoadError};
pub use nats::NatsArgs;
pub use public::PublicListenerArgs;
pub use serve::{ServeArgs, StorageKind};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "incode-gateway",
    version,
    about = "Receives Incode webhooks, stores them durably and streams them to internal services over gRPC",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "made once at start-up")]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Print an argon2id hash (PHC string) of a client secret, for the config file or
    /// --oauth-client-secret. The secret is read from standard input, or prompted for without
    /// echo on a terminal, so that it stays out of the shell history.
    HashSecret,
    /// Subscribe to a gateway and print its events as JSON lines.
    Tail(tail::TailArgs),
    /// Play Incode: obtain a token and post notifications to a gateway, with Incode's retry.
    Simulate(simulate::SimulateArgs),
}

impl Cli {
    /// The arguments to serve with.
    pub fn into_serve_args(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(serve)) => serve,
            Some(Command::HashSecret | Command::Tail(_) | Command::Simulate(_)) | None => {
                self.serve
            }
        }
    }

    /// The command to run.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// A duration that must not be zero (an interval of nothing would spin).
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(Duration::ZERO) => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The long names of every flag of `serve`.
    fn serve_flags() -> Vec<String> {
        let command = Cli::command();
        let serve = command
            .get_subcommands()
            .find(|sub| sub.get_name() == "serve")
            .unwrap()
            .clone();
        serve
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .filter(|long| long != "help")
            .collect()
    }

    #[test]
    fn every_flag_has_one_file_key_and_every_key_one_flag() {
        let flags = serve_flags();
        for flag in &flags {
            if flag == "config" {
                assert_eq!(keys::path_of(flag), None, "--config has no key of its own");
                continue;
            }
            assert!(
                keys::path_of(flag).is_some(),
                "--{flag} has no key in the config file"
            );
        }
        for key in keys::FILE_KEYS {
            assert!(
                flags.iter().any(|flag| flag == key.flag),
                "{} is no flag",
                key.flag
            );
            let same_path = keys::FILE_KEYS
                .iter()
                .filter(|k| k.path == key.path)
                .count();
            assert_eq!(same_path, 1, "{} is used twice", key.path);
        }
    }
}
