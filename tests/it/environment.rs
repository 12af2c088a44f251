//! The suite ignores the caller's `INCODE_GATEWAY_*` variables: a developer who exported some to
//! try the gateway out gets the same results as CI.

use std::{process::Stdio, time::Duration};

/// Variables someone trying the gateway out may well have exported. Each one breaks a test that
/// reads it: webhooks would need a header or a token, the binary's log lines would not be JSON,
/// events would not survive a restart, bodies would be too large, the tools would talk to a port
/// where nothing listens.
const EXPORTED: &[(&str, &str)] = &[
    ("INCODE_GATEWAY_WEBHOOK_HEADER", "X-Exported=1"),
    ("INCODE_GATEWAY_OAUTH_CLIENT_ID", "exported"),
    ("INCODE_GATEWAY_OAUTH_CLIENT_SECRET", "exported-secret"),
    ("INCODE_GATEWAY_LOG_FORMAT", "text"),
    ("INCODE_GATEWAY_STORAGE", "memory"),
    ("INCODE_GATEWAY_MAX_BODY_BYTES", "16"),
    ("INCODE_GATEWAY_INTERNAL_ADDR", "192.0.2.1:50051"),
    ("INCODE_GATEWAY_TAIL_ADDR", "http://127.0.0.1:1"),
    ("INCODE_GATEWAY_TAIL_TOKEN", "exported-token"),
    ("INCODE_GATEWAY_SIMULATE_URL", "http://127.0.0.1:1"),
    ("INCODE_GATEWAY_SIMULATE_CLIENT_ID", "exported"),
    ("INCODE_GATEWAY_SIMULATE_CLIENT_SECRET", "exported-secret"),
];

/// Tests that cover every way the suite starts the gateway or its tools: in process from
/// `ServeArgs::for_tests`, the binary as a server (`GatewayProcess`), a refused start, `tail`,
/// `simulate` and the flag parser.
const SAMPLE: &[&str] = &[
    "webhooks::a_retry_is_acknowledged_but_not_stored_twice",
    "durability::events_cursors_and_dedup_survive_a_restart",
    "internal::the_default_bind_starts_without_subscriber_authentication",
    "secrets::serve_refuses_to_start_with_no_webhook_authentication",
    "tail::tail_filters_starts_at_a_sequence_and_stops_after_max_events",
    "simulate::simulate_authenticates_at_the_gateways_token_endpoint",
    "internal::transport_flags_parse_and_zero_turns_keepalives_off",
];

/// Runs [`SAMPLE`] again, in a child process of this test binary, with [`EXPORTED`] set.
#[tokio::test]
async fn exported_gateway_variables_change_no_test_result() {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(SAMPLE)
        .args(["--exact", "--test-threads", "2"])
        .envs(EXPORTED.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the sample did not finish in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "with exported variables:\n{stdout}\n{stderr}"
    );
    let summary = format!("test result: ok. {} passed", SAMPLE.len());
    assert!(stdout.contains(&summary), "not every test ran:\n{stdout}");
}
