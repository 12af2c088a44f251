//! `perf stat` on the gateway process: the CPU time it spends per delivered event. (This
//! machine's VM exposes no hardware counters, so the count is `task-clock`, CPU time, rather
//! than instructions; time spent waiting for a core is not in it.)

use std::{process::Stdio, time::Duration};

/// The CPU time process `pid` uses during `duration`; `None` when perf is not installed.
pub async fn cpu_time(pid: u32, duration: Duration) -> Option<Duration> {
    let output = tokio::process::Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            "task-clock",
            "-p",
            &pid.to_string(),
        ])
        .args(["--", "sleep", &duration.as_secs_f64().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .ok()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let milliseconds: f64 = stderr
        .lines()
        .find(|line| line.contains("task-clock"))
        .and_then(|line| line.split(',').next())
        .and_then(|value| value.trim().parse().ok())?;
    Some(Duration::from_secs_f64(milliseconds / 1000.0))
}
