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

/// An error and its causes, for a person: like [`crate::error::error_chain`], but without a cause
/// that repeats the one before it word for word (transport errors often wrap their own kind).
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if message != previous {
            text.push_str(": ");
            text.push_str(&message);
        }
        previous = message;
        source = cause.source();
    }
    text
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn interrupted() {
    crate::server::shutdown_signal().await;
}
