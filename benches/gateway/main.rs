//! The gateway benchmark: the real gateway (a child process, durable log, OAuth on) against a
//! bare axum server on the same machine, measured side by side in one run.
//!
//! ```sh
//! cargo bench --bench gateway -- [--duration 10] [--connections 64] [--rate 1000]
//!     [--fanout 1,100,1000] [--catch-up-events 1000000]
//!     [--only ingest,e2e,fanout,catchup,group,nats] [--perf] [--json]
//! ```
//!
//! Every scenario prints as it finishes; `--json` adds one JSON document at the end.

#![allow(clippy::expect_used, clippy::unwrap_used)] // A benchmark stops at the first failure.

mod gateway;
mod group;
mod load;
mod nats;
// Shared with the integration tests, which use more of it.
#[allow(dead_code)]
#[path = "../../tests/it/support/nats_server.rs"]
mod nats_server;
mod perf;
mod scenarios;
mod wrk;

use std::time::Duration;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub connections: usize,
    pub rate: u64,
    pub fanout: Vec<usize>,
    pub catch_up_events: u64,
    pub only: Option<Vec<String>>,
    pub json: bool,
    /// Measure the gateway's CPU time with `perf stat` during the fan-out load.
    pub perf: bool,
}

impl Settings {
    fn parse() -> Self {
        let mut settings = Self {
            duration: Duration::from_secs(10),
            connections: 64,
            rate: 1000,
            fanout: vec![1, 100, 1000],
            catch_up_events: 1_000_000,
            only: None,
            json: false,
            perf: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--duration" => settings.duration = Duration::from_secs(value().parse().unwrap()),
                "--connections" => settings.connections = value().parse().unwrap(),
                "--rate" => settings.rate = value().parse().unwrap(),
                "--fanout" => {
                    settings.fanout = value().split(',').map(|n| n.parse().unwrap()).collect();
                }
                "--catch-up-events" => settings.catch_up_events = value().parse().unwrap(),
                "--only" => {
                    settings.only = Some(value().split(',').map(str::to_owned).collect());
                }
                "--json" => settings.json = true,
                "--perf" => settings.perf = true,
                "--bench" => {} // passed by `cargo bench`
                other => panic!("unknown argument {other}"),
            }
        }
        settings
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == scenario))
    }
}

fn main() {
    let settings = Settings::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(async {
        let mut report = scenarios::run(&settings).await;
        if settings.runs("group") {
            report.insert("group".into(), group::run(&settings).await);
        }
        if settings.runs("nats") {
            report.insert("nats".into(), nats::run(&settings).await);
        }
        serde_json::Value::Object(report)
    });
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
}
