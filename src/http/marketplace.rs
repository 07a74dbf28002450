//! The buyer's side of a marketplace subscription: the purchased list, one subscription, the organizations it
//! may be bound to (with the reason when not), and the binding itself ("processing your authorization").

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use super::accounts::{load_org, my_orgs, org_key};
use super::error::{ApiError, ErrorBody};
use super::error::{PayloadTooLarge, Unauthorized, Unavailable};
use super::session::CurrentUser;
use super::AppState;
use crate::aliyun::spi::{AliUid, SkuId};
use crate::app::accounts::User;
use crate::domain::ids::{BindingId, Name, OrgId, Role};
use crate::domain::subscription::{self, Binding, Subscription, SubscriptionEvent};
use crate::domain::{binding, organization};
use crate::engine::{Cause, EntityKey, Input, Status};

/// The buyer's subscriptions' part of the API description.
#[derive(OpenApi)]
#[openapi(paths(list, show, binding_options, post_binding))]
pub struct MarketplaceApi;

/// A marketplace subscription as its buyer sees it.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionView {
    pub instance_id: String,
    /// The workflow state: `opening`, `active`, `activation_failed`, `expired`, `released`, ...
    pub status: String,
    /// Shown in the purchased list (active).
    pub listed: bool,
    pub aliyun_account_id: Option<AliUid>,
    pub sku_id: Option<SkuId>,
    pub created_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    /// The organization it pays for, once bound.
    pub org_id: Option<OrgId>,
    /// The last binding attempt.
    pub binding: Option<Binding>,
}

/// The purchased list.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionView>,
}

/// Which of the caller's organizations the subscription may be bound to, and why not.
#[derive(Serialize, ToSchema)]
pub struct BindingOptions {
    pub instance_id: String,
    pub subscription_status: String,
    pub orgs: Vec<BindingOption>,
    /// Whether "confirm binding" (确认绑定) is possible.
    pub can_confirm: bool,
    /// Why not, for the subscription as a whole: `subscription_already_bound`, `subscription_not_active` or
    /// `no_organizations`.
    pub reason: Option<&'static str>,
    pub binding: Option<Binding>,
}

/// One of the caller's organizations on the binding page.
#[derive(Serialize, ToSchema)]
pub struct BindingOption {
    pub org_id: OrgId,
    pub name: Option<Name>,
    pub role: Role,
    pub bindable: bool,
    /// Why not: `insufficient_permission` or `org_already_bound`.
    pub reason: Option<&'static str>,
}

/// The accepted binding request.
#[derive(Serialize, ToSchema)]
pub struct BindingRequested {
    pub binding_id: BindingId,
    /// Always `pending`: the organization decides; follow it on the subscription's `binding`.
    pub status: &'static str,
    pub message: &'static str,
}

fn sub_key(instance: &str) -> Result<EntityKey, ApiError> {
    EntityKey::new(subscription::KIND, instance)
        .map_err(|e| ApiError::bad_request("invalid_instance_id", e.to_string()))
}

/// The subscription, if the user may see it: they came through its 免登 link, or it pays for one of their
/// organizations. Anything else reads as "not found", so instance ids cannot be probed.
pub fn visible(state: &AppState, user: &User, instance: &str) -> Result<(subscription::State, Subscription), ApiError> {
    let not_found = || ApiError::not_found("no such subscription");
    let r = state.engine.record(&sub_key(instance)?)?.ok_or_else(not_found)?;
    let internal = |m: String| ApiError::from(crate::engine::Error::Internal(m));
    let data: Subscription = serde_json::from_value(r.data).map_err(|e| internal(format!("subscription data: {e}")))?;
    let st =
        subscription::State::parse(&r.state).ok_or_else(|| internal(format!("subscription state `{}`", r.state)))?;
    let granted = state.accounts.has_grant(&user.id, instance)?;
    let member_of_bound = match &data.org {
        Some(org) => state.accounts.orgs_of(&user.id)?.iter().any(|(o, _)| o == org),
        None => false,
    };
    if granted || member_of_bound {
        Ok((st, data))
    } else {
        Err(not_found())
    }
}

pub fn view(instance: &str, st: subscription::State, d: &Subscription) -> SubscriptionView {
    SubscriptionView {
        instance_id: instance.to_string(),
        status: st.as_str().to_string(),
        listed: st.listed(),
        aliyun_account_id: d.ali_uid.clone(),
        sku_id: d.sku_id.clone(),
        created_at: d.created_at,
        activated_at: d.activated_at,
        org_id: d.org.clone(),
        binding: d.binding.clone(),
    }
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
    let mut items = Vec::new();
    for instance in state.accounts.granted(&user.id)? {
        if let Ok((st, d)) = visible(&state, &user, &instance) {
            // The purchased list shows active subscriptions only, as the marketplace console does.
            if st.listed() {
                items.push(view(&instance, st, &d));
            }
        }
    }
    Ok(HttpResponse::Ok().json(SubscriptionList { subscriptions: items }))
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
    let (st, d) = visible(&state, &user, &instance)?;
    Ok(HttpResponse::Ok().json(view(&instance, st, &d)))
}

/// Why an organization cannot take the subscription, or `None` if it can.
fn reason(role: crate::domain::ids::Role, org_state: organization::State) -> Option<&'static str> {
    binding::organization_takes(Some(role), org_state).err().map(binding::Refusal::code)
}

/// The binding options: what the API answers and the binding page shows.
pub fn binding_options_of(state: &AppState, user: &User, instance: &str) -> Result<BindingOptions, ApiError> {
    let (st, d) = visible(state, user, instance)?;
    let orgs: Vec<BindingOption> = my_orgs(state, user)?
        .into_iter()
        .map(|(org_id, role, org_state, data)| {
            let why = reason(role, org_state);
            BindingOption { org_id, name: data.name, role, bindable: why.is_none(), reason: why }
        })
        .collect();
    let sub_reason = match binding::subscription_can_be_bound(st, d.taken()) {
        Err(r) => Some(r.code()),
        Ok(()) if orgs.is_empty() => Some("no_organizations"),
        Ok(()) => None,
    };
    let any = orgs.iter().any(|o| o.bindable);
    Ok(BindingOptions {
        instance_id: instance.to_string(),
        subscription_status: st.to_string(),
        can_confirm: sub_reason.is_none() && any,
        orgs,
        reason: sub_reason,
        binding: d.binding,
    })
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
    Ok(HttpResponse::Ok().json(binding_options_of(&state, &user, &path.into_inner())?))
}

/// The organization to bind the subscription to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    /// `org_<32 hex>`.
    #[schema(pattern = "^org_[A-Za-z0-9_-]{1,60}$")]
    pub org_id: String,
}

/// Asks the subscription to bind to the organization; the organization decides, asynchronously.
pub async fn bind(state: &AppState, user: &User, instance: &str, org: &str) -> Result<(BindingId, Value), ApiError> {
    let org = OrgId::parse(org.to_string())?;
    visible(state, user, instance)?;
    let (org_state, data) = load_org(state, &org)?.ok_or_else(|| ApiError::not_found("no such organization"))?;
    let role = data.role_of(&user.id).ok_or_else(|| ApiError::not_found("no such organization"))?;
    match reason(role, org_state) {
        Some("insufficient_permission") => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_permission",
                "only an Owner or a Billing Admin may bind (权限不足)",
            ))
        }
        Some(code) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                code,
                "the organization has a marketplace subscription bound already (已绑定云市场订阅)",
            ))
        }
        None => {}
    }
    let _ = org_key(&org)?;
    let binding_id = BindingId::generate();
    let body = serde_json::to_value(SubscriptionEvent::Bind {
        binding_id: binding_id.clone(),
        org_id: org,
        user_id: user.id.clone(),
    })
    .map_err(|e| ApiError::from(crate::engine::Error::Internal(e.to_string())))?;
    let o = state
        .engine
        .send(
            sub_key(instance)?,
            Input::domain(format!("bind:{binding_id}"), body, Cause::Api { principal: user.id.to_string() }),
        )
        .await?;
    match o.status {
        Status::Accepted => Ok((binding_id, o.reply)),
        _ => Err(ApiError::refused(&o, "subscription_not_active")),
    }
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
    let (binding_id, _) = bind(&state, &user, &instance, &body.org_id).await?;
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
