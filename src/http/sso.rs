//! `GET /aliyun/sso`: the 免登 hand-off from the marketplace console. The link is checked (token, time window,
//! never used before); then a bound subscription leads to its organization's billing page and an unbound one to
//! the binding page, through login or registration when the browser has no session.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::TimeDelta;

use super::session::{session_token, SSO_COOKIE};
use super::AppState;
use crate::aliyun::encoding::parse_form;
use crate::aliyun::spi::SpiRequest;
use crate::aliyun::token::{verify_spi_token, SsoLink};
use crate::app::sso::{HandOff, Refusal};

/// A page that says what went wrong and what to do, in Chinese first and English second.
fn refusal(status: StatusCode, code: &str, zh: &str, en: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>Zilliz Cloud · 免登</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main class=\"card\" data-code=\"{code}\">\
         <h1>无法完成免登</h1><p>{zh}</p><p lang=\"en\">{en}</p>\
         <p><a href=\"https://market.console.aliyun.com/\">阿里云云市场控制台 / Marketplace console</a></p></main></body></html>"
    );
    HttpResponse::build(status).content_type("text/html; charset=utf-8").body(html)
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::Found().insert_header(("Location", to.to_string())).finish()
}

/// The 免登 hand-off's part of the API description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(sso))]
pub struct SsoApi;

/// The marketplace's 免登 link: checked (token, time window, single use), then on to the billing page of a bound
/// subscription or the binding page of an unbound one, through login when the browser has no session. Refusals
/// are pages that say what to do, in Chinese and English.
#[utoipa::path(get, path = "/aliyun/sso", tag = "marketplace",
    params(
        ("action" = Option<String>, Query, description = "`verify`"),
        ("instanceId" = Option<String>, Query, description = "the subscription"),
        ("timeStamp" = Option<String>, Query,
            description = "when the link was made, Beijing time `yyyy-MM-dd HH:mm:ss`; must be within `MARKETFLOW_SSO_WINDOW` of now"),
        ("token" = Option<String>, Query, description = "MD5 over the sorted parameters and the ISV key"),
    ),
    security(("spi_token" = [])),
    responses(
        (status = 302, description = "Accepted: to the billing page, the binding page, or `/login?next=...` (with the `mf_sso` cookie holding the grant)",
            headers(("Location" = String), ("Set-Cookie" = String, description = "`mf_sso`, without a session"))),
        (status = 400, description = "`invalid_link`: malformed", content_type = "text/html"),
        (status = 403, description = "`invalid_token`, `link_expired` or `link_used`", content_type = "text/html"),
        (status = 404, description = "`subscription_not_found`: not opened (yet)", content_type = "text/html"),
        (status = 410, description = "`subscription_released`", content_type = "text/html"),
        (status = 503, description = "`not_configured`, or `retry`: the store could not record the use", content_type = "text/html"),
    ))]
pub async fn sso(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let Ok(params) = parse_form(req.query_string()) else {
        return refusal(StatusCode::BAD_REQUEST, "invalid_link", "链接格式不正确。", "The link is malformed.");
    };
    let Some(key) = state.config.isv_key.as_ref() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "服务尚未配置。",
            "The service is not configured.",
        );
    };
    let token = match verify_spi_token(&params, key.expose()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(reason = %e, "免登 refused: bad token");
            return refusal(
                StatusCode::FORBIDDEN,
                "invalid_token",
                "链接无效。请回到阿里云云市场控制台的「已购买的服务」，重新点击「免登」。",
                "This link is not valid. Go back to “Purchased services” in the Alibaba Cloud Marketplace console and click 免登 again.",
            );
        }
    };
    let (instance, time_stamp) = match SpiRequest::parse(&params) {
        Ok(SpiRequest::Verify { instance_id, time_stamp }) => (instance_id, time_stamp),
        _ => return refusal(StatusCode::BAD_REQUEST, "invalid_link", "链接格式不正确。", "The link is malformed."),
    };
    let window = TimeDelta::from_std(state.config.sso_window).unwrap_or(TimeDelta::minutes(10));
    let link = SsoLink { instance_id: instance, time_stamp, token };
    let user = match session_token(&req) {
        Some(t) => state.accounts.authenticate(&t).await.ok(),
        None => None,
    };
    match state.sso_hand_off(link, window, user.as_ref()).await {
        Ok(HandOff::Enter { target }) => redirect(&target),
        Ok(HandOff::LogIn { nonce, target }) => {
            let cookie = Cookie::build(SSO_COOKIE, nonce)
                .path("/")
                .http_only(true)
                .same_site(SameSite::Lax)
                .max_age(actix_web::cookie::time::Duration::hours(1))
                .finish();
            let next = percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC);
            HttpResponse::Found().cookie(cookie).insert_header(("Location", format!("/login?next={next}"))).finish()
        }
        Err(r) => refused(r),
    }
}

/// A refused hand-off in the buyer's words: what happened and what to do.
fn refused(r: Refusal) -> HttpResponse {
    let (status, zh, en) = match r {
        Refusal::Expired => (
            StatusCode::FORBIDDEN,
            "链接已过期。请回到阿里云云市场控制台，重新点击「免登」。",
            "This link has expired. Go back to the Marketplace console and click 免登 again.",
        ),
        Refusal::Used => (
            StatusCode::FORBIDDEN,
            "此链接已使用过。请回到阿里云云市场控制台，重新点击「免登」。",
            "This link was used already. Go back to the Marketplace console and click 免登 again.",
        ),
        Refusal::NotFound => (
            StatusCode::NOT_FOUND,
            "未找到该订阅。开通可能仍在进行中（约 1-5 分钟），请稍后重新点击「免登」。",
            "This subscription is not known yet. Activation takes 1–5 minutes; click 免登 again shortly.",
        ),
        Refusal::Released => (
            StatusCode::GONE,
            "该订阅已关闭。如需继续使用，请在云市场重新订阅。",
            "This subscription was closed. Subscribe again on the Marketplace to continue.",
        ),
        Refusal::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "请稍后回到阿里云云市场控制台，重新点击「免登」。",
            "Please go back to the Marketplace console shortly and click 免登 again.",
        ),
    };
    refusal(status, r.code(), zh, en)
}
