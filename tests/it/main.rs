//! Integration tests: the real gateway on ephemeral ports, driven over HTTP and gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
mod groups;
mod hardening;
mod internal;
mod layout;
mod nats_setup;
mod oauth;
mod reload;
mod scale_out;
mod secrets;
mod service;
mod shutdown;
mod simulate;
mod startup;
mod subscribe;
mod support;
mod tail;
mod telemetry;
mod webhook_auth;
mod webhooks;
