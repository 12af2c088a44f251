//! Append throughput of the embedded event log with group commit and with one fsync per append,
//! side by side in one run (the machine's disk decides the absolute numbers, so compare the
//! ratio).
//!
//! `cargo bench --bench log_append -- [--appenders N] [--seconds S]`

#![allow(clippy::expect_used)] // A benchmark has nothing better to do on failure than stop.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use incode_gateway::{
    log::{DedupKey, EmbeddedLog, EventLog, NewEvent, embedded::EmbeddedSettings},
    proto::v1,
};

struct Args {
    appenders: usize,
    duration: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        appenders: 64,
        duration: Duration::from_secs(3),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--appenders" => {
                args.appenders = iter.next().and_then(|v| v.parse().ok()).unwrap_or(64);
            }
            "--seconds" => {
                args.duration = Duration::from_secs_f64(
                    iter.next().and_then(|v| v.parse().ok()).unwrap_or(3.0),
                );
            }
            _ => {} // `cargo bench` passes `--bench`.
        }
    }
    args
}

async fn measure(max_commit_batch: usize, args: &Args) -> f64 {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut options = EmbeddedSettings::new(Duration::from_secs(24 * 3600));
    options.max_commit_batch = max_commit_batch;
    let log = Arc::new(EmbeddedLog::open(dir.path(), options).expect("open the log"));
    let deadline = Instant::now() + args.duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.appenders)
        .map(|appender| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut appended = 0u64;
                while Instant::now() < deadline {
                    let body = format!(
                        r#"{{"interviewId":"bench-{appender}-{appended}","onboardingStatus":"ONBOARDING_FINISHED"}}"#
                    );
                    let event = v1::Event {
                        id: uuid::Uuid::now_v7().to_string(),
                        r#type: v1::EventType::OnboardingStatusChanged.into(),
                        ..Default::default()
                    };
                    log.append(NewEvent {
                        dedup_key: DedupKey::for_notification("onboarding-status", body.as_bytes()),
                        event,
                    })
                    .await
                    .expect("append");
                    appended += 1;
                }
                appended
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("appender");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    log.close().await.expect("close");
    rate
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    println!(
        "embedded log append, {} concurrent appenders, {:?} each",
        args.appenders, args.duration
    );
    let single = measure(1, &args).await;
    let grouped = measure(1024, &args).await;
    println!("{:<28} {:>12}", "mode", "appends/s");
    println!("{:<28} {:>12.0}", "one fsync per append", single);
    println!("{:<28} {:>12.0}", "group commit (batch <= 1024)", grouped);
    println!(
        "group commit / one fsync per append: {:.1}x",
        grouped / single
    );
}
