//! Protocol primitives of the Alibaba Cloud Marketplace (阿里云云市场).
//!
//! The primitives are pure: no I/O, no clocks (callers pass `now`), no async. That keeps the
//! security-relevant code (tokens, signatures) testable with fixed vectors taken from the
//! official SDK, and lets both the real client and the simulator share one implementation, so
//! they cannot drift apart.
//!
//! - [`token`]: the MD5 token on SPI callbacks (marketplace → us).
//! - [`spi`]: typed SPI requests.
//! - [`sign_v3`]: `ACS3-HMAC-SHA256`, what the official SDKs send by default (us → Market API).
//! - [`sign_rpc`]: the legacy `HMAC-SHA1` RPC signature, which older SDKs and hand-written
//!   clients still send, so the simulator accepts it too.
//! - [`market`]: Market OpenAPI (2015-11-01) request and response bodies.
//! - [`encoding`], [`auth`]: pieces shared by the two signature schemes.
//!
//! Built on them, with I/O:
//! - [`client`]: the Market OpenAPI client (us → marketplace), V3-signed like the official SDKs.
//! - [`simulator`]: a local marketplace (Market OpenAPI, SPI caller, buyer) for development and tests.

pub mod auth;
pub mod client;
pub mod encoding;
pub mod market;
pub mod sign_rpc;
pub mod sign_v3;
pub mod simulator;
pub mod spi;
pub mod token;

pub use auth::{AuthError, AuthErrorCode, ReceivedRequest, Verified};

/// Verifies a Market OpenAPI request signed with either scheme.
///
/// The simulator must accept whatever an official SDK sends, and the SDK picks the scheme by
/// configuration (V3 by default, `signature_algorithm="v2"` for RPC), so an `ACS3-`
/// `Authorization` header selects V3 and anything else is treated as RPC.
pub fn verify_request<F>(
    request: &ReceivedRequest<'_>,
    secret_for: F,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verified, AuthError>
where
    F: Fn(&str) -> Option<String>,
{
    let is_v3 = request.header("authorization").is_some_and(|v| v.trim_start().starts_with("ACS3-"));
    if is_v3 {
        sign_v3::verify(request, secret_for, now)
    } else {
        sign_rpc::verify(request, secret_for, now)
    }
}
