//! The HTTP boundary's errors: a stable `code` and a message for clients; the cause chain stays in the logs.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::ToResponse;

use crate::app::error::{AppError, Kind};

/// An error answer: `{"code": "...", "message": "..."}` with a status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Seconds to wait before retrying (overload).
    pub retry_after: Option<u32>,
}

/// The body of every error answer of the JSON API. `code` is stable (clients branch on it); `message` is for
/// people and may change.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// A stable, machine-readable code such as `invalid_json`, `unauthorized`, `not_found` or `overloaded`.
    #[schema(example = "not_found")]
    pub code: &'a str,
    /// What went wrong, for a person.
    #[schema(example = "no such organization")]
    pub message: &'a str,
}

impl ApiError {
    /// A workflow's refusal of an input, as the API answers it (the table is the use cases': [`AppError::refused`]).
    pub fn refused(outcome: &crate::engine::Outcome, default: &'static str) -> ApiError {
        AppError::refused(outcome, default).into()
    }

    /// The refusal: `429 rate_limited` with `Retry-After`. Nothing was done.
    pub fn rate_limited(retry_after: u32) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; try again in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into(), retry_after: None }
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "credentials are missing or invalid")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            r.insert_header(("Retry-After", s.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.insert_header(("WWW-Authenticate", "Bearer"));
        }
        r.json(ErrorBody { code: &self.code, message: &self.message })
    }
}

impl From<AppError> for ApiError {
    /// The one place a use case's refusal becomes a status.
    fn from(e: AppError) -> Self {
        let status = match e.kind {
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, code: e.code.into_owned(), message: e.message, retry_after: e.retry_after }
    }
}

impl From<crate::engine::Error> for ApiError {
    fn from(e: crate::engine::Error) -> Self {
        AppError::from(e).into()
    }
}

impl From<crate::app::accounts::Error> for ApiError {
    fn from(e: crate::app::accounts::Error) -> Self {
        AppError::from(e).into()
    }
}

impl From<crate::domain::ids::Invalid> for ApiError {
    fn from(e: crate::domain::ids::Invalid) -> Self {
        AppError::from(e).into()
    }
}

// The refusals every handler may answer, as the API description names them (`response = Unauthorized`): here,
// beside the errors they describe, so that handlers need not import the description to describe themselves.

fn error_content() -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build()
}

/// 401 `unauthorized`, with `WWW-Authenticate: Bearer`.
pub struct Unauthorized;

impl<'s> ToResponse<'s> for Unauthorized {
    fn response() -> (&'s str, RefOr<Response>) {
        let r = ResponseBuilder::new()
            .description("`unauthorized`: the credentials are missing or not valid")
            .content("application/json", error_content())
            .header("WWW-Authenticate", HeaderBuilder::new().description(Some("`Bearer`")).build())
            .build();
        ("Unauthorized", r.into())
    }
}

/// 503 with `Retry-After`: nothing changed, try again.
pub struct Unavailable;

impl<'s> ToResponse<'s> for Unavailable {
    fn response() -> (&'s str, RefOr<Response>) {
        let r = ResponseBuilder::new()
            .description(
                "`overloaded`, `storage_unavailable` or `shutting_down`: nothing was changed; try again after \
                 `Retry-After`",
            )
            .content("application/json", error_content())
            .header("Retry-After", HeaderBuilder::new().description(Some("seconds")).build())
            .build();
        ("Unavailable", r.into())
    }
}

/// 429 `rate_limited` with `Retry-After`: over the route class's limit; nothing was done.
pub struct RateLimited;

impl<'s> ToResponse<'s> for RateLimited {
    fn response() -> (&'s str, RefOr<Response>) {
        let r = ResponseBuilder::new()
            .description(
                "`rate_limited`: too many requests of this kind from this client; try again after `Retry-After`",
            )
            .content("application/json", error_content())
            .header("Retry-After", HeaderBuilder::new().description(Some("seconds")).build())
            .build();
        ("RateLimited", r.into())
    }
}

/// 413 `payload_too_large`: the JSON body is over the limit (64 KiB).
pub struct PayloadTooLarge;

impl<'s> ToResponse<'s> for PayloadTooLarge {
    fn response() -> (&'s str, RefOr<Response>) {
        let r = ResponseBuilder::new()
            .description("`payload_too_large`: the body is over 64 KiB")
            .content("application/json", error_content())
            .build();
        ("PayloadTooLarge", r.into())
    }
}
