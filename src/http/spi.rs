//! `GET`/`POST /aliyun/spi`: the marketplace's calls. Token first (nothing is parsed or stored for a forged
//! call), then parsing into a typed request, then one input to the subscription's workflow.
//!
//! Answers follow the marketplace's conventions: createInstance `{"instanceId", "appInfo"}`, every other action
//! `{"success": true}`, failures `{"success": false, "message"}` with a stable `code`. A temporary failure
//! (overload, storage) is a 503 so that the marketplace calls again; the input ids make the retry harmless.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::aliyun::encoding::parse_form;
use crate::aliyun::spi::{beijing_to_utc, SpiRequest};
use crate::aliyun::token::{verify_spi_token, TokenError};
use crate::domain::subscription::{SubscriptionEvent, KIND};
use crate::engine::{Cause, EntityKey, Input, Status};

fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "success": false, "code": code, "message": message.into() }))
}

/// The SPI endpoint (GET query or POST form; both are accepted, as implementations differ).
pub async fn spi(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
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
    let Some(instance) = instance_of(&request) else {
        return failure(StatusCode::BAD_REQUEST, "invalid_parameter", "no instance id");
    };
    let key = match EntityKey::new(KIND, &instance) {
        Ok(k) => k,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string()),
    };
    let public = state.config.public_url.trim_end_matches('/');
    // Input ids: createInstance and orderPay are idempotent by their own keys; the other actions are absorbed
    // by the state they find (a repeated expire finds `expired`), so each call is an input of its own.
    let (input_id, event) = match request {
        SpiRequest::CreateInstance {
            ali_uid,
            order_biz_id,
            order_id,
            product_code,
            sku_id,
            trial,
            expired_on,
            extra,
        } => (
            "spi:createInstance".to_string(),
            SubscriptionEvent::Create {
                ali_uid,
                order_biz_id,
                order_id,
                product_code,
                sku_id,
                trial,
                expired_on: expired_on.map(beijing_to_utc),
                extra,
                auth_url: format!("{public}/aliyun/sso"),
                front_end_url: public.to_string(),
            },
        ),
        SpiRequest::OrderPay { request_id, order_id, .. } => {
            (format!("spi:orderPay:{request_id}"), SubscriptionEvent::OrderPaid { request_id, order_id })
        }
        SpiRequest::ExpiredInstance { .. } => (fresh("expiredInstance"), SubscriptionEvent::Expire),
        SpiRequest::ResumeInstance { sku_id, .. } => (fresh("resumeInstance"), SubscriptionEvent::Resume { sku_id }),
        SpiRequest::ReleaseInstance { is_refund, order_id, .. } => {
            (fresh("releaseInstance"), SubscriptionEvent::Release { is_refund, order_id })
        }
        SpiRequest::RenewInstance { order_id, expired_on, .. } => (
            format!("spi:renewInstance:{order_id}"),
            SubscriptionEvent::Renew { order_id, expired_on: beijing_to_utc(expired_on) },
        ),
        SpiRequest::UpgradeInstance { sku_id, order_id, extra, .. } => {
            (fresh("upgradeInstance"), SubscriptionEvent::Upgrade { sku_id, order_id, extra })
        }
        SpiRequest::Verify { .. } => return failure(StatusCode::BAD_REQUEST, "invalid_action", "verify is 免登"),
    };
    let body = match serde_json::to_value(&event) {
        Ok(b) => b,
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()),
    };
    let input = Input::domain(input_id, body, Cause::Spi { action: action.to_string() });
    match state.engine.send(key.clone(), input).await {
        Ok(outcome) => {
            if outcome.status == Status::Ignored && outcome.state == "new" {
                tracing::info!(action, instance = %instance, "SPI call for an unknown instance: nothing to do");
            }
            if action == "createInstance" {
                if outcome.repeated {
                    tracing::info!(instance = %instance, "createInstance repeated: same answer");
                }
                if outcome.reply.is_null() {
                    // Known already under another input (cannot happen with one input id per instance).
                    return match state.engine.record(&key) {
                        Ok(Some(r)) => HttpResponse::Ok().json(r.data.get("create_reply").cloned().unwrap_or_default()),
                        _ => failure(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again"),
                    };
                }
                return HttpResponse::Ok().json(outcome.reply);
            }
            HttpResponse::Ok().json(json!({ "success": true }))
        }
        Err(e) => {
            tracing::warn!(action, instance = %instance, error = %e, "SPI call failed");
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

fn fresh(action: &str) -> String {
    format!("spi:{action}:{}", uuid::Uuid::new_v4())
}

fn instance_of(r: &SpiRequest) -> Option<String> {
    match r {
        SpiRequest::CreateInstance { order_biz_id, .. } | SpiRequest::OrderPay { order_biz_id, .. } => {
            Some(order_biz_id.to_string())
        }
        other => other.instance_id().map(|i| i.to_string()),
    }
}
