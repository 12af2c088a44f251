//! What the suites share: the gateway in process and as a child process, authentication helpers,
//! throwaway certificates and `nats-server`s, and an event log that holds operations at chosen
//! points. Nothing here is a test.

pub mod auth_common;
pub mod common;
pub mod gated;
pub mod nats_server;
pub mod pki;
