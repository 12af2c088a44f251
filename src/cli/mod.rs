//! The binary's tools for people, beside `serve`; clients of the gateway, apart from the server
//! library (which never imports them):
//!
//! - [`tail`]: subscribes like any internal service and prints events as JSON lines.
//! - [`simulate`]: plays Incode (token, notifications, retry policy) against a gateway.
//! - [`hash_secret`]: prints the argon2id hash of a client secret for the configuration.
//!
//! Each tool's `main` reports its own errors on stderr and returns the process exit code; their
//! arguments are defined with the rest of the configuration, in `incode_gateway::config`.

pub mod hash_secret;
pub mod simulate;
pub mod tail;
