//! The buyer's side of a marketplace subscription: the purchased list, one subscription, the organizations it
//! may be bound to (with the reason when not), and the binding itself ("processing your authorization").

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::error::{PayloadTooLarge, Unauthorized, Unavailable};
use super::session::CurrentUser;
use super::AppState;
pub use crate::app::subscriptions::{view, BindingOption, BindingOptions, SubscriptionView};
use crate::domain::ids::{BindingId, OrgId};

/// The buyer's subscriptions' part of the API description.
#[derive(OpenApi)]
#[openapi(paths(list, show, binding_options, post_binding))]
pub struct MarketplaceApi;

/// The purchased list.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionView>,
}

/// The accepted binding request.
#[derive(Serialize, ToSchema)]
pub struct BindingRequested {
    pub binding_id: BindingId,
    /// Always `pending`: the organization decides; follow it on the subscription's `binding`.
    pub status: &'static str,
    pub message: &'static str,
}

/// The purchased list: the active subscriptions the caller came to through 免登.
#[utoipa::path(get, path = "/api/v1/marketplace/aliyun/subscriptions", tag = "subscriptions",
    security(("session_token" = [])),
    responses(
        (status = 200, body = SubscriptionList),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ))]
async fn list(state: web::Data<AppState>, CurrentUser(user): CurrentUser) -> Result<HttpResponse, ApiError> {
    let subscriptions = state.purchased(&user).await?.iter().map(|(i, v)| view(i, v.state, &v.sub)).collect();
    Ok(HttpResponse::Ok().json(SubscriptionList { subscriptions }))
}

/// One subscription, if the caller came through its 免登 link or belongs to the organization it pays for.
#[utoipa::path(get, path = "/api/v1/marketplace/aliyun/subscriptions/{instance_id}", tag = "subscriptions",
    params(("instance_id" = String, Path, description = "the marketplace instance id")),
    security(("session_token" = [])),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 400, body = ErrorBody, description = "`invalid_instance_id`"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "`not_found`: no such subscription, or not the caller's to see"),
        (status = 503, response = Unavailable),
    ))]
async fn show(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let instance = path.into_inner();
    let v = state.visible_subscription(&user, &instance).await?;
    Ok(HttpResponse::Ok().json(view(&instance, v.state, &v.sub)))
}

/// The caller's organizations the subscription may be bound to, each with the reason when not.
#[utoipa::path(get, path = "/api/v1/marketplace/aliyun/subscriptions/{instance_id}/binding-options",
    tag = "subscriptions",
    params(("instance_id" = String, Path, description = "the marketplace instance id")),
    security(("session_token" = [])),
    responses(
        (status = 200, body = BindingOptions),
        (status = 400, body = ErrorBody, description = "`invalid_instance_id`"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "`not_found`: no such subscription, or not the caller's to see"),
        (status = 503, response = Unavailable),
    ))]
async fn binding_options(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.binding_options(&user, &path.into_inner()).await?))
}

/// The organization to bind the subscription to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    /// `org_<32 hex>`.
    #[schema(pattern = "^org_[A-Za-z0-9_-]{1,60}$")]
    pub org_id: String,
}

/// Asks to bind the subscription to the organization (Owners and Billing Admins). The organization decides
/// asynchronously: follow the subscription's `binding` ("processing your authorization").
#[utoipa::path(post, path = "/api/v1/marketplace/aliyun/subscriptions/{instance_id}/binding", tag = "subscriptions",
    params(("instance_id" = String, Path, description = "the marketplace instance id")),
    request_body = BindBody,
    security(("session_token" = [])),
    responses(
        (status = 202, body = BindingRequested),
        (status = 400, body = ErrorBody, description = "`invalid_json`, `invalid_id` or `invalid_instance_id`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`insufficient_permission`: a Member of the organization"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such subscription or organization, or not the caller's"),
        (status = 409, body = ErrorBody,
            description = "`org_already_bound`, `subscription_already_bound` or `paused`"),
        (status = 413, response = PayloadTooLarge),
        (status = 422, body = ErrorBody, description = "`subscription_not_active` (still opening, or closed), `invalid_input`"),
        (status = 503, response = Unavailable),
    ))]
async fn post_binding(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
    body: web::Json<BindBody>,
) -> Result<HttpResponse, ApiError> {
    let instance = path.into_inner();
    let org = OrgId::parse(body.into_inner().org_id)?;
    let binding_id = state.bind(&user, &instance, &org).await?;
    Ok(HttpResponse::Accepted().json(BindingRequested {
        binding_id,
        status: "pending",
        message: "正在处理您的授权请求 / processing your authorization",
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/marketplace/aliyun/subscriptions", web::get().to(list))
        .route("/marketplace/aliyun/subscriptions/{instance_id}", web::get().to(show))
        .route("/marketplace/aliyun/subscriptions/{instance_id}/binding-options", web::get().to(binding_options))
        .route("/marketplace/aliyun/subscriptions/{instance_id}/binding", web::post().to(post_binding));
}
