//! Accounts, sessions, organizations, invitations and the billing overview.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::auth::Operator;
use super::error::{ApiError, ErrorBody};
use super::error::{PayloadTooLarge, Unauthorized, Unavailable};
use super::session::{bearer_token, CurrentUser, SESSION_COOKIE, SSO_COOKIE};
use super::AppState;
use crate::app::accounts::{OrgCreation, User};
use crate::domain::ids::{Email, InvitationId, Name, OrgId, Password, Role, UserId};
use crate::domain::organization::FrozenReason;

pub use crate::app::orgs::{BillingView, InvitationAccepted, InvitationCreated, OrgLeft, PaymentChannel};

/// The accounts' part of the API description (and the operators' organization creation).
#[derive(OpenApi)]
#[openapi(paths(
    register,
    login,
    logout,
    me,
    resend_verification,
    orgs,
    invite,
    billing,
    leave,
    accept,
    ops_create_org
))]
pub struct AccountsApi;

/// A new account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    #[schema(example = "ann@example.com", format = Email)]
    email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    password: String,
    /// 1 to 100 characters.
    #[schema(example = "Ann", min_length = 1, max_length = 100)]
    name: String,
}

/// A login.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

/// A registered account and the organization made with it (its Owner).
#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub user_id: UserId,
    pub org_id: OrgId,
    /// Always `false`: a link to verify the address was mailed to it.
    pub email_verified: bool,
    /// The subscription of a pending 免登 grant (the `mf_sso` cookie) now given to this user.
    pub granted_instance: Option<String>,
}

/// A new session; the token is also set as the `mf_session` cookie.
#[derive(Serialize, ToSchema)]
pub struct SessionCreated {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user_id: UserId,
    /// The subscription of a pending 免登 grant (the `mf_sso` cookie) now given to this user.
    pub granted_instance: Option<String>,
}

/// The logged-in user.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user_id: UserId,
    pub email: Email,
    pub name: Name,
    /// Whether the address was verified (the link mailed to it was opened); invitations need it.
    pub email_verified: bool,
}

/// A verification mail on its way.
#[derive(Serialize, ToSchema)]
pub struct VerificationSent {
    /// Always `sent`: the link goes to the account's address and works for 24 hours.
    #[schema(example = "sent")]
    pub status: &'static str,
}

/// The caller's organizations.
#[derive(Serialize, ToSchema)]
pub struct OrgList {
    pub orgs: Vec<OrgSummary>,
}

/// An organization with the caller's role and its billing status.
#[derive(Serialize, ToSchema)]
pub struct OrgSummary {
    pub org_id: OrgId,
    pub name: Option<Name>,
    pub role: Role,
    /// `active` or `frozen`.
    pub status: &'static str,
    pub frozen_reason: Option<FrozenReason>,
}

/// An organization an operator created.
#[derive(Serialize, ToSchema)]
pub struct OrgCreated {
    pub org_id: OrgId,
    /// The Owner.
    pub owner: UserId,
    /// `created`, or `waiting_for_verification`: the owner's address is not verified yet, and the organization
    /// is made when it is.
    #[schema(example = "created")]
    pub status: &'static str,
}

/// Gives the browser's pending 免登 grant (cookie) to the user who just logged in or registered.
async fn redeem_sso_cookie(state: &AppState, req: &HttpRequest, user: &User) -> Option<String> {
    let nonce = req.cookie(SSO_COOKIE)?.value().to_string();
    state.accounts.redeem_pending_grant(&nonce, &user.id).await.ok().flatten()
}

/// The session cookie, `Secure` when the service is reached over https (as the pages set theirs).
fn session_cookie(state: &AppState, token: &str) -> Cookie<'static> {
    super::web::cookie(state, SESSION_COOKIE, token.to_string(), "/", SameSite::Lax)
}

/// Registers an account; an organization is made with it, owned by the new user. A pending 免登 grant of the
/// browser (`mf_sso` cookie) is given to the new user.
#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", request_body = RegisterBody,
    responses(
        (status = 201, body = Registered),
        (status = 400, body = ErrorBody, description = "`invalid_json`, `invalid_email`, `invalid_name` or `weak_password`"),
        (status = 409, body = ErrorBody, description = "`email_taken`"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
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
    Ok(HttpResponse::Created().cookie(super::web::cleared(SSO_COOKIE, "/")).json(Registered {
        user_id: user.id,
        org_id: user.home_org,
        email_verified: user.email_verified_at.is_some(),
        granted_instance: instance,
    }))
}

/// Logs in: a session token in the answer and the `mf_session` cookie.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "accounts", request_body = LoginBody,
    responses(
        (status = 201, body = SessionCreated, headers(("Set-Cookie" = String, description = "`mf_session`"))),
        (status = 400, body = ErrorBody, description = "`invalid_json`"),
        (status = 401, body = ErrorBody, description = "`invalid_credentials`"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    // The stored rule, not the new-input rule: an account registered under the looser first rules still logs in.
    let Ok(email) = Email::try_from(b.email) else {
        return Err(crate::app::accounts::Error::InvalidCredentials.into());
    };
    let Ok(password) = Password::parse(b.password) else {
        return Err(crate::app::accounts::Error::InvalidCredentials.into());
    };
    let (token, expires_at, user) = state.accounts.login(&email, password).await?;
    let instance = redeem_sso_cookie(&state, &req, &user).await;
    Ok(HttpResponse::Created()
        .cookie(session_cookie(&state, &token))
        .cookie(super::web::cleared(SSO_COOKIE, "/"))
        .json(SessionCreated { token, expires_at, user_id: user.id, granted_instance: instance }))
}

/// Ends the caller's session.
#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "accounts",
    security(("session_token" = [])),
    responses(
        (status = 204, description = "Logged out; the cookie is cleared"),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ))]
async fn logout(state: web::Data<AppState>, req: HttpRequest, _u: CurrentUser) -> Result<HttpResponse, ApiError> {
    if let Some(t) = bearer_token(&req) {
        state.accounts.logout(&t).await?;
    }
    Ok(HttpResponse::NoContent().cookie(super::web::cleared(SESSION_COOKIE, "/")).finish())
}

/// The logged-in user.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts",
    security(("session_token" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ))]
async fn me(CurrentUser(user): CurrentUser) -> HttpResponse {
    let email_verified = user.verified();
    HttpResponse::Ok().json(Me { user_id: user.id, email: user.email, name: user.name, email_verified })
}

/// Mails a new link that verifies the caller's address (a few per minute; earlier links keep working).
#[utoipa::path(post, path = "/api/v1/me/email-verification", tag = "accounts",
    security(("session_token" = [])),
    responses(
        (status = 202, body = VerificationSent),
        (status = 401, response = Unauthorized),
        (status = 409, body = ErrorBody, description = "`already_verified`"),
        (status = 503, body = ErrorBody, description = "`mail_unavailable`: no SMTP server is configured; or the store could not answer"),
    ))]
async fn resend_verification(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<HttpResponse, ApiError> {
    state.accounts.resend_verification(&user).await?;
    Ok(HttpResponse::Accepted().json(VerificationSent { status: "sent" }))
}

/// The caller's organizations with their role and billing status.
#[utoipa::path(get, path = "/api/v1/orgs", tag = "accounts",
    security(("session_token" = [])),
    responses(
        (status = 200, body = OrgList),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ))]
async fn orgs(state: web::Data<AppState>, CurrentUser(user): CurrentUser) -> Result<HttpResponse, ApiError> {
    let orgs = state
        .memberships(&user)
        .await?
        .into_iter()
        .map(|m| OrgSummary {
            org_id: m.org_id,
            name: m.org.name,
            role: m.role,
            status: m.state.billing_status(),
            frozen_reason: m.org.frozen_reason,
        })
        .collect();
    Ok(HttpResponse::Ok().json(OrgList { orgs }))
}

/// An invitation to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    #[schema(format = Email)]
    email: String,
    /// `owner`, `billing_admin` or `member`.
    role: String,
}

/// Invites an e-mail address into the organization with a role (Owners only).
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/invitations", tag = "accounts",
    params(("org_id" = String, Path, description = "`org_<32 hex>`", pattern = "^org_[A-Za-z0-9_-]{1,60}$")),
    request_body = InviteBody,
    security(("session_token" = [])),
    responses(
        (status = 201, body = InvitationCreated),
        (status = 400, body = ErrorBody, description = "`invalid_json`, `invalid_id`, `invalid_email` or `invalid_role`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`insufficient_permission`: not an Owner"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such organization, or not a member"),
        (status = 409, body = ErrorBody, description = "`already_member`, `too_many_members` or `paused`"),
        (status = 413, response = PayloadTooLarge),
        (status = 422, body = ErrorBody, description = "the organization refused (`rejected`, `invalid_input`)"),
        (status = 503, response = Unavailable),
    ))]
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
    Ok(HttpResponse::Created().json(state.invite(&user, &org, email, role).await?))
}

/// Accepts an invitation sent to the caller's e-mail address.
#[utoipa::path(post, path = "/api/v1/invitations/{invitation_id}/accept", tag = "accounts",
    params(("invitation_id" = String, Path, description = "`inv_<32 hex>`", pattern = "^inv_[A-Za-z0-9_-]{1,60}$")),
    security(("session_token" = [])),
    responses(
        (status = 200, body = InvitationAccepted),
        (status = 400, body = ErrorBody, description = "`invalid_id`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`invitation_for_another_user`, or `email_unverified`: the caller's address is not verified"),
        (status = 404, body = ErrorBody, description = "`invitation_not_found`"),
        (status = 409, body = ErrorBody, description = "`already_member`, `invitation_expired`, `too_many_members` or `paused`"),
        (status = 422, body = ErrorBody, description = "the organization refused (`rejected`, `invalid_input`)"),
        (status = 503, response = Unavailable),
    ))]
async fn accept(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let invitation = InvitationId::parse(path.into_inner())?;
    Ok(HttpResponse::Ok().json(state.accept_invitation(&user, &invitation).await?))
}

/// Leaves the organization (the last Owner cannot).
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/leave", tag = "accounts",
    params(("org_id" = String, Path, description = "`org_<32 hex>`", pattern = "^org_[A-Za-z0-9_-]{1,60}$")),
    security(("session_token" = [])),
    responses(
        (status = 200, body = OrgLeft),
        (status = 400, body = ErrorBody, description = "`invalid_id`"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "`not_found`: no such organization, or not a member"),
        (status = 409, body = ErrorBody, description = "`last_owner` or `paused`"),
        (status = 422, body = ErrorBody, description = "the organization refused (`rejected`, `invalid_input`)"),
        (status = 503, response = Unavailable),
    ))]
async fn leave(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = OrgId::parse(path.into_inner())?;
    Ok(HttpResponse::Ok().json(state.leave(&user, &org).await?))
}

/// The organization's billing overview (Owners and Billing Admins).
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/billing", tag = "accounts",
    params(("org_id" = String, Path, description = "`org_<32 hex>`", pattern = "^org_[A-Za-z0-9_-]{1,60}$")),
    security(("session_token" = [])),
    responses(
        (status = 200, body = BillingView),
        (status = 400, body = ErrorBody, description = "`invalid_id`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`insufficient_permission`: a Member"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such organization, or not a member"),
        (status = 503, response = Unavailable),
    ))]
async fn billing(
    state: web::Data<AppState>,
    CurrentUser(user): CurrentUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = OrgId::parse(path.into_inner())?;
    Ok(HttpResponse::Ok().json(state.billing(&user, &org).await?))
}

/// An organization to create for a user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsOrgBody {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// A registered user's e-mail address; the Owner.
    #[schema(format = Email)]
    owner_email: String,
}

/// Creates an organization for a registered user (support's answer to "I belong to no organization"). While the
/// user's address is not verified the organization waits (`202`) and is made when it is.
#[utoipa::path(post, path = "/api/v1/ops/orgs", tag = "operators", request_body = OpsOrgBody,
    security(("operator" = [])),
    responses(
        (status = 201, body = OrgCreated),
        (status = 202, body = OrgCreated, description = "`waiting_for_verification`: made once the owner verifies the address"),
        (status = 400, body = ErrorBody, description = "`invalid_json`, `invalid_name` or `invalid_email`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub async fn ops_create_org(
    state: web::Data<AppState>,
    op: Operator,
    body: web::Json<OpsOrgBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let name = Name::parse(b.name)?;
    let email = Email::parse(b.owner_email)?;
    let made = state.create_org_for(&op.name, name, &email).await?;
    let (status, code) = match made.creation {
        OrgCreation::Created => (StatusCode::CREATED, "created"),
        OrgCreation::WaitingForVerification => (StatusCode::ACCEPTED, "waiting_for_verification"),
    };
    Ok(HttpResponse::build(status).json(OrgCreated { org_id: made.org_id, owner: made.owner, status: code }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/accounts", web::post().to(register))
        .route("/sessions", web::post().to(login))
        .route("/sessions/current", web::delete().to(logout))
        .route("/me", web::get().to(me))
        .route("/me/email-verification", web::post().to(resend_verification))
        .route("/orgs", web::get().to(orgs))
        .route("/orgs/{org_id}/invitations", web::post().to(invite))
        .route("/orgs/{org_id}/billing", web::get().to(billing))
        .route("/orgs/{org_id}/leave", web::post().to(leave))
        .route("/invitations/{invitation_id}/accept", web::post().to(accept));
}
