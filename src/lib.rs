//! incode-gateway receives Incode's webhooks, stores every accepted notification durably as a
//! protobuf event, and streams the events to internal services over gRPC.
//!
//! # Layout
//!
//! - [`config`]: on top of the features: the one typed configuration, from flags,
//!   `INCODE_GATEWAY_*` variables and an optional TOML file (`…Args`), and the only module that
//!   builds each feature's runtime settings (`…Settings`) from it; no feature imports it.
//! - [`auth`]: OAuth clients and secrets, access tokens, the webhook guard and the throttle on
//!   failed client authentication.
//! - [`incode`]: Incode's wire formats and their conversion to the [`proto`] contract.
//! - [`http`]: the public listener (axum): the OAuth token endpoint, webhooks and health.
//! - [`log`]: the event log trait (append with deduplication, read from a position, wait for
//!   new events), the state store beside it, and its backends.
//! - [`subscriptions`]: `Subscribe` and `Ack` requests over the log: consumer and group names,
//!   durable consumers' cursors, consumer groups, the quota on both, the filter, and the one
//!   stream driver every subscription runs on.
//! - [`grpc`]: the internal listener (tonic): `EventStreamService`, health, reflection and
//!   `GET /metrics`, over TLS or mutual TLS, with subscriber identities and what each may use.
//! - [`server`]: [`run`], which wires the log and both listeners together until shutdown.
//! - [`reload`]: what a reload request (SIGHUP) changes while the gateway runs: subscribers,
//!   webhook headers and TLS files.
//! - [`error`]: the error vocabulary shared by HTTP and gRPC answers.
//! - [`telemetry`]: logs, OpenTelemetry traces and W3C trace-context propagation.
//! - [`metrics`]: the gateway's instruments, exported over OTLP and as Prometheus text.
//! - [`proto`]: code generated from `proto/`, and the contract's JSON mapping of events.
//!
//! The binary's tools (`tail`, `simulate`, `hash-secret`) are clients of this library and live
//! apart from it, in the binary's `cli` module.

pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod incode;
pub mod log;
pub mod metrics;
pub mod proto;
pub mod reload;
pub mod server;
pub mod subscriptions;
pub mod telemetry;

pub use config::ServeArgs;
pub use server::run;
