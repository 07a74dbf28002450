//! Who the user is: on `/api/v1` a session token as `Authorization: Bearer` only; on the pages the `mf_session`
//! cookie, with CSRF tokens and an origin check on every form.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::app::accounts::User;

/// The session cookie of the pages.
pub const SESSION_COOKIE: &str = "mf_session";
/// The cookie carrying a 免登 grant until the browser logs in or registers.
pub const SSO_COOKIE: &str = "mf_sso";

/// The bearer token of a request, if any: the only credential `/api/v1` takes.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// The session of a page request: the `mf_session` cookie (or a bearer token, for scripts).
pub fn session_token(req: &HttpRequest) -> Option<String> {
    bearer_token(req).or_else(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_string()))
}

/// A logged-in user.
pub struct CurrentUser(pub User);

impl FromRequest for CurrentUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // A cookie never opens the JSON API: a page of another site can make a browser send it, not a header.
        let token = bearer_token(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(token), Some(state)) = (token, state) else {
                return Err(ApiError::unauthorized());
            };
            match state.accounts.authenticate(&token).await {
                Ok(u) => Ok(CurrentUser(u)),
                Err(crate::app::accounts::Error::Unauthenticated) => Err(ApiError::unauthorized()),
                Err(e) => Err(e.into()),
            }
        })
    }
}
