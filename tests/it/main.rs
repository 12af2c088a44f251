//! Integration tests: the real gateway on ephemeral ports, driven over HTTP and gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod crash;
mod durability;
mod service;
mod simulate;
mod subscribe;
mod tail;
mod webhooks;
