//! Accounts, sessions, organizations, invitations and the billing overview.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Operator;
use super::error::ApiError;
use super::session::{session_token, CurrentUser, SESSION_COOKIE, SSO_COOKIE};
use super::AppState;
use crate::accounts::User;
use crate::domain::ids::{Email, InvitationId, Name, OrgId, Password, Role};
use crate::domain::organization::{self, Organization, OrganizationEvent};
use crate::engine::{Cause, EntityKey, Input, Status};
use crate::store::Table;

/// The Aliyun bill (费用账单) the billing overview links to.
pub const ALIYUN_BILL_URL: &str = "https://usercenter2.aliyun.com/finance/expense-report/expense-detail";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    email: String,
    password: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

pub fn org_key(org: &OrgId) -> Result<EntityKey, ApiError> {
    EntityKey::new(organization::KIND, org.as_str()).map_err(|e| ApiError::bad_request("invalid_org_id", e.to_string()))
}

/// An organization's state and data, if it exists.
pub fn load_org(state: &AppState, org: &OrgId) -> Result<Option<(String, Organization)>, ApiError> {
    let Some(r) = state.engine.record(&org_key(org)?)? else { return Ok(None) };
    let data: Organization = serde_json::from_value(r.data)
        .map_err(|e| ApiError::from(crate::engine::Error::Internal(format!("organization data: {e}"))))?;
    Ok(Some((r.state, data)))
}

/// Billing status as users read it: frozen or active.
pub fn billing_status(state: &str) -> &'static str {
    if state == "frozen" {
        "frozen"
    } else {
        "active"
    }
}

/// Gives the browser's pending 免登 grant (cookie) to the user who just logged in or registered.
async fn redeem_sso_cookie(state: &AppState, req: &HttpRequest, user: &User) -> Option<String> {
    let nonce = req.cookie(SSO_COOKIE)?.value().to_string();
    state.accounts.redeem_pending_grant(&nonce, &user.id).await.ok().flatten()
}

fn session_cookie(token: &str) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token.to_string()).path("/").http_only(true).same_site(SameSite::Lax).finish()
}

fn cleared(name: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build(name, "").path("/").finish();
    c.make_removal();
    c
}

async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let email = Email::parse(b.email)?;
    let name = Name::parse(b.name)?;
    let password = Password::parse(b.password)?;
    let user = state.accounts.register(email.clone(), password, name).await?;
    tracing::info!(user = %user.id, "account registered");
    let instance = redeem_sso_cookie(&state, &req, &user).await;
    Ok(HttpResponse::Created()
        .cookie(cleared(SSO_COOKIE))
        .json(json!({ "user_id": user.id, "org_id": user.home_org, "granted_instance": instance })))
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let Ok(email) = Email::parse(b.email) else {
        return Err(crate::accounts::Error::InvalidCredentials.into());
    };
    let Ok(password) = Password::parse(b.password) else {
        return Err(crate::accounts::Error::InvalidCredentials.into());
    };
    let (token, expires_at, user) = state.accounts.login(&email, password).await?;
    let instance = redeem_sso_cookie(&state, &req, &user).await;
    Ok(HttpResponse::Created()
        .cookie(session_cookie(&token))
        .cookie(cleared(SSO_COOKIE))
        .json(json!({ "token": token, "expires_at": expires_at, "user_id": user.id, "granted_instance": instance })))
}

async fn logout(state: web::Data<AppState>, req: HttpRequest, _u: CurrentUser) -> Result<HttpResponse, ApiError> {
    if let Some(t) = session_token(&req) {
        state.accounts.logout(&t).await?;
    }
    Ok(HttpResponse::NoContent().cookie(cleared(SESSION_COOKIE)).finish())
}

async fn me(CurrentUser(user): CurrentUser) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "user_id": user.id, "email": user.email, "name": user.name }))
}

/// The caller's organizations with their role and billing status.
pub fn my_orgs(state: &AppState, user: &User) -> Result<Vec<(OrgId, Role, String, Organization)>, ApiError> {
    let mut out = Vec::new();
    for (org, role) in state.accounts.orgs_of(&user.id)? {
        if let Some((st, data)) = load_org(state, &org)? {
            out.push((org, role, st, data));
        }
    }
    Ok(out)
}

async fn orgs(state: web::Data<AppState>, CurrentUser(user): CurrentUser) -> Result<HttpResponse, ApiError> {
    let list: Vec<Value> = my_orgs(&state, &user)?
        .into_iter()
        .map(|(org, role, st, data)| {
            json!({
                "org_id": org, "name": data.name, "role": role, "status": billing_status(&st),
                "frozen_reason": data.frozen_reason,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "orgs": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: String,
}

/// The caller's role in `org`; not a member reads as "no such organization", so ids do not leak.
fn role_in(state: &AppState, user: &User, org: &OrgId) -> Result<(Role, String, Organization), ApiError> {
    let (st, data) = load_org(state, org)?.ok_or_else(|| ApiError::not_found("no such organization"))?;
    let role = data.role_of(&user.id).ok_or_else(|| ApiError::not_found("no such organization"))?;
    Ok((role, st, data))
}

fn rejected(o: &crate::engine::Outcome) -> ApiError {
    let code = o.code.clone().unwrap_or_else(|| "rejected".into());
    let status = match code.as_str() {
        "insufficient_permission" => StatusCode::FORBIDDEN,
        "invitation_not_found" => StatusCode::NOT_FOUND,
        "already_member" | "invitation_expired" | "too_many_members" | "last_owner" => StatusCode::CONFLICT,
        "invitation_for_another_user" => StatusCode::FORBIDDEN,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, &code, o.message.clone().unwrap_or_default())
}

async fn invite(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
    body: web::Json<InviteBody>,
) -> Result<HttpResponse, ApiError> {
    let org = OrgId::parse(path.into_inner())?;
    let b = body.into_inner();
    let email = Email::parse(b.email)?;
    let role = Role::parse(&b.role)?;
    let (my_role, _, _) = role_in(&state, &user, &org)?;
    if my_role != Role::Owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_permission",
            "only an Owner invites members (权限不足)",
        ));
    }
    let invitation_id = InvitationId::generate();
    let body = serde_json::to_value(OrganizationEvent::Invite {
        invitation_id: invitation_id.clone(),
        email,
        role,
        by: user.id.clone(),
    })
    .map_err(|e| ApiError::from(crate::engine::Error::Internal(e.to_string())))?;
    let o = state
        .engine
        .send(
            org_key(&org)?,
            Input::domain(format!("invite:{invitation_id}"), body, Cause::Api { principal: user.id.to_string() }),
        )
        .await?;
    if o.status != Status::Accepted {
        return Err(rejected(&o));
    }
    Ok(HttpResponse::Created().json(o.reply))
}

async fn accept(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let invitation = InvitationId::parse(path.into_inner())?;
    let key = crate::domain::organization::invitation_index_key(&invitation);
    let org = state
        .engine
        .store()
        .get(Table::Index, key.as_bytes())
        .map_err(crate::engine::Error::from)?
        .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
        .and_then(|v| v.get("org_id").and_then(|o| o.as_str()).map(String::from))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "invitation_not_found", "no such invitation"))?;
    let org = OrgId::parse(org)?;
    let body = serde_json::to_value(OrganizationEvent::AcceptInvitation {
        invitation_id: invitation.clone(),
        user_id: user.id.clone(),
        email: user.email.clone(),
    })
    .map_err(|e| ApiError::from(crate::engine::Error::Internal(e.to_string())))?;
    let o = state
        .engine
        .send(
            org_key(&org)?,
            Input::domain(
                format!("accept:{invitation}:{}", user.id),
                body,
                Cause::Api { principal: user.id.to_string() },
            ),
        )
        .await?;
    if o.status != Status::Accepted {
        return Err(rejected(&o));
    }
    Ok(HttpResponse::Ok().json(o.reply))
}

async fn leave(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = OrgId::parse(path.into_inner())?;
    role_in(&state, &user, &org)?;
    let body = serde_json::to_value(OrganizationEvent::Leave { user_id: user.id.clone() })
        .map_err(|e| ApiError::from(crate::engine::Error::Internal(e.to_string())))?;
    let input =
        Input::domain(format!("leave:{}", uuid::Uuid::new_v4()), body, Cause::Api { principal: user.id.to_string() });
    let o = state.engine.send(org_key(&org)?, input).await?;
    if o.status != Status::Accepted {
        return Err(rejected(&o));
    }
    Ok(HttpResponse::Ok().json(o.reply))
}

/// The billing overview of an organization (JSON); the page renders the same.
pub fn billing_view(org: &OrgId, st: &str, data: &Organization) -> Value {
    let channel = data.channel.as_ref().filter(|c| !c.suspended).map(|c| {
        json!({
            "kind": "aliyun_marketplace",
            "label": "云市场扣费渠道",
            "label_en": "Alibaba Cloud Marketplace",
            "instance_id": c.instance_id,
            "aliyun_account_id": c.aliyun_account_id,
            "bound_at": c.bound_at,
            "bill_url": ALIYUN_BILL_URL,
        })
    });
    let recovery = match data.frozen_reason {
        Some(organization::FrozenReason::Arrears) => Some(
            "阿里云云市场余额不足，订阅已被关闭。请在阿里云充值后重新开通云市场扣费渠道（订阅并免登绑定）。\
             / The marketplace closed the subscription for arrears: top up your Aliyun account, then subscribe again and bind it.",
        ),
        Some(organization::FrozenReason::NoPaymentMethod) => Some(
            "没有可用的支付方式。请在阿里云云市场重新订阅 Zilliz Cloud 并绑定到本组织。\
             / No payment method: subscribe on the Alibaba Cloud Marketplace again and bind the subscription to this organization.",
        ),
        Some(organization::FrozenReason::Operator) => {
            Some("组织已被冻结，请提交工单联系我们。/ Frozen by support: please open a ticket.")
        }
        None => None,
    };
    json!({
        "org_id": org,
        "name": data.name,
        "status": billing_status(st),
        "frozen_reason": data.frozen_reason,
        "payment_channel": channel,
        "switch_deadline": data.switch_deadline,
        "recovery": recovery,
        "history": data.history,
    })
}

async fn billing(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = OrgId::parse(path.into_inner())?;
    let (role, st, data) = role_in(&state, &user, &org)?;
    if !role.may_manage_billing() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_permission",
            "only an Owner or a Billing Admin sees billing (权限不足)",
        ));
    }
    Ok(HttpResponse::Ok().json(billing_view(&org, &st, &data)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsOrgBody {
    name: String,
    owner_email: String,
}

pub async fn ops_create_org(
    state: web::Data<AppState>,
    op: Operator,
    body: web::Json<OpsOrgBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let name = Name::parse(b.name)?;
    let email = Email::parse(b.owner_email)?;
    let owner = state
        .accounts
        .user_by_email(&email)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no user with this e-mail"))?;
    let org = OrgId::generate();
    state.accounts.create_org(&org, name, &owner, &format!("create-by:{}", op.name)).await?;
    tracing::info!(org = %org, operator = %op.name, "organization created by an operator");
    Ok(HttpResponse::Created().json(json!({ "org_id": org, "owner": owner.id })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/accounts", web::post().to(register))
        .route("/sessions", web::post().to(login))
        .route("/sessions/current", web::delete().to(logout))
        .route("/me", web::get().to(me))
        .route("/orgs", web::get().to(orgs))
        .route("/orgs/{org_id}/invitations", web::post().to(invite))
        .route("/orgs/{org_id}/billing", web::get().to(billing))
        .route("/orgs/{org_id}/leave", web::post().to(leave))
        .route("/invitations/{invitation_id}/accept", web::post().to(accept));
}
