//! The cookies of the pages and the console: HTTP-only, `Secure` behind https, removed the same way.

use actix_web::cookie::{Cookie, SameSite};
use chrono::TimeDelta;

use crate::http::AppState;

/// Whether browsers reach the service over https (then every cookie is `Secure`).
pub fn https(state: &AppState) -> bool {
    state.config.public_url.starts_with("https://")
}

/// An HTTP-only cookie under `path`, `Secure` behind https.
pub fn cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    path: &'static str,
    same_site: SameSite,
) -> Cookie<'static> {
    Cookie::build(name, value).path(path).http_only(true).same_site(same_site).secure(https(state)).finish()
}

/// The cookie that removes `name` under `path`.
pub fn cleared(name: &'static str, path: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build(name, "").path(path).finish();
    c.make_removal();
    c
}

/// `cookie` kept by the browser for `age` (a session's lifetime, a remembered language).
pub fn lasting(mut cookie: Cookie<'static>, age: TimeDelta) -> Cookie<'static> {
    if let Some(age) = age.to_std().ok().and_then(|a| actix_web::cookie::time::Duration::try_from(a).ok()) {
        cookie.set_max_age(age);
    }
    cookie
}
