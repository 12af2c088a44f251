//! The tools in the binary for people debugging a deployment, beside `serve`:
//!
//! - [`tail`]: subscribes like any internal service and prints events as JSON lines.
//! - [`simulate`]: plays Incode (token, notifications, retry policy) against a gateway.
//! - [`json`]: the protobuf canonical JSON mapping of events that `tail` prints.
//!
//! Each tool's `main` reports its own errors on stderr and returns the process exit code.

pub mod json;
pub mod simulate;
pub mod tail;

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn interrupted() {
    crate::server::shutdown_signal().await;
}
