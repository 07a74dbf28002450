//! Who is calling: bearer tokens of the `operator` and `service` roles, compared by digest in constant time
//! (`Secret::admits`), each role with one or, during a rotation, two values.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers().get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn matches(given: &str, expected: Option<&crate::config::Secret>) -> bool {
    expected.is_some_and(|e| e.admits(given))
}

/// A caller holding the operator token.
#[derive(Debug, Clone)]
pub struct Operator {
    /// How the operator is named in audit trails.
    pub name: String,
}

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::unauthorized()));
        };
        ready(match bearer(req) {
            None => Err(ApiError::unauthorized()),
            Some(t) if matches(t, state.config.operator_token.as_ref()) => {
                let name = req
                    .headers()
                    .get("x-operator")
                    .and_then(|v| v.to_str().ok())
                    .filter(|s| !s.is_empty() && s.len() <= 64)
                    .unwrap_or("operator")
                    .to_string();
                Ok(Operator { name })
            }
            Some(t) if matches(t, state.config.service_token.as_ref()) => {
                Err(ApiError::forbidden("this route needs the operator role"))
            }
            Some(_) => Err(ApiError::unauthorized()),
        })
    }
}

/// A caller holding the service token (Zilliz Cloud's own services).
#[derive(Debug, Clone)]
pub struct Service;

impl FromRequest for Service {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::unauthorized()));
        };
        ready(match bearer(req) {
            None => Err(ApiError::unauthorized()),
            Some(t) if matches(t, state.config.service_token.as_ref()) => Ok(Service),
            Some(t) if matches(t, state.config.operator_token.as_ref()) => {
                Err(ApiError::forbidden("this route needs the service role"))
            }
            Some(_) => Err(ApiError::unauthorized()),
        })
    }
}
