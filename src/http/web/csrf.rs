//! The form token of every page and console POST, checked one way: the token the form carries must equal the one
//! the service expects (the pages': the browser's token cookie, double submit; the console's: its session's), in
//! constant time, and the request must come from this service's own pages ([`super::origin`]).

use actix_web::cookie::{Cookie, SameSite};
use actix_web::HttpRequest;

use crate::http::AppState;

/// A token the service issued: 64 hex digits (256 bits).
pub fn is_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether two tokens are the same, in constant time; an empty one never matches.
pub fn same(given: &str, expected: &str) -> bool {
    !given.is_empty() && crate::config::same_secret(given, expected)
}

/// Whether a form may act: its token equals `expected` (never an empty one) and it comes from our own pages.
pub fn valid(state: &AppState, req: &HttpRequest, given: &str, expected: &str) -> bool {
    same(given, expected) && super::same_origin(state, req)
}

/// The browser's token in cookie `name`, if it holds one the service could have issued.
pub fn from_cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.cookie(name).map(|c| c.value().to_string()).filter(|v| is_token(v))
}

/// The token for a form (double submit): the browser's, or a new one with the cookie that gives it to the browser.
pub fn issue(
    state: &AppState,
    req: &HttpRequest,
    name: &'static str,
    path: &'static str,
    same_site: SameSite,
) -> (String, Option<Cookie<'static>>) {
    match from_cookie(req, name) {
        Some(v) => (v, None),
        None => {
            let v = crate::app::accounts::random_token();
            (v.clone(), Some(super::cookie(state, name, v, path, same_site)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_issued_tokens_count() {
        assert!(is_token(&"a1".repeat(32)));
        assert!(!is_token("short"));
        assert!(!is_token(&"zz".repeat(32)));
        assert!(!same("", ""), "an empty token never matches");
        assert!(same("ab", "ab") && !same("ab", "ac"));
    }
}
