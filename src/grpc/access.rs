//! Who may use the internal listener, and for what.
//!
//! [`Access`] is the policy: the configured [`Subscribers`], whether mutual TLS is on, and
//! whether callers without credentials may read. It is built at start-up and replaced as a whole
//! when the subscribers are reloaded ([`CurrentAccess`]). [`guard`] runs in front
//! of every route: it lets `grpc.health.v1` through untouched (probes carry no credentials),
//! authenticates everything else into a [`Caller`] that it leaves in the request's extensions,
//! and refuses reflection and `/metrics` to callers that may not read. The `EventStream` rpcs
//! then ask the [`Caller`] whether it may read the plain stream or use a given consumer, since
//! only they know what the request asks for.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::identity::{Subscriber, Subscribers, certificate_names};
use crate::{
    auth::bearer::{Authorization, authorization},
    error::{ErrorKind, ServiceError, grpc_status, is_plain_name},
    metrics::Metrics,
    subscriptions::SubscriberIdentity,
};

/// The path prefix of gRPC health checks, which are never authenticated.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
/// The path prefix of the `EventStream` rpcs, which authorize per request.
const EVENT_STREAM_PREFIX: &str = "/incode.gateway.v1.EventStreamService/";
/// Name of an anonymous caller in logs, spans and metrics.
pub const ANONYMOUS: &str = SubscriberIdentity::ANONYMOUS;

/// The access policy of the internal listener.
#[derive(Debug)]
pub struct Access {
    subscribers: Subscribers,
    client_certificates: bool,
    anonymous_reads: bool,
}

impl Access {
    /// A policy over these subscribers; `client_certificates` when mutual TLS is on.
    pub fn new(subscribers: Subscribers, client_certificates: bool, anonymous_reads: bool) -> Self {
        Self {
            subscribers,
            client_certificates,
            anonymous_reads,
        }
    }

    /// Whether anything restricts callers (otherwise every caller may do everything).
    pub fn is_enforced(&self) -> bool {
        self.client_certificates || !self.subscribers.is_empty()
    }

    /// Whether callers prove who they are: by client certificate or by token.
    pub fn authenticates_subscribers(&self) -> bool {
        self.client_certificates || self.subscribers.any_tokens()
    }

    /// Whether callers without credentials may read the plain stream.
    pub fn allows_anonymous_reads(&self) -> bool {
        self.anonymous_reads
    }

    /// The configured subscribers.
    pub fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }

    /// Authenticates a call from its connection's client certificates (the leaf first) and its
    /// headers.
    pub fn authenticate(
        &self,
        certificates: Option<&[CertificateDer<'static>]>,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        if !self.is_enforced() {
            return Ok(Caller::new(Kind::Unrestricted));
        }
        let by_certificate = if self.client_certificates {
            let leaf = certificates
                .and_then(<[_]>::first)
                .ok_or(Refusal::ClientCertificateRequired)?;
            let names = certificate_names(leaf).map_err(|_| Refusal::UnreadableCertificate)?;
            if self.subscribers.is_empty() {
                // Mutual TLS alone: whoever the CA vouches for may do everything.
                let name = names
                    .iter()
                    .find(|name| is_plain_name(name, super::identity::MAX_NAME_LEN))
                    .map_or_else(|| "unnamed-certificate".to_owned(), Clone::clone);
                return Ok(Caller::new(Kind::Certificate(Arc::from(name))));
            }
            let subscriber = self
                .subscribers
                .by_certificate_names(&names)
                .map_err(|_| Refusal::AmbiguousCertificate)?
                .ok_or(Refusal::UnknownCertificate)?;
            Some(subscriber.clone())
        } else {
            None
        };
        let by_token = match bearer_token(headers)? {
            Some(token) => Some(
                self.subscribers
                    .by_token(token)
                    .ok_or(Refusal::InvalidToken)?
                    .clone(),
            ),
            None => None,
        };
        match (by_certificate, by_token) {
            (Some(certificate), Some(token)) if !Arc::ptr_eq(&certificate, &token) => {
                Err(Refusal::CertificateAndTokenDisagree)
            }
            (Some(subscriber), _) | (None, Some(subscriber)) => {
                Ok(Caller::new(Kind::Subscriber(subscriber)))
            }
            (None, None) => Ok(Caller::new(Kind::Anonymous {
                may_read: self.anonymous_reads,
            })),
        }
    }
}

/// The access policy in force. A reload replaces it as a whole: each call is authenticated
/// against one policy, never half of two. Calls already authenticated keep the identity they
/// were given (an open stream goes on); every new call, an `Ack` on an open connection too, meets
/// the new policy.
#[derive(Debug)]
pub struct CurrentAccess(RwLock<Arc<Access>>);

impl CurrentAccess {
    /// `access`, in force.
    pub fn new(access: Access) -> Self {
        Self(RwLock::new(Arc::new(access)))
    }

    /// The policy in force now.
    pub fn load(&self) -> Arc<Access> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `access` in force for every call from now on.
    pub fn replace(&self, access: Access) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(access);
    }
}

/// The bearer token of the `authorization` header, if there is one. Anything else in the
/// header is refused as malformed, so that a client learns what to send.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&[u8]>, Refusal> {
    match authorization(headers) {
        Authorization::Absent => Ok(None),
        Authorization::Bearer(token) => Ok(Some(token)),
        Authorization::OtherScheme | Authorization::EmptyBearer | Authorization::Repeated => {
            Err(Refusal::MalformedAuthorization)
        }
    }
}

/// Who made a call, once authenticated, and from where. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    kind: Kind,
    peer: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Nothing restricts callers: the listener is on loopback, or that was explicitly allowed.
    Unrestricted,
    /// A client certificate the client CA signed, with no `[[subscribers]]` configured.
    Certificate(Arc<str>),
    /// A configured subscriber.
    Subscriber(Arc<Subscriber>),
    /// No credentials, with subscribers configured.
    Anonymous { may_read: bool },
}

impl Caller {
    fn new(kind: Kind) -> Self {
        Self { kind, peer: None }
    }

    /// The client's address, when known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The identity's name for logs, spans and metrics: a subscriber's or certificate's name,
    /// or `anonymous`. Never a credential.
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::Certificate(name) => name,
            Kind::Subscriber(subscriber) => subscriber.name(),
            Kind::Unrestricted | Kind::Anonymous { .. } => ANONYMOUS,
        }
    }

    /// The identity that the consumers and groups it creates are charged to, and that the group
    /// members it joins are bound to. Callers that did not authenticate are all one anonymous
    /// identity.
    pub fn identity(&self) -> SubscriberIdentity {
        match &self.kind {
            Kind::Certificate(name) => SubscriberIdentity::authenticated(name.clone()),
            Kind::Subscriber(subscriber) => SubscriberIdentity::authenticated(subscriber.name()),
            Kind::Unrestricted | Kind::Anonymous { .. } => SubscriberIdentity::anonymous(),
        }
    }

    /// May it subscribe without a consumer (every event, from any position)?
    pub fn authorize_stream(&self) -> Result<(), Refusal> {
        match &self.kind {
            Kind::Unrestricted | Kind::Certificate(_) => Ok(()),
            Kind::Subscriber(subscriber) if subscriber.may_read_stream() => Ok(()),
            Kind::Subscriber(_) => Err(Refusal::StreamNotAllowed),
            Kind::Anonymous { may_read: true } => Ok(()),
            Kind::Anonymous { may_read: false } => Err(Refusal::CredentialsRequired),
        }
    }

    /// May it use and acknowledge the durable consumer or consumer group `name` (validated by
    /// the caller)? Consumers and groups share one namespace, so both ask here.
    pub fn authorize_consumer(&self, name: &str) -> Result<(), Refusal> {
        match &self.kind {
            Kind::Unrestricted | Kind::Certificate(_) => Ok(()),
            Kind::Subscriber(subscriber) if subscriber.may_use_consumer(name) => Ok(()),
            Kind::Subscriber(_) => Err(Refusal::ConsumerNotAllowed {
                consumer: name.to_owned(),
            }),
            Kind::Anonymous { .. } => Err(Refusal::ConsumerNeedsIdentity),
        }
    }

    /// May it use server reflection and `GET /metrics`? Any identity may; a caller without
    /// credentials only where anonymous reads are allowed.
    pub fn authorize_introspection(&self) -> Result<(), Refusal> {
        match &self.kind {
            Kind::Anonymous { may_read: false } => Err(Refusal::CredentialsRequired),
            _ => Ok(()),
        }
    }
}

/// Why a call was refused. The messages name the problem and the fix, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Mutual TLS is on and the connection has no client certificate.
    #[error("this listener requires a client certificate signed by its client CA")]
    ClientCertificateRequired,
    /// The client certificate could not be parsed for its names.
    #[error("the client certificate cannot be read")]
    UnreadableCertificate,
    /// The client certificate names no configured subscriber.
    #[error("the client certificate does not name a configured subscriber")]
    UnknownCertificate,
    /// The client certificate names several subscribers.
    #[error("the client certificate names more than one configured subscriber")]
    AmbiguousCertificate,
    /// The `authorization` metadata is not one `Bearer <token>`.
    #[error("the authorization metadata must be one `Bearer <token>`")]
    MalformedAuthorization,
    /// The token is not one of any subscriber's.
    #[error("the bearer token is not valid")]
    InvalidToken,
    /// Certificate and token name different subscribers.
    #[error("the client certificate and the bearer token belong to different subscribers")]
    CertificateAndTokenDisagree,
    /// No credentials where they are required.
    #[error(
        "authentication required: send `authorization: Bearer <token>` metadata or connect with a client certificate"
    )]
    CredentialsRequired,
    /// Durable consumers need an identity, even where anonymous reads are allowed.
    #[error(
        "durable consumers need an authenticated subscriber: send `authorization: Bearer <token>` metadata or connect with a client certificate"
    )]
    ConsumerNeedsIdentity,
    /// The subscriber may not subscribe without a consumer.
    #[error("this subscriber may not read the stream without a consumer")]
    StreamNotAllowed,
    /// The subscriber may not use this consumer.
    #[error("this subscriber may not use consumer `{consumer}`")]
    ConsumerNotAllowed {
        /// The consumer asked for.
        consumer: String,
    },
}

impl ServiceError for Refusal {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::ClientCertificateRequired
            | Self::UnreadableCertificate
            | Self::MalformedAuthorization
            | Self::InvalidToken
            | Self::CertificateAndTokenDisagree
            | Self::CredentialsRequired
            | Self::ConsumerNeedsIdentity => ErrorKind::Unauthenticated,
            Self::UnknownCertificate
            | Self::AmbiguousCertificate
            | Self::StreamNotAllowed
            | Self::ConsumerNotAllowed { .. } => ErrorKind::PermissionDenied,
        }
    }

    /// Also the `reason` of refusals in logs and metrics.
    fn code(&self) -> &'static str {
        match self {
            Self::ClientCertificateRequired => "client_certificate_required",
            Self::UnreadableCertificate => "unreadable_certificate",
            Self::UnknownCertificate => "unknown_certificate",
            Self::AmbiguousCertificate => "ambiguous_certificate",
            Self::MalformedAuthorization => "malformed_authorization",
            Self::InvalidToken => "invalid_token",
            Self::CertificateAndTokenDisagree => "certificate_and_token_disagree",
            Self::CredentialsRequired => "credentials_required",
            Self::ConsumerNeedsIdentity => "consumer_needs_identity",
            Self::StreamNotAllowed => "stream_not_allowed",
            Self::ConsumerNotAllowed { .. } => "consumer_not_allowed",
        }
    }
}

/// What [`guard`] needs.
#[derive(Clone)]
pub(super) struct GuardState {
    pub access: Arc<CurrentAccess>,
    pub metrics: Metrics,
}

/// Authenticates every request but health checks, and refuses reflection and `/metrics` to
/// callers that may not read. The [`Caller`] goes into the request's extensions.
pub(super) async fn guard(
    State(state): State<GuardState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with(HEALTH_PREFIX) {
        return next.run(request).await;
    }
    let tls = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    let certificates = tls.and_then(TlsConnectInfo::peer_certs);
    let peer = remote_addr(request.extensions());
    let caller = state
        .access
        .load()
        .authenticate(
            certificates.as_deref().map(Vec::as_slice),
            request.headers(),
        )
        .and_then(|caller| {
            if path.starts_with(EVENT_STREAM_PREFIX) {
                // The rpc decides, knowing what the request asks for.
                Ok(caller)
            } else {
                caller.authorize_introspection().map(|()| caller)
            }
        });
    match caller {
        Ok(mut caller) => {
            caller.peer = peer;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            refused(&state.metrics, &refusal, None, path, peer);
            if path == "/metrics" {
                http_refusal(&refusal)
            } else {
                grpc_status(&refusal).into_http()
            }
        }
    }
}

/// Records a refusal: a log line (the caller's name where known, never a credential) and the
/// `incode_gateway.internal.refusals` metric.
pub(super) fn refused<R: ServiceError + ?Sized>(
    metrics: &Metrics,
    refusal: &R,
    caller: Option<&Caller>,
    path: &str,
    peer: Option<SocketAddr>,
) {
    let subscriber = caller.map_or("unknown", Caller::name);
    tracing::info!(
        reason = refusal.code(),
        subscriber,
        path,
        peer = peer.map(tracing::field::display),
        "internal listener refused a call: {refusal}"
    );
    metrics.internal_refusal(refusal.code(), subscriber);
}

fn remote_addr(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

fn http_refusal(refusal: &Refusal) -> Response {
    let status = refusal.http_status();
    let mut response = (status, format!("{refusal}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"incode-gateway\""),
        );
    }
    response
}

/// Whether `caller` may subscribe, as the durable consumer or consumer group `name`, or to the
/// plain stream; a refusal is logged and counted.
pub fn authorize_subscribe(
    caller: &Caller,
    name: Option<&str>,
    metrics: &Metrics,
) -> Result<(), Refusal> {
    let decision = match name {
        Some(name) => caller.authorize_consumer(name),
        None => caller.authorize_stream(),
    };
    decision.inspect_err(|refusal| refused_call(metrics, refusal, caller, "Subscribe"))
}

/// Whether `caller` may acknowledge for the durable consumer or consumer group `name`; a
/// refusal is logged and counted.
pub fn authorize_ack(caller: &Caller, name: &str, metrics: &Metrics) -> Result<(), Refusal> {
    caller
        .authorize_consumer(name)
        .inspect_err(|refusal| refused_call(metrics, refusal, caller, "Ack"))
}

/// Records a group ack refused because it names a member that is not the caller's member of the
/// group: another subscriber trying a member's id is worth an operator's eye.
pub fn refused_ack<R: ServiceError + ?Sized>(caller: &Caller, refusal: &R, metrics: &Metrics) {
    refused_call(metrics, refusal, caller, "Ack");
}

fn refused_call<R: ServiceError + ?Sized>(
    metrics: &Metrics,
    refusal: &R,
    caller: &Caller,
    method: &str,
) {
    let path = format!("{EVENT_STREAM_PREFIX}{method}");
    refused(metrics, refusal, Some(caller), &path, caller.peer());
}

/// The caller a request was authenticated as by [`guard`]; `None` (a server fault, since the
/// guard is always installed) when there is none.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Secret, grpc::identity::SubscriberSettings};

    const BILLING_TOKEN: &str = "billing-token-0123456789";

    fn access(anonymous_reads: bool) -> Access {
        let subscribers = Subscribers::new(&[
            SubscriberSettings {
                name: "billing".into(),
                tokens: vec![Secret::new(BILLING_TOKEN)],
                consumers: vec!["billing".into(), "billing-*".into()],
                read_stream: true,
            },
            SubscriberSettings {
                name: "scraper".into(),
                tokens: vec![Secret::new("scraper-token-0123456789")],
                consumers: vec![],
                read_stream: false,
            },
        ])
        .unwrap();
        Access::new(subscribers, false, anonymous_reads)
    }

    fn headers(authorization: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in authorization {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn tokens_authenticate_and_consumers_are_authorized_by_pattern() {
        let access = access(false);
        let caller = access
            .authenticate(None, &headers(&[&format!("Bearer {BILLING_TOKEN}")]))
            .unwrap();
        assert_eq!(caller.name(), "billing");
        assert_eq!(caller.authorize_stream(), Ok(()));
        assert_eq!(caller.authorize_consumer("billing-eu"), Ok(()));
        assert_eq!(
            caller.authorize_consumer("payments").unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        let lowercase = access
            .authenticate(None, &headers(&[&format!("bearer  {BILLING_TOKEN}")]))
            .unwrap();
        assert_eq!(lowercase.name(), "billing");

        let scraper = access
            .authenticate(None, &headers(&["Bearer scraper-token-0123456789"]))
            .unwrap();
        assert_eq!(scraper.authorize_introspection(), Ok(()));
        assert_eq!(scraper.authorize_stream(), Err(Refusal::StreamNotAllowed));
    }

    #[test]
    fn missing_or_bad_credentials_are_unauthenticated() {
        let access = access(false);
        for (values, expected) in [
            (vec!["Bearer nope-nope-nope-nope"], Refusal::InvalidToken),
            (vec!["Basic YTpi"], Refusal::MalformedAuthorization),
            (vec!["Bearer"], Refusal::MalformedAuthorization),
            (vec!["Bearer   "], Refusal::MalformedAuthorization),
            (
                vec![&format!("Bearer {BILLING_TOKEN}"), "Bearer other"],
                Refusal::MalformedAuthorization,
            ),
        ] {
            let refusal = access.authenticate(None, &headers(&values)).unwrap_err();
            assert_eq!(refusal, expected, "{values:?}");
            assert_eq!(refusal.kind(), ErrorKind::Unauthenticated);
            assert!(!refusal.to_string().contains("nope"));
        }
        let anonymous = access.authenticate(None, &headers(&[])).unwrap();
        assert_eq!(anonymous.name(), ANONYMOUS);
        assert_eq!(
            anonymous.authorize_stream(),
            Err(Refusal::CredentialsRequired)
        );
        assert_eq!(
            anonymous.authorize_introspection(),
            Err(Refusal::CredentialsRequired)
        );
        assert_eq!(
            anonymous.authorize_consumer("billing"),
            Err(Refusal::ConsumerNeedsIdentity)
        );
    }

    #[test]
    fn anonymous_reads_open_the_plain_stream_only() {
        let access = access(true);
        let anonymous = access.authenticate(None, &headers(&[])).unwrap();
        assert_eq!(anonymous.authorize_stream(), Ok(()));
        assert_eq!(anonymous.authorize_introspection(), Ok(()));
        assert_eq!(
            anonymous.authorize_consumer("billing"),
            Err(Refusal::ConsumerNeedsIdentity)
        );
        // A wrong token is still wrong.
        assert_eq!(
            access
                .authenticate(None, &headers(&["Bearer wrong-wrong-wrong-wrong"]))
                .unwrap_err(),
            Refusal::InvalidToken
        );
    }

    #[test]
    fn with_nothing_configured_everyone_may_do_everything() {
        let access = Access::new(Subscribers::default(), false, false);
        assert!(!access.is_enforced());
        let caller = access
            .authenticate(None, &headers(&["Bearer anything"]))
            .unwrap();
        assert_eq!(caller.authorize_consumer("anything"), Ok(()));
        assert_eq!(caller.authorize_stream(), Ok(()));
    }

    #[test]
    fn mutual_tls_requires_a_certificate() {
        let access = Access::new(Subscribers::default(), true, false);
        assert_eq!(
            access.authenticate(None, &headers(&[])).unwrap_err(),
            Refusal::ClientCertificateRequired
        );
        assert_eq!(
            access.authenticate(Some(&[]), &headers(&[])).unwrap_err(),
            Refusal::ClientCertificateRequired
        );
    }
}
