//! The buyer's side of a marketplace subscription: the purchased list, one subscription, the organizations it
//! may be bound to (with the reason when not), and the binding itself ("processing your authorization").

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::accounts::{load_org, my_orgs, org_key};
use super::error::ApiError;
use super::session::CurrentUser;
use super::AppState;
use crate::accounts::User;
use crate::domain::ids::{BindingId, OrgId};
use crate::domain::subscription::{self, Subscription, SubscriptionEvent};
use crate::engine::{Cause, EntityKey, Input, Status};

fn sub_key(instance: &str) -> Result<EntityKey, ApiError> {
    EntityKey::new(subscription::KIND, instance)
        .map_err(|e| ApiError::bad_request("invalid_instance_id", e.to_string()))
}

/// The subscription, if the user may see it: they came through its 免登 link, or it pays for one of their
/// organizations. Anything else reads as "not found", so instance ids cannot be probed.
pub fn visible(state: &AppState, user: &User, instance: &str) -> Result<(String, Subscription), ApiError> {
    let not_found = || ApiError::not_found("no such subscription");
    let r = state.engine.record(&sub_key(instance)?)?.ok_or_else(not_found)?;
    let data: Subscription = serde_json::from_value(r.data)
        .map_err(|e| ApiError::from(crate::engine::Error::Internal(format!("subscription data: {e}"))))?;
    let granted = state.accounts.has_grant(&user.id, instance)?;
    let member_of_bound = match &data.org {
        Some(org) => state.accounts.orgs_of(&user.id)?.iter().any(|(o, _)| o == org),
        None => false,
    };
    if granted || member_of_bound {
        Ok((r.state, data))
    } else {
        Err(not_found())
    }
}

fn view(instance: &str, st: &str, d: &Subscription) -> Value {
    json!({
        "instance_id": instance,
        "status": st,
        "listed": st == "active",
        "aliyun_account_id": d.ali_uid,
        "sku_id": d.sku_id,
        "created_at": d.created_at,
        "activated_at": d.activated_at,
        "org_id": d.org,
        "binding": d.binding,
    })
}

async fn list(state: web::Data<AppState>, CurrentUser(user): CurrentUser) -> Result<HttpResponse, ApiError> {
    let mut items = Vec::new();
    for instance in state.accounts.granted(&user.id)? {
        if let Ok((st, d)) = visible(&state, &user, &instance) {
            // The purchased list shows active subscriptions only, as the marketplace console does.
            if st == "active" {
                items.push(view(&instance, &st, &d));
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "subscriptions": items })))
}

async fn show(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let instance = path.into_inner();
    let (st, d) = visible(&state, &user, &instance)?;
    Ok(HttpResponse::Ok().json(view(&instance, &st, &d)))
}

/// Why an organization cannot take the subscription, or `None` if it can.
fn reason(role: crate::domain::ids::Role, org_state: &str) -> Option<&'static str> {
    if !role.may_manage_billing() {
        Some("insufficient_permission")
    } else if org_state == "bound" {
        Some("org_already_bound")
    } else {
        None
    }
}

/// The binding options as the binding page shows them.
pub fn options(state: &AppState, user: &User, instance: &str) -> Result<Value, ApiError> {
    let (st, d) = visible(state, user, instance)?;
    let orgs: Vec<Value> = my_orgs(state, user)?
        .into_iter()
        .map(|(org, role, org_state, data)| {
            let why = reason(role, &org_state);
            json!({ "org_id": org, "name": data.name, "role": role, "bindable": why.is_none(), "reason": why })
        })
        .collect();
    let sub_reason = if d.org.is_some() {
        Some("subscription_already_bound")
    } else if st != "active" {
        Some("subscription_not_active")
    } else if orgs.is_empty() {
        Some("no_organizations")
    } else {
        None
    };
    let any = orgs.iter().any(|o| o["bindable"] == true);
    Ok(json!({
        "instance_id": instance,
        "subscription_status": st,
        "orgs": orgs,
        "can_confirm": sub_reason.is_none() && any,
        "reason": sub_reason,
        "binding": d.binding,
    }))
}

async fn binding_options(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(options(&state, &user, &path.into_inner())?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    pub org_id: String,
}

/// Asks the subscription to bind to the organization; the organization decides, asynchronously.
pub async fn bind(state: &AppState, user: &User, instance: &str, org: &str) -> Result<(BindingId, Value), ApiError> {
    let org = OrgId::parse(org.to_string())?;
    visible(state, user, instance)?;
    let (org_state, data) = load_org(state, &org)?.ok_or_else(|| ApiError::not_found("no such organization"))?;
    let role = data.role_of(&user.id).ok_or_else(|| ApiError::not_found("no such organization"))?;
    match reason(role, &org_state) {
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
        _ => {
            let code = o.code.clone().unwrap_or_else(|| "subscription_not_active".into());
            let status = if code == "subscription_already_bound" {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Err(ApiError::new(status, &code, o.message.unwrap_or_default()))
        }
    }
}

async fn post_binding(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
    body: web::Json<BindBody>,
) -> Result<HttpResponse, ApiError> {
    let instance = path.into_inner();
    let (binding_id, _) = bind(&state, &user, &instance, &body.org_id).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "binding_id": binding_id,
        "status": "pending",
        "message": "正在处理您的授权请求 / processing your authorization",
    })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/marketplace/aliyun/subscriptions", web::get().to(list))
        .route("/marketplace/aliyun/subscriptions/{instance_id}", web::get().to(show))
        .route("/marketplace/aliyun/subscriptions/{instance_id}/binding-options", web::get().to(binding_options))
        .route("/marketplace/aliyun/subscriptions/{instance_id}/binding", web::post().to(post_binding));
}
