//! Who is calling: bearer tokens of the `operator` and `service` roles, compared by digest in constant time
//! (`Secret::admits`, [`crate::config::Config::operator_for`]), each role with one or, during a rotation, two
//! values. An operator's named token (`MARKETFLOW_OPERATOR_TOKENS`) names its owner; the shared operator token
//! leaves the name to `X-Operator`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::config::{OperatorIdentity, OPERATOR_NAME_MAX};

fn bearer(req: &HttpRequest) -> Option<String> {
    super::session::bearer_token(req)
}

fn matches(given: &str, expected: Option<&crate::config::Secret>) -> bool {
    expected.is_some_and(|e| e.admits(given))
}

/// A caller holding an operator token.
#[derive(Debug, Clone)]
pub struct Operator {
    /// How the operator is named in audit trails: a named token's owner (`MARKETFLOW_OPERATOR_TOKENS`), else, with
    /// the shared `MARKETFLOW_OPERATOR_TOKEN`, the `X-Operator` header (`operator` without one).
    pub name: String,
}

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::unauthorized()));
        };
        let Some(t) = bearer(req) else { return ready(Err(ApiError::unauthorized())) };
        let t = t.as_str();
        ready(match state.config.operator_for(t) {
            // The token says who it is: a header cannot make it someone else.
            Some(OperatorIdentity::Named(name)) => Ok(Operator { name }),
            Some(OperatorIdentity::Shared) => {
                let name = req
                    .headers()
                    .get("x-operator")
                    .and_then(|v| v.to_str().ok())
                    .filter(|s| !s.is_empty() && s.len() <= OPERATOR_NAME_MAX)
                    .unwrap_or("operator")
                    .to_string();
                Ok(Operator { name })
            }
            None if matches(t, state.config.service_token.as_ref()) => {
                Err(ApiError::forbidden("this route needs the operator role"))
            }
            None => Err(ApiError::unauthorized()),
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
        ready(match bearer(req).as_deref() {
            None => Err(ApiError::unauthorized()),
            Some(t) if matches(t, state.config.service_token.as_ref()) => Ok(Service),
            Some(t) if state.config.operator_for(t).is_some() => {
                Err(ApiError::forbidden("this route needs the service role"))
            }
            Some(_) => Err(ApiError::unauthorized()),
        })
    }
}
