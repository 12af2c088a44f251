//! The `incode-gateway` binary: parses the configuration, installs logging and signal handling,
//! and runs the gateway (or one of the tools in [`cli`]: `hash-secret`, `tail`, `simulate`).

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use incode_gateway::config::{Cli, Command, LoadError};
use tokio::net::TcpListener;

/// The request path allocates many small, short-lived objects (JSON maps, protobuf messages);
/// mimalloc serves those markedly faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = match Cli::load() {
        Ok(cli) => cli,
        // Help, the version, and mistakes on the command line, as clap prints them.
        Err(LoadError::Arguments(error)) => error.exit(),
        Err(error) => {
            eprintln!(
                "incode-gateway: {}",
                incode_gateway::error::error_chain(&error)
            );
            return Ok(ExitCode::from(2));
        }
    };
    let config = match cli.into_command() {
        Command::Serve(config) => config,
        Command::HashSecret => {
            cli::hash_secret::main()?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Tail(args) => return Ok(cli::tail::main(args).await),
        Command::Simulate(args) => return Ok(cli::simulate::main(args).await),
    };
    let telemetry = incode_gateway::telemetry::init(config.log_format)?;
    // Before anything can take long (binding, connecting to NATS): from here on a SIGHUP (a
    // service manager's reload) reloads, and never ends the gateway.
    let reloads = incode_gateway::reload::hangup_requests();

    let public = TcpListener::bind(config.public_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--public-addr)", config.public_addr))?;
    let internal = TcpListener::bind(config.internal_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--internal-addr)",
                config.internal_addr
            )
        })?;

    let result = incode_gateway::server::run_with_reloads(
        config,
        public,
        internal,
        incode_gateway::server::shutdown_signal(),
        reloads,
    )
    .await;
    telemetry.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}
