//! `GET`/`POST /aliyun/spi`: the marketplace's calls. Token first (nothing is parsed or stored for a forged
//! call), then parsing into a typed request, then the use case (`app::notices`): one input to the subscription's workflow.
//!
//! Answers follow the marketplace's conventions: createInstance `{"instanceId", "appInfo"}`, every other action
//! `{"success": true}`, failures `{"success": false, "message"}` with a stable `code`. A temporary failure
//! (overload, storage) is a 503 so that the marketplace calls again; the input ids make the retry harmless.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::AppState;
use crate::aliyun::encoding::parse_form;
use crate::aliyun::spi::SpiRequest;
use crate::aliyun::token::{verify_spi_token, TokenError};
use crate::app::notices::NoticeError;

/// The SPI's part of the API description.
#[derive(OpenApi)]
#[openapi(
    paths(spi_get, spi_post),
    components(schemas(SpiParams, CreateInstanceReply, AppInfo, SpiSuccess, SpiFailure))
)]
pub struct SpiApi;

/// The parameters of an SPI call, as the marketplace sends them (query or form). Which are required depends on
/// `action`; every one is covered by `token`. Described here only: the handler must see the raw pairs in their
/// order (the token is computed over all of them), so it parses them itself (`SpiRequest::parse`).
#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct SpiParams {
    /// `createInstance`, `orderPay`, `renewInstance`, `upgradeInstance`, `expiredInstance`, `releaseInstance`,
    /// `resumeInstance`, or `verify` (a 免登 link pointed at the SPI address: redirected to `/aliyun/sso`).
    action: Option<String>,
    /// MD5 over the sorted parameters and the ISV key.
    token: Option<String>,
    /// The subscribing Aliyun account (createInstance, orderPay).
    ali_uid: Option<String>,
    /// The order's business id, which becomes the instance id (createInstance, orderPay).
    order_biz_id: Option<String>,
    order_id: Option<String>,
    product_code: Option<String>,
    sku_id: Option<String>,
    /// `true` for a trial (createInstance).
    trial: Option<String>,
    /// Beijing time, `yyyy-MM-dd HH:mm:ss` (createInstance, renewInstance).
    expired_on: Option<String>,
    /// Every action after createInstance.
    instance_id: Option<String>,
    /// orderPay's idempotency key.
    request_id: Option<String>,
    /// releaseInstance.
    is_refund: Option<String>,
    /// verify (免登).
    time_stamp: Option<String>,
}

pub use crate::domain::protocol::{AppInfo, CreateInstanceReply};

/// Every other action's answer.
#[derive(Serialize, ToSchema)]
pub struct SpiSuccess {
    /// Always `true`.
    pub success: bool,
}

/// A refused or failed SPI call, in the marketplace's convention plus a stable `code`.
#[derive(Serialize, ToSchema)]
pub struct SpiFailure {
    /// Always `false`.
    pub success: bool,
    /// `invalid_body`, `invalid_parameter`, `missing_token`, `invalid_token`, `duplicate_parameter`,
    /// `unknown_action`, `payload_too_large`, `not_configured`, `overloaded`, ...
    pub code: String,
    pub message: String,
}

fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(SpiFailure { success: false, code: code.to_string(), message: message.into() })
}

/// A call of the marketplace's SPI, as a GET with the parameters in the query.
#[utoipa::path(get, path = "/aliyun/spi", tag = "marketplace", params(SpiParams),
    security(("spi_token" = [])),
    responses(
        (status = 200, description = "Done (or absorbed: a repeated or late call changes nothing)",
            body = inline(SpiAnswer)),
        (status = 302, description = "`action=verify`: a 免登 link; on to `/aliyun/sso` with the same query",
            headers(("Location" = String))),
        (status = 400, description = "Malformed or missing parameters", body = SpiFailure),
        (status = 403, description = "`missing_token`, `invalid_token` or `duplicate_parameter`: nothing was parsed or stored",
            body = SpiFailure),
        (status = 503, description = "`not_configured`, or a transient failure (`overloaded`, `storage_unavailable`): call again",
            body = SpiFailure, headers(("Retry-After" = u32, description = "seconds; on transient failures"))),
    ))]
pub async fn spi_get(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    spi(state, req, web::Bytes::new()).await
}

/// A call of the marketplace's SPI, as a POST with the parameters in a form body (and possibly the query).
#[utoipa::path(post, path = "/aliyun/spi", tag = "marketplace",
    request_body(content = SpiParams, content_type = "application/x-www-form-urlencoded"),
    security(("spi_token" = [])),
    responses(
        (status = 200, description = "Done (or absorbed: a repeated or late call changes nothing)",
            body = inline(SpiAnswer)),
        (status = 302, description = "`action=verify`: a 免登 link; on to `/aliyun/sso` with the same parameters",
            headers(("Location" = String))),
        (status = 400, description = "`invalid_body` (not UTF-8), malformed or missing parameters", body = SpiFailure),
        (status = 403, description = "`missing_token`, `invalid_token` or `duplicate_parameter`: nothing was parsed or stored",
            body = SpiFailure),
        (status = 413, description = "`payload_too_large`: the body is over 256 KiB; nothing was parsed or stored",
            body = SpiFailure),
        (status = 503, description = "`not_configured`, or a transient failure (`overloaded`, `storage_unavailable`): call again",
            body = SpiFailure, headers(("Retry-After" = u32, description = "seconds; on transient failures"))),
    ))]
pub async fn spi_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    match body {
        Ok(body) => spi(state, req, body).await,
        // The marketplace reads `code` like any other refusal; actix's own 413 is plain text without one.
        Err(e) if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE => {
            failure(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is over 256 KiB")
        }
        Err(e) => failure(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    }
}

/// createInstance's answer or `{"success": true}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SpiAnswer {
    Created(CreateInstanceReply),
    Done(SpiSuccess),
}

/// The SPI endpoint (GET query or POST form; both are accepted, as implementations differ).
async fn spi(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let mut raw = req.query_string().to_string();
    if !body.is_empty() {
        let Ok(form) = std::str::from_utf8(&body) else {
            return failure(StatusCode::BAD_REQUEST, "invalid_body", "the body is not UTF-8 form data");
        };
        if !raw.is_empty() {
            raw.push('&');
        }
        raw.push_str(form);
    }
    let params = match parse_form(&raw) {
        Ok(p) => p,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string()),
    };
    let Some(key) = state.config.isv_key.as_ref() else {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "not_configured", "the SPI key is not configured");
    };
    if let Err(e) = verify_spi_token(&params, key.expose()) {
        let action = params.iter().find(|(k, _)| k == "action").map(|(_, v)| v.as_str()).unwrap_or("?");
        tracing::warn!(action, reason = %e, "SPI call refused: bad token");
        let code = match e {
            TokenError::Missing => "missing_token",
            TokenError::Duplicate(_) => "duplicate_parameter",
            _ => "invalid_token",
        };
        return failure(StatusCode::FORBIDDEN, code, "the token does not match the parameters");
    }
    let request = match SpiRequest::parse(&params) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "SPI call refused: bad parameters");
            return failure(StatusCode::BAD_REQUEST, e.code(), e.to_string());
        }
    };
    if let SpiRequest::Verify { .. } = request {
        // The 免登 link pointed at the SPI address: hand the browser to the 免登 route.
        return HttpResponse::Found().insert_header(("Location", format!("/aliyun/sso?{raw}"))).finish();
    }
    handle(&state, request).await
}

async fn handle(state: &AppState, request: SpiRequest) -> HttpResponse {
    let action = request.action();
    match state.take_notice(request, &state.config.public_url).await {
        Ok(Some(reply)) => HttpResponse::Ok().json(reply),
        Ok(None) => HttpResponse::Ok().json(SpiSuccess { success: true }),
        Err(NoticeError::Invalid { code, message }) => failure(StatusCode::BAD_REQUEST, code, message),
        Err(NoticeError::Engine(e)) => {
            tracing::warn!(action, error = %e, "SPI call failed");
            let status = if e.is_transient() || matches!(e, crate::engine::Error::Stopped) {
                StatusCode::SERVICE_UNAVAILABLE
            } else if matches!(e, crate::engine::Error::InvalidInput(_)) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut r = failure(status, e.code(), "the call could not be processed; try again");
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from_static("1"),
                );
            }
            r
        }
    }
}
