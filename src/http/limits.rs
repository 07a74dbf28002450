//! Rate limits per route class, and who the client is.
//!
//! Token buckets (governor's GCRA) keyed per class: log-ins, registrations and console log-ins per client
//! address (and log-ins per account too, in `accounts`: the address alone is cheap to change); requests with a
//! bearer token per token (by digest: no token is kept in memory); every other public request per client
//! address. The SPI is not limited by address: the marketplace calls from few addresses, and a refused call is
//! retried by it later, so overload answers (503) bound it instead. Limits are per node.
//!
//! The client address is the TCP peer, or, when the peer is one of `MARKETFLOW_TRUSTED_PROXIES`, the nearest
//! address in `X-Forwarded-For` that is not a trusted proxy: a client cannot pick its own address by sending
//! the header.

use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::ratelimit::{Bucket, RateLimits, TrustedProxies};

/// The requests a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `POST /api/v1/sessions`, `POST /login`: per address (and per account, in `accounts`).
    Login,
    /// `POST /api/v1/accounts`, `POST /register`: per address.
    Register,
    /// `POST /console/login`: per address.
    ConsoleLogin,
    /// Anything with `Authorization: Bearer`: per token.
    Bearer,
    /// Every other request but the SPI: per address.
    Address,
    /// The marketplace's SPI: not limited here.
    Spi,
}

impl Class {
    /// The class of a request, from its method, path and whether it carries a bearer token.
    pub fn of(method: &str, path: &str, bearer: bool) -> Class {
        match (method, path) {
            (_, "/aliyun/spi") => Class::Spi,
            ("POST", "/api/v1/sessions" | "/login") => Class::Login,
            ("POST", "/api/v1/accounts" | "/register") => Class::Register,
            ("POST", "/console/login") => Class::ConsoleLogin,
            _ if bearer => Class::Bearer,
            _ => Class::Address,
        }
    }
}

/// The buckets of one application.
pub struct Limiter {
    /// Where `X-Forwarded-For` is believed.
    trusted: TrustedProxies,
    login: Bucket<IpAddr>,
    register: Bucket<IpAddr>,
    console_login: Bucket<IpAddr>,
    /// Keyed by the token's SHA-256.
    token: Bucket<[u8; 32]>,
    address: Bucket<IpAddr>,
}

impl Limiter {
    pub fn new(limits: RateLimits, trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            login: Bucket::new(limits.login),
            register: Bucket::new(limits.register),
            console_login: Bucket::new(limits.console_login),
            token: Bucket::new(limits.token),
            address: Bucket::new(limits.address),
        }
    }

    /// The client address of a request (every `X-Forwarded-For` line, in order, as one list).
    pub fn client(&self, req: &actix_web::HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        let lines: Vec<&str> = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).collect();
        let xff = (!lines.is_empty()).then(|| lines.join(","));
        Some(self.trusted.client(peer, xff.as_deref()))
    }

    /// Counts a request of `class`; `Err(seconds)` when over its limit. A bearer token the configuration knows
    /// (operator, service) has a bucket of its own; any other (a session, or a made-up one) counts against its
    /// client address too, so that a fresh random token per request does not escape the address's limit.
    fn check(&self, class: Class, client: Option<IpAddr>, bearer: Option<&str>, known: bool) -> Result<(), u32> {
        let by_address = |b: &Bucket<IpAddr>| client.map_or(Ok(()), |ip| b.check(&crate::ratelimit::client_key(ip)));
        match class {
            Class::Spi => Ok(()),
            Class::Login => by_address(&self.login),
            Class::Register => by_address(&self.register),
            Class::ConsoleLogin => by_address(&self.console_login),
            Class::Bearer => {
                if !known {
                    by_address(&self.address)?;
                }
                self.token.check(&Sha256::digest(bearer.unwrap_or("").as_bytes()).into())
            }
            Class::Address => by_address(&self.address),
        }
    }
}

/// Refuses a request over its class's limit before anything reads its body.
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let verdict = req.app_data::<web::Data<AppState>>().map(|state| {
        let bearer = super::session::bearer_token(req.request());
        // The path as the router matches it (percent-decoded), so `/api/v1/%73essions` is a log-in too.
        let class = Class::of(req.method().as_str(), req.match_info().as_str(), bearer.is_some());
        let known = bearer.as_deref().is_some_and(|t| state.config.is_role_token(t));
        state.limiter.check(class, state.limiter.client(req.request()), bearer.as_deref(), known)
    });
    if req.conn_data::<crate::ratelimit::ConnectionSlot>().is_some_and(|c| c.over) {
        let (req, _) = req.into_parts();
        let mut res = ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many connections are open from this address; close some and retry",
        )
        .error_response();
        res.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(ServiceResponse::new(req, res).map_into_right_body());
    }
    if let Some(Err(seconds)) = verdict {
        let (req, _) = req.into_parts();
        let res = ApiError::rate_limited(seconds).error_response();
        return Ok(ServiceResponse::new(req, res).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// A request body must have arrived this long after the request began, unless `MARKETFLOW_BODY_TIMEOUT` says
/// otherwise: a client that trickles a body byte by byte holds a connection and a worker's buffer.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The body, cut off with a timeout error once the deadline has passed.
struct Deadline {
    inner: actix_web::dev::Payload,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Set once the deadline cut the body off: the answer then closes the connection.
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl futures_util::Stream for Deadline {
    type Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        let this = self.get_mut();
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.fired.store(true, std::sync::atomic::Ordering::Relaxed);
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the request body did not arrive in time");
            return std::task::Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(e))));
        }
        std::pin::Pin::new(&mut this.inner).poll_next(cx)
    }
}

/// Whether a body error is the deadline's.
pub fn timed_out(e: &actix_web::error::PayloadError) -> bool {
    matches!(e, actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Puts the body of every request under the deadline (counted from when the request head arrived).
pub async fn body_deadline(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let h = req.headers();
    let has_body = h.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || h.get(actix_web::http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        // Nothing to wait for: no timer for the many GETs.
        return next.call(req).await;
    }
    let timeout = req.app_data::<web::Data<AppState>>().map_or(BODY_TIMEOUT, |s| s.config.body_timeout);
    let (head, inner) = req.into_parts();
    let sleep = Box::pin(tokio::time::sleep(timeout));
    type Body = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>>>,
    >;
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream: Body = Box::pin(Deadline { inner, sleep, fired: fired.clone() });
    let payload = actix_web::dev::Payload::Stream { payload: stream };
    let mut res = next.call(ServiceRequest::from_parts(head, payload)).await?;
    if fired.load(std::sync::atomic::Ordering::Relaxed) {
        // The rest of the body would still be read and discarded, at the sender's pace: close instead.
        res.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_route() {
        assert_eq!(Class::of("POST", "/aliyun/spi", false), Class::Spi);
        assert_eq!(Class::of("GET", "/aliyun/spi", true), Class::Spi);
        assert_eq!(Class::of("POST", "/api/v1/sessions", false), Class::Login);
        assert_eq!(Class::of("POST", "/login", false), Class::Login);
        assert_eq!(Class::of("GET", "/login", false), Class::Address);
        assert_eq!(Class::of("POST", "/register", false), Class::Register);
        assert_eq!(Class::of("POST", "/console/login", false), Class::ConsoleLogin);
        assert_eq!(Class::of("GET", "/api/v1/orgs", true), Class::Bearer);
        assert_eq!(Class::of("GET", "/healthz", false), Class::Address);
    }
}
