//! The public listener: the OAuth token endpoint, Incode's webhook endpoints and health, nothing
//! else.
//!
//! Each resource has its own router; [`app`] merges them and adds the layers every request
//! goes through.

mod auth;
mod error;
mod health;
mod oauth;
mod webhooks;

use std::sync::Arc;

use axum::{Router, extract::DefaultBodyLimit};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

pub use auth::Refused;
pub use error::ApiError;

use self::auth::PeerIp;
use crate::{auth::Auth, log::SharedLog};

/// What the public handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    log: SharedLog,
    auth: Arc<Auth>,
}

impl AppState {
    /// State over this event log, guarded by `auth`.
    pub fn new(log: SharedLog, auth: Arc<Auth>) -> Self {
        Self {
            inner: Arc::new(Inner { log, auth }),
        }
    }

    fn log(&self) -> &SharedLog {
        &self.inner.log
    }

    fn auth(&self) -> &Arc<Auth> {
        &self.inner.auth
    }
}

/// Settings of the public router.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

/// The public router.
pub fn app(state: AppState, settings: HttpSettings) -> Router {
    Router::new()
        .merge(oauth::router())
        .merge(webhooks::router())
        .merge(health::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
