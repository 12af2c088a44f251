//! Integration tests: the real gateway on ephemeral ports, driven over HTTP and gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth_common;
mod common;
mod configuration;
mod conformance;
mod contract;
mod crash;
mod docs_benchmarks;
mod docs_checks;
mod docs_run;
mod documented_errors;
mod durability;
mod environment;
mod gated;
mod groups;
mod hardening;
mod internal;
mod nats_server;
mod nats_setup;
mod oauth;
mod pki;
mod reload;
mod scale_out;
mod secrets;
mod service;
mod shutdown;
mod simulate;
mod startup;
mod subscribe;
mod tail;
mod telemetry;
mod webhook_auth;
mod webhooks;
