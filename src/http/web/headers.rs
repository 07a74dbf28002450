//! Security headers of every answer, set once here rather than by each handler.
//!
//! - `X-Content-Type-Options: nosniff` everywhere, and `Referrer-Policy: no-referrer` wherever the handler set
//!   none: the 免登 hand-off's URL is a credential and never reaches another site. The pages and the console set
//!   `same-origin` themselves: under `no-referrer` browsers send `Origin: null` with a form's POST, which the
//!   origin check of every form would refuse; their URLs hold no token.
//! - `Cache-Control: no-store` on every answer whose handler did not choose caching itself (the embedded assets
//!   do): pages, the 免登 hand-off and API answers carry tokens and personal data.
//! - Behind https (`MARKETFLOW_PUBLIC_URL` starts with `https://`): `Strict-Transport-Security`, and `Secure` on
//!   every cookie, whichever handler set it.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;

use crate::http::AppState;

/// HSTS for a year, subdomains included (the service's host serves nothing over plain http).
const HSTS: &str = "max-age=31536000; includeSubDomains";

pub async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let https = req.app_data::<web::Data<AppState>>().is_some_and(|s| s.config.public_url.starts_with("https://"));
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    if !h.contains_key(header::X_CONTENT_TYPE_OPTIONS) {
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    if !h.contains_key(header::REFERRER_POLICY) {
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
        let cookies: Vec<HeaderValue> = h.get_all(header::SET_COOKIE).cloned().collect();
        if !cookies.is_empty() {
            h.remove(header::SET_COOKIE);
            for c in cookies {
                h.append(header::SET_COOKIE, secure(c));
            }
        }
    }
    Ok(res)
}

/// A `Set-Cookie` value with the `Secure` attribute.
fn secure(cookie: HeaderValue) -> HeaderValue {
    let Ok(text) = cookie.to_str() else { return cookie };
    if text.split(';').any(|a| a.trim().eq_ignore_ascii_case("secure")) {
        return cookie;
    }
    HeaderValue::from_str(&format!("{text}; Secure")).unwrap_or(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_is_added_once() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(secure(v("a=1; Path=/; HttpOnly")), "a=1; Path=/; HttpOnly; Secure");
        assert_eq!(secure(v("a=1; Secure; Path=/")), "a=1; Secure; Path=/");
        assert_eq!(secure(v("a=1; secure")), "a=1; secure");
    }
}
