//! incode-gateway receives Incode's webhooks, stores every accepted notification durably as a
//! protobuf event, and streams the events to internal services over gRPC.
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration, from flags and `INCODE_GATEWAY_*` variables.
//! - [`incode`]: Incode's wire formats and their conversion to the [`proto`] contract.
//! - [`http`]: the public listener (axum): webhooks and health.
//! - [`log`]: the event log trait (append with deduplication, read from a position, wait for
//!   new events) and its backends.
//! - [`grpc`]: the internal listener (tonic): `EventStreamService`, health and reflection.
//! - [`server`]: [`run`], which wires the log and both listeners together until shutdown.
//! - [`error`]: the error vocabulary shared by HTTP and gRPC answers.
//! - [`telemetry`]: logging setup.
//! - [`proto`]: code generated from `proto/`.
//! - [`tools`]: the binary's tools for people: `tail` (print events as JSON lines) and
//!   `simulate` (play Incode against a gateway).

pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod incode;
pub mod log;
pub mod proto;
pub mod server;
pub mod telemetry;
pub mod tools;

pub use config::Config;
pub use server::run;
