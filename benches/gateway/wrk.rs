//! A lean load generator for the ingest scenarios: [wrk](https://github.com/wg/wrk) (Debian's
//! `wrk` package), with a Lua script that makes every request body unique, so that the figure
//! measures the server and not the generator. The bench's own generator stays for the
//! end-to-end and fan-out scenarios, which need to know what each request carried.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use serde_json::Value;

use crate::load::Target;

/// What a wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl WrkResult {
    pub fn rate(&self) -> f64 {
        self.requests.saturating_sub(self.errors) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Whether wrk is installed.
pub fn available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs wrk against `target` (its body function is not used: the script makes the bodies, each
/// unique thanks to `prefix`).
pub async fn run(
    target: &Target,
    prefix: &str,
    connections: usize,
    duration: Duration,
) -> WrkResult {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("post.lua");
    let authorization = target.authorization.clone().unwrap_or_default();
    std::fs::write(&script, lua(&target.path, prefix, &authorization)).unwrap();
    let output = tokio::process::Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))])
        .arg("-s")
        .arg(&script)
        .arg(url(target.addr))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run wrk");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("wrk printed no summary: {stdout}"));
    let summary: Value = serde_json::from_str(line).unwrap();
    let micros = |key: &str| summary[key].as_f64().unwrap_or(0.0);
    WrkResult {
        requests: summary["requests"].as_u64().unwrap_or(0),
        errors: summary["errors"].as_u64().unwrap_or(0),
        elapsed: Duration::from_micros(summary["duration_us"].as_u64().unwrap_or(1)),
        p50_ms: micros("p50_us") / 1000.0,
        p99_ms: micros("p99_us") / 1000.0,
        p999_ms: micros("p999_us") / 1000.0,
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn lua(path: &str, prefix: &str, authorization: &str) -> String {
    format!(
        r#"
local path, prefix, authorization = "{path}", "{prefix}", "{authorization}"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local counter = 0
function request()
  counter = counter + 1
  local body = string.format(
    '{{"interviewId":"%s-%d-%d","externalId":"customer-%d","onboardingStatus":"ONBOARDING_FINISHED","flowId":"flow-bench"}}',
    prefix, id, counter, counter)
  local headers = {{ ["Content-Type"] = "application/json" }}
  if authorization ~= "" then headers["Authorization"] = authorization end
  return wrk.format("POST", path, headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#
    )
}
