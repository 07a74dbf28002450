//! The operator console (`/console`): the ops API's face for a browser, rendered on the server, with its
//! stylesheet and script compiled into the binary (nothing from a CDN).
//!
//! - Logging in (`/console/login`) takes an operator token and the operator's name. Who the operator is follows
//!   [`crate::config::Config::operator_for`], as on the API: a named token (`MARKETFLOW_OPERATOR_TOKENS`) is its
//!   owner's and the form's name is ignored; with the shared `MARKETFLOW_OPERATOR_TOKEN` the form's name goes into
//!   the journal and the audit trail of every action, as `X-Operator` does on the API. Tokens are compared in
//!   constant time, as SHA-256 digests so that their length does not leak either.
//! - A session is a random 256-bit token in the `mf_console` cookie (HttpOnly, SameSite=Strict, path `/console`);
//!   only its SHA-256 is stored, with the name, an expiry and a digest of the operator token it was opened with
//!   (never the token), among the store's records, like buyers' sessions. It expires on the wall clock, not the
//!   service clock: a demo's clock runs 1200 times faster and would end a session within a minute.
//! - A session lasts only while the operator token it was opened with is configured: every request checks the
//!   stored digest against the digests of the values in force, so rotating `MARKETFLOW_OPERATOR_TOKEN` (once the
//!   old value is dropped from `old,new`) or removing a named token ends the sessions opened with it at the next
//!   request. A session stored before sessions carried a digest counts as ended.
//! - Every POST form carries a token: before login a double-submit cookie (`mf_console_csrf`), after login a token
//!   derived from the session, so a form of one session is refused in another. A present `Origin` (or, without it,
//!   `Referer`) must be this service.
//! - A page without a session answers 303 to `/console/login?next=<the page>`.
//! - Actions run the very code of `POST /api/v1/ops/entities/{kind}/{id}/actions/{action}` ([`crate::app::App::act`]):
//!   the same checks, journal entry and audit record; the page shows the result or the refusal with its code.
//! - The state diagram is inline SVG drawn here from the entity's definition (`workflows/*.toml`), the current
//!   state marked `data-current="true"`. Timers count down in the browser from the service clock's `now` and scale
//!   rendered into the page (`assets/console.js`), so a scaled clock counts down at its own pace.
//! - Handlers never panic: every failure is a page with a status.

use std::sync::OnceLock;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, TimeDelta, Utc};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::error::ApiError;
use super::pages::safe_next;
use super::AppState;
use crate::aliyun::encoding::{encode_query, parse_form, percent_encode};
use crate::app::ops::ActionDone;
use crate::config::OperatorIdentity;
use crate::engine::inspect::EntityFilter;
use crate::engine::records::{RecordTable, Writes};
use crate::engine::{services, EntityKey, Error as EngineError};

/// The session cookie of the console.
pub const SESSION_COOKIE: &str = "mf_console";
/// The login form's token cookie (double submit), until there is a session to derive tokens from.
const CSRF_COOKIE: &str = "mf_console_csrf";
/// How long a console session lasts (wall clock).
const SESSION_TTL: TimeDelta = TimeDelta::hours(8);
/// The largest form body the console accepts.
const FORM_LIMIT: usize = 16 * 1024;
/// The longest operator name (as `X-Operator` on the API).
const NAME_MAX: usize = crate::config::OPERATOR_NAME_MAX;
/// Journal entries per page of the entity view.
const JOURNAL_PAGE: u64 = 50;
/// Timers on the timers page.
const TIMERS_PAGE: usize = 200;
/// Entries on the audit page.
const AUDIT_PAGE: usize = 200;

/// The console's part of the API description.
#[derive(OpenApi)]
#[openapi(
    paths(login_get, login_post, logout_post, list, entity, action_post, timers, windows_get, windows_post, pushes_post, audit, cluster, asset),
    components(schemas(LoginForm, ActionForm, LogoutForm, WindowsForm)),
    modifiers(&ConsoleSession),
    tags((name = "console", description = "The operator console: HTML pages and forms with a session cookie"))
)]
pub struct ConsoleApi;

/// The console's session cookie as a security scheme.
struct ConsoleSession;

impl Modify for ConsoleSession {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.components.get_or_insert_with(Default::default).add_security_scheme(
            "console_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "The console's session cookie, set by `POST /console/login` with the operator token.",
            ))),
        );
    }
}

/// Why a console request was not served as asked. Every variant is a page with a status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the form's token is missing or wrong, or the form was sent from another site; reload the page")]
    Csrf,
    #[error("the form could not be read")]
    BadForm,
    #[error("{}", .0.message)]
    Api(#[from] ApiError),
    #[error("the console's store is unavailable: {0}")]
    Storage(String),
}

impl Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::Csrf => StatusCode::FORBIDDEN,
            Error::BadForm => StatusCode::BAD_REQUEST,
            Error::Api(e) => e.status,
            Error::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &str {
        match self {
            Error::Csrf => "csrf_failed",
            Error::BadForm => "invalid_form",
            Error::Api(e) => &e.code,
            Error::Storage(_) => "storage_unavailable",
        }
    }

    /// What the page says: internal detail stays in the log.
    fn text(&self) -> String {
        match self {
            Error::Storage(detail) => {
                tracing::error!(error = %detail, "console storage failed");
                "The service cannot read or write its store right now; try again shortly.".into()
            }
            Error::Api(e) if e.status.is_server_error() => {
                "The service could not complete the request; nothing was changed. Try again shortly.".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        Error::Api(e.into())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Templates, assets, responses

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/console/base.html")),
    ("login.html", include_str!("../../templates/console/login.html")),
    ("message.html", include_str!("../../templates/console/message.html")),
    ("list.html", include_str!("../../templates/console/list.html")),
    ("entity.html", include_str!("../../templates/console/entity.html")),
    ("timers.html", include_str!("../../templates/console/timers.html")),
    ("cluster.html", include_str!("../../templates/console/cluster.html")),
    ("audit.html", include_str!("../../templates/console/audit.html")),
    ("windows.html", include_str!("../../templates/console/windows.html")),
];

/// An asset: name under `/console/assets/`, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.css", "text/css; charset=utf-8", include_str!("../../assets/console.css")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("../../assets/console.js")),
];

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| super::web::templates("console", TEMPLATES))
}

/// A time for a `data-due`/`datetime` attribute: RFC 3339 with milliseconds, which every browser parses.
fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A time as operators read it.
fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A length of time in its two largest units, as `console.js` writes it.
fn span(d: TimeDelta) -> String {
    let s = d.num_seconds().unsigned_abs();
    let (days, hours, minutes, seconds) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Until `due`, from `now`: "in 4m 12s" or "due 3s ago".
fn remaining(due: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if due >= now {
        format!("in {}", span(due - now))
    } else {
        format!("due {} ago", span(now - due))
    }
}

/// The console's URL of an entity (ids may hold `?`, `&`, `%`: printable ASCII but `/` and `#`).
fn entity_href(kind: &str, id: &str) -> String {
    format!("/console/entities/{}/{}", percent_encode(kind), percent_encode(id))
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    super::web::html(status).body(body)
}

/// Renders a console page: `extra` (an object) plus the operator, the form token, the service clock, the section.
fn render(
    state: &AppState,
    operator: Option<&Operator>,
    csrf: &str,
    template: &str,
    status: StatusCode,
    nav: &str,
    extra: Value,
) -> HttpResponse {
    let clock = state.engine.clock();
    let now = clock.now();
    let mut ctx = json!({
        "operator": operator.map(|o| o.name.as_str()),
        "csrf": csrf,
        "nav": nav,
        "clock": { "now": iso(now), "text": when(now), "scale": clock.scale(), "scale_text": format!("{}", clock.scale()) },
    });
    if let (Value::Object(c), Value::Object(extra)) = (&mut ctx, extra) {
        c.extend(extra);
    }
    match templates().get_template(template).and_then(|t| t.render(&ctx)) {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(template, error = %e, "a console page could not be rendered");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><meta charset=\"utf-8\"><title>console</title>\
                 <p>The page could not be rendered; the service's log says why.</p>"
                    .into(),
            )
        }
    }
}

/// A page saying what went wrong, with a link back.
fn message(state: &AppState, operator: Option<&Operator>, e: &Error, back: &str) -> HttpResponse {
    let title = match e.status() {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Refused",
        s if s.is_server_error() => "Unavailable",
        _ => "Not done",
    };
    let csrf = operator.map(|o| o.csrf.as_str()).unwrap_or("");
    let extra = json!({ "title": title, "text": e.text(), "code": e.code(), "back": back });
    render(state, operator, csrf, "message.html", e.status(), "", extra)
}

/// A `303 See Other` to a local path.
fn see_other(to: &str) -> HttpResponse {
    let location = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/console"));
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `next` if it is a console page (local, safe, under `/console`), encoded for a `Location` header.
fn console_next(next: &str) -> Option<String> {
    let under = next == "/console" || next.starts_with("/console?") || next.starts_with("/console/");
    if under && !next.starts_with("/console/login") {
        safe_next(next)
    } else {
        None
    }
}

/// To the login page, coming back here afterwards (a form's target is not a page: back to the list then).
fn to_login(req: &HttpRequest) -> HttpResponse {
    let here = match *req.method() {
        actix_web::http::Method::GET => req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/console"),
        _ => "/console",
    };
    see_other(&format!("/console/login?{}", encode_query([("next", here)])))
}

/// The fields of a form body (`application/x-www-form-urlencoded`).
fn fields(body: &[u8]) -> Result<Vec<(String, String)>, Error> {
    super::web::fields(body).ok_or(Error::BadForm)
}

// ---------------------------------------------------------------------------------------------------------
// Sessions and form tokens

/// What of the console's records ends: its sessions, swept by the engine once expired.
pub fn sweep_rules() -> Vec<crate::engine::sweep::Rule> {
    // Console sessions last real hours, whatever the service clock's scale.
    vec![SESSIONS.sweep(
        "console_session",
        "expires_at",
        chrono::TimeDelta::zero(),
        crate::engine::sweep::RuleClock::Wall,
    )]
}

/// A console session as stored (under `console-session/<sha256 of the token>`).
#[derive(Debug, Serialize, Deserialize)]
struct StoredSession {
    /// The name given at login (a named token's owner at the time).
    operator: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// [`operator_token_digest`] of the operator token the session was opened with. Empty in sessions stored
    /// before this field existed: those match no token, so they count as ended.
    #[serde(default)]
    token_digest: String,
}

/// The operator of a request with a valid console session.
#[derive(Debug, Clone)]
pub struct Operator {
    /// As given at login; the audit trail's `operator`.
    pub name: String,
    /// The token every form of this session carries.
    csrf: String,
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// `console-session/{sha256 of the cookie's token}`.
const SESSIONS: RecordTable<StoredSession> = RecordTable::records("console-session/");

fn session_key(token: &str) -> String {
    sha256_hex(&[token.as_bytes()])
}

/// What a session keeps of the operator token it was opened with: a digest, domain-separated from every other
/// digest here, so that the store never holds the token and the session ends when the token is no longer configured.
fn operator_token_digest(value: &str) -> String {
    sha256_hex(&[b"marketflow console session operator token\0", value.as_bytes()])
}

/// The form token of a session: only who holds the session cookie can compute it.
fn session_csrf(token: &str) -> String {
    sha256_hex(&[b"marketflow console form\0", token.as_bytes()])
}

use super::web::csrf::{is_token, same as equal};

/// The operator of this request, `None` without a valid session.
async fn current(state: &AppState, req: &HttpRequest) -> Result<Option<Operator>, Error> {
    let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_string()).filter(|t| is_token(t)) else {
        return Ok(None);
    };
    let Some(s) = SESSIONS.get(&state.engine, &[&session_key(&token)]).await? else {
        return Ok(None);
    };
    if s.expires_at <= Utc::now() {
        return Ok(None);
    }
    // Still one of the operator tokens in force? Every configured value's digest is compared, in constant time.
    if s.token_digest.is_empty() {
        return Ok(None);
    }
    let identity = state.config.identify_operator(|value| equal(&operator_token_digest(value), &s.token_digest));
    let name = match identity {
        None => return Ok(None),
        Some(OperatorIdentity::Named(owner)) => owner,
        Some(OperatorIdentity::Shared) => s.operator,
    };
    Ok(Some(Operator { name, csrf: session_csrf(&token) }))
}

/// The operator, or the response to send instead (the login page, or unavailable).
async fn require(state: &AppState, req: &HttpRequest) -> Result<Operator, Box<HttpResponse>> {
    match current(state, req).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(Box::new(to_login(req))),
        Err(e) => Err(Box::new(message(state, None, &e, "/console"))),
    }
}

/// The console's cookies: under `/console` only, `SameSite=Strict`.
fn cookie(state: &AppState, name: &'static str, value: String, max_age: Option<TimeDelta>) -> Cookie<'static> {
    let c = super::web::cookie(state, name, value, "/console", SameSite::Strict);
    match max_age {
        Some(age) => super::web::lasting(c, age),
        None => c,
    }
}

/// Checks a session form's token and origin.
fn check_form(state: &AppState, req: &HttpRequest, op: &Operator, given: &str) -> Result<(), Error> {
    if super::web::csrf::valid(state, req, given, &op.csrf) {
        Ok(())
    } else {
        tracing::warn!(operator = ?op.name, path = req.path(), "console form refused: token or origin");
        Err(Error::Csrf)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Login and logout

/// The login form.
#[derive(Debug, Default, ToSchema)]
pub struct LoginForm {
    /// An operator token: the shared `MARKETFLOW_OPERATOR_TOKEN`, or a named one of `MARKETFLOW_OPERATOR_TOKENS`.
    pub token: String,
    /// With the shared token, the operator's name for the audit trail, 1 to 64 characters; ignored with a named
    /// token (the audit trail names the token's owner).
    pub operator: String,
    /// The form token the login page gave (and its cookie).
    pub csrf: String,
    /// A console page to go to afterwards.
    pub next: Option<String>,
}

impl LoginForm {
    fn parse(f: &[(String, String)]) -> Self {
        let get = |k| super::web::param(f, k).unwrap_or_default().to_string();
        Self {
            token: get("token"),
            operator: get("operator"),
            csrf: get("csrf"),
            next: super::web::param(f, "next").map(String::from),
        }
    }
}

/// The login page's form token: the one of the browser's cookie, or a new one with the cookie to set.
fn login_csrf(state: &AppState, req: &HttpRequest) -> (String, Option<Cookie<'static>>) {
    super::web::csrf::issue(state, req, CSRF_COOKIE, "/console", SameSite::Strict)
}

fn login_page(
    state: &AppState,
    req: &HttpRequest,
    status: StatusCode,
    next: &str,
    name: &str,
    error: Option<&Error>,
) -> HttpResponse {
    let (csrf, set) = login_csrf(state, req);
    let error = error.map(|e| json!({ "code": e.code(), "message": e.text() }));
    let mut r =
        render(state, None, &csrf, "login.html", status, "", json!({ "next": next, "name": name, "error": error }));
    if let Some(c) = set {
        let _ = r.add_cookie(&c);
    }
    r
}

/// The login page (a logged-in operator goes on to the console).
#[utoipa::path(get, path = "/console/login", tag = "console",
    params(("next" = Option<String>, Query, description = "a console page to go to after logging in")),
    responses(
        (status = 200, description = "The login form (HTML); sets the form-token cookie", content_type = "text/html", body = String),
        (status = 303, description = "Already logged in: to `next` or `/console`", headers(("Location" = String))),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn login_get(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let query = parse_form(req.query_string()).unwrap_or_default();
    let next = super::web::param(&query, "next").filter(|n| console_next(n).is_some()).unwrap_or("");
    match current(&state, &req).await {
        Ok(Some(_)) => see_other(&console_next(next).unwrap_or_else(|| "/console".into())),
        Ok(None) => login_page(&state, &req, StatusCode::OK, next, "", None),
        Err(e) => message(&state, None, &e, "/console/login"),
    }
}

/// Logs an operator in: a session cookie, then on to `next`.
#[utoipa::path(post, path = "/console/login", tag = "console",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged in: sets the `mf_console` session cookie, to `next` or `/console`",
            headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 400, description = "`invalid_form` or `invalid_name` (the shared token without a name): the form again, with the error", content_type = "text/html", body = String),
        (status = 401, description = "`invalid_token`: not an operator token; the form again", content_type = "text/html", body = String),
        (status = 403, description = "`csrf_failed`: the form's token is missing or wrong, or it came from another site", content_type = "text/html", body = String),
        (status = 413, description = "The form is over 16 KiB", content_type = "text/plain", body = String),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn login_post(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form = match fields(&body) {
        Ok(f) => LoginForm::parse(&f),
        Err(e) => return login_page(&state, &req, e.status(), "", "", Some(&e)),
    };
    let next = form.next.as_deref().filter(|n| console_next(n).is_some()).unwrap_or("");
    let csrf_cookie = super::web::csrf::from_cookie(&req, CSRF_COOKIE).unwrap_or_default();
    if !super::web::csrf::valid(&state, &req, &form.csrf, &csrf_cookie) {
        return login_page(&state, &req, StatusCode::FORBIDDEN, next, &form.operator, Some(&Error::Csrf));
    }
    let given = form.operator.trim();
    let name = match state.config.operator_for(&form.token) {
        // A named token is its owner's: the form's name does not change who acts.
        Some(OperatorIdentity::Named(owner)) => owner,
        Some(OperatorIdentity::Shared) => {
            if given.is_empty() || given.chars().count() > NAME_MAX || given.chars().any(char::is_control) {
                let e = ApiError::bad_request("invalid_name", format!("give your name (1 to {NAME_MAX} characters)"));
                return login_page(&state, &req, e.status, next, given, Some(&Error::Api(e)));
            }
            given.to_string()
        }
        None => {
            tracing::warn!(operator = ?given, "console login refused: not an operator token");
            let e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "that is not an operator token");
            return login_page(&state, &req, e.status, next, given, Some(&Error::Api(e)));
        }
    };
    let token = crate::app::accounts::random_token();
    let now = Utc::now();
    let session = StoredSession {
        operator: name.clone(),
        created_at: now,
        expires_at: now + SESSION_TTL,
        token_digest: operator_token_digest(&form.token),
    };
    let mut w = Writes::new();
    if let Err(e) = SESSIONS.put(&mut w, &[&session_key(&token)], &session) {
        return message(&state, None, &Error::from(e), "/console/login");
    }
    if let Err(e) = state.engine.write(w).await {
        return message(&state, None, &Error::from(e), "/console/login");
    }
    tracing::info!(operator = ?name, "operator logged in to the console");
    let mut r = see_other(&console_next(next).unwrap_or_else(|| "/console".into()));
    let _ = r.add_cookie(&cookie(&state, SESSION_COOKIE, token, Some(SESSION_TTL)));
    r
}

/// The logout form.
#[derive(Debug, ToSchema)]
pub struct LogoutForm {
    /// The session's form token (in every console page).
    pub csrf: String,
}

/// Ends the session (its record is deleted, the cookie cleared).
#[utoipa::path(post, path = "/console/logout", tag = "console",
    request_body(content = LogoutForm, content_type = "application/x-www-form-urlencoded"),
    security(("console_session" = [])),
    responses(
        (status = 303, description = "Logged out (or no session): to `/console/login`", headers(("Location" = String))),
        (status = 400, description = "`invalid_form`", content_type = "text/html", body = String),
        (status = 403, description = "`csrf_failed`", content_type = "text/html", body = String),
        (status = 413, description = "The form is over 16 KiB", content_type = "text/plain", body = String),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn logout_post(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let form = match fields(&body) {
        Ok(f) => LogoutForm { csrf: super::web::param(&f, "csrf").unwrap_or_default().to_string() },
        Err(e) => return message(&state, Some(&op), &e, "/console"),
    };
    if let Err(e) = check_form(&state, &req, &op, &form.csrf) {
        return message(&state, Some(&op), &e, "/console");
    }
    if let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_string()) {
        let mut w = Writes::new();
        if let Err(e) = SESSIONS.delete(&mut w, &[&session_key(&token)]) {
            return message(&state, Some(&op), &Error::from(e), "/console");
        }
        if let Err(e) = state.engine.write(w).await {
            return message(&state, Some(&op), &Error::from(e), "/console");
        }
    }
    tracing::info!(operator = ?op.name, "operator logged out of the console");
    let mut r = see_other("/console/login");
    let mut gone = cookie(&state, SESSION_COOKIE, String::new(), None);
    gone.make_removal();
    let _ = r.add_cookie(&gone);
    r
}

// ---------------------------------------------------------------------------------------------------------
// The entity list

/// The list's filters (the filter form's fields); empty fields count as not given.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// An entity kind: `subscription`, `organization`, `metering`.
    pub kind: Option<String>,
    /// A state of the kind's workflow, e.g. `opening`.
    pub state: Option<String>,
    /// `true` (or `on`): only entities with a pending timer.
    pub waiting_on_timer: Option<String>,
    /// `true` (or `on`): only entities that need a person (any cause).
    pub needs_attention: Option<String>,
    /// Only entities with a concern of this cause (e.g. `window_failed`).
    pub cause: Option<String>,
    /// e.g. `10m`: only entities in their state at least this long.
    pub min_time_in_state: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    pub limit: Option<String>,
    /// Where the page starts (the "next page" link's).
    pub cursor: Option<String>,
}

impl ListQuery {
    fn parse(q: &[(String, String)]) -> Self {
        let get = |k| super::web::param(q, k).map(str::trim).filter(|v| !v.is_empty()).map(String::from);
        Self {
            kind: get("kind"),
            state: get("state"),
            waiting_on_timer: get("waiting_on_timer"),
            needs_attention: get("needs_attention"),
            cause: get("cause"),
            min_time_in_state: get("min_time_in_state"),
            limit: get("limit"),
            cursor: get("cursor"),
        }
    }

    /// The engine's filter and the page size, or why the filters are not valid.
    fn filter(&self, state: &AppState) -> Result<(EntityFilter, usize), ApiError> {
        let on = |v: &Option<String>| v.as_deref().is_some_and(|v| matches!(v, "true" | "on" | "1" | "yes"));
        let limit = match &self.limit {
            None => 50,
            Some(l) => l.parse::<usize>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "the page size must be a number from 1 to 1000")
            })?,
        };
        if let Some(k) = &self.kind {
            if state.engine.registry().kind(k).is_none() {
                return Err(ApiError::bad_request("unknown_kind", format!("no entity kind `{k}`")));
            }
        }
        let min_time_in_state = self
            .min_time_in_state
            .as_deref()
            .map(crate::engine::definition::parse_duration)
            .transpose()
            .map_err(|m| ApiError::bad_request("invalid_duration", m))?
            .map(|d| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX));
        let filter = EntityFilter {
            kind: self.kind.clone(),
            state: self.state.clone(),
            waiting_on_timer: on(&self.waiting_on_timer),
            needs_attention: on(&self.needs_attention),
            cause: self.cause.as_deref().map(|c| state.cause(c)).transpose()?.map(|c| c.as_str().to_string()),
            min_time_in_state,
        };
        Ok((filter, limit))
    }

    /// This query as a URL of the list, with another cursor.
    fn href(&self, cursor: Option<&str>) -> String {
        let fields = [
            ("kind", &self.kind),
            ("state", &self.state),
            ("waiting_on_timer", &self.waiting_on_timer),
            ("needs_attention", &self.needs_attention),
            ("cause", &self.cause),
            ("min_time_in_state", &self.min_time_in_state),
            ("limit", &self.limit),
        ];
        let mut pairs: Vec<(&str, &str)> = fields.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))).collect();
        if let Some(c) = cursor {
            pairs.push(("cursor", c));
        }
        if pairs.is_empty() {
            "/console".into()
        } else {
            format!("/console?{}", encode_query(pairs))
        }
    }
}

/// Entities with their state, time in state, next timer and open calls, filtered and paged.
#[utoipa::path(get, path = "/console", tag = "console", params(ListQuery),
    security(("console_session" = [])),
    responses(
        (status = 200, description = "The entity list (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login?next=...`", headers(("Location" = String))),
        (status = 400, description = "`unknown_kind`, `invalid_duration`, `invalid_limit` or `invalid_input` (a cursor this page did not give): the page with the error",
            content_type = "text/html", body = String),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn list(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let query = ListQuery::parse(&parse_form(req.query_string()).unwrap_or_default());
    let page = match query.filter(&state) {
        Ok((filter, limit)) => {
            state.engine.list_entities(&filter, query.cursor.as_deref(), limit).await.map_err(Error::from)
        }
        Err(e) => Err(Error::Api(e)),
    };
    let now = state.engine.clock().now();
    let (items, next_page, status, error) = match page {
        Ok(page) => {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|r| {
                    let soonest = r.timers.iter().min_by_key(|(_, t)| t.due);
                    json!({
                        "kind": r.kind, "id": r.id, "state": r.state, "paused": r.paused,
                        "href": entity_href(&r.kind, &r.id),
                        "in_state": span(now - r.state_since),
                        "timer": soonest.map(|(name, t)| json!({
                            "name": name, "due": iso(t.due), "remaining": remaining(t.due, now)
                        })),
                        "timers": r.timers.len(),
                        "calls": r.calls.len(),
                        "updated": when(r.updated_at),
                    })
                })
                .collect();
            let next = page.next_cursor.as_deref().map(|c| query.href(Some(c)));
            (items, next, StatusCode::OK, None)
        }
        Err(e) => {
            let error = json!({ "code": e.code(), "message": e.text() });
            // A bad cursor is the client's, not the service's.
            let status = if e.code() == "invalid_input" { StatusCode::BAD_REQUEST } else { e.status() };
            (vec![], None, status, Some(error))
        }
    };
    let kinds: Vec<Value> = state.engine.registry().kinds().map(|(k, _)| json!({ "name": k })).collect();
    let mut states: Vec<String> = state
        .engine
        .registry()
        .kinds()
        .filter(|(k, _)| query.kind.as_ref().is_none_or(|q| q == *k))
        .flat_map(|(_, r)| r.versions.values().flat_map(|d| d.states.iter().map(|s| s.name.clone())))
        .collect();
    states.sort();
    states.dedup();
    let on = |v: &Option<String>| v.is_some();
    // Every cause with its count, so that the filter says what "needs attention" covers.
    let causes: Vec<Value> = match state.attention(None, 1).await {
        Ok(a) => a
            .causes
            .iter()
            .map(|c| json!({ "name": c.cause, "covers": c.covers, "next_step": c.next_step, "count": c.count }))
            .collect(),
        Err(_) => vec![],
    };
    let extra = json!({
        "causes": causes,
        "filter": {
            "kind": query.kind.clone().unwrap_or_default(),
            "state": query.state.clone().unwrap_or_default(),
            "waiting_on_timer": on(&query.waiting_on_timer),
            "needs_attention": on(&query.needs_attention),
            "cause": query.cause.clone().unwrap_or_default(),
            "min_time_in_state": query.min_time_in_state.clone().unwrap_or_default(),
            "limit": query.limit.clone().unwrap_or_else(|| "50".into()),
        },
        "kinds": kinds,
        "states": states,
        "items": items,
        "next_page": next_page,
        "first_page": query.cursor.is_some().then(|| query.href(None)),
        "error": error,
    });
    render(&state, Some(&op), &op.csrf, "list.html", status, "entities", extra)
}

// ---------------------------------------------------------------------------------------------------------
// One entity

/// What the action of a POST came to, for the entity page.
enum Done {
    Ok(ActionDone),
    Refused { action: String, error: Error },
}

/// One entity: state and data, definition, diagram, timers with countdowns, calls, outbox, journal, actions.
#[utoipa::path(get, path = "/console/entities/{kind}/{id}", tag = "console",
    params(
        ("kind" = String, Path, description = "`subscription`, `organization` or `metering`"),
        ("id" = String, Path, description = "the entity's id within its kind"),
        ("before" = Option<u64>, Query, description = "journal entries before this sequence number (older pages)"),
    ),
    security(("console_session" = [])),
    responses(
        (status = 200, description = "The entity page (HTML); the current state is marked `data-current=\"true\"` in the diagram",
            content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login?next=...`", headers(("Location" = String))),
        (status = 400, description = "`invalid_entity`: not a valid kind or id", content_type = "text/html", body = String),
        (status = 404, description = "`not_found`: no such entity", content_type = "text/html", body = String),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn entity(state: web::Data<AppState>, req: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (kind, id) = path.into_inner();
    let query = parse_form(req.query_string()).unwrap_or_default();
    let before = super::web::param(&query, "before").and_then(|b| b.parse::<u64>().ok());
    entity_page(&state, &op, &kind, &id, before, StatusCode::OK, None).await
}

async fn entity_page(
    state: &AppState,
    op: &Operator,
    kind: &str,
    id: &str,
    before: Option<u64>,
    status: StatusCode,
    done: Option<Done>,
) -> HttpResponse {
    match entity_context(state, kind, id, before, done).await {
        Ok(extra) => render(state, Some(op), &op.csrf, "entity.html", status, "entities", extra),
        Err(e) => message(state, Some(op), &e, "/console"),
    }
}

async fn entity_context(
    state: &AppState,
    kind: &str,
    id: &str,
    before: Option<u64>,
    done: Option<Done>,
) -> Result<Value, Error> {
    let key = EntityKey::new(kind, id).map_err(|e| ApiError::bad_request("invalid_entity", e.to_string()))?;
    let view = state.engine.entity_view(&key).await.map_err(|e| match e {
        EngineError::NotFound => Error::Api(ApiError::not_found(format!("no {kind} `{id}`"))),
        other => other.into(),
    })?;
    let now = state.engine.clock().now();
    let definition = state.engine.registry().kind(&view.kind).and_then(|r| r.versions.get(&view.version)).cloned();

    // The journal, newest first, a page at a time: entries `lo..hi`.
    let hi = before.unwrap_or(view.seq + 1).min(view.seq + 1);
    let lo = hi.saturating_sub(JOURNAL_PAGE).max(1);
    let mut journal =
        if hi > lo { state.engine.journal(&key, lo - 1, (hi - lo) as usize).await?.items } else { vec![] };
    journal.reverse();
    let journal: Vec<Value> = journal
        .iter()
        .map(|j| {
            let mut effects = vec![];
            let list = |label: &str, v: &[String]| (!v.is_empty()).then(|| format!("{label}: {}", v.join(", ")));
            effects.extend(list("timers set", &j.timers_set));
            effects.extend(list("timers cancelled", &j.timers_cancelled));
            effects.extend(list("messages", &j.messages));
            effects.extend(list("calls", &j.calls));
            json!({
                "seq": j.seq, "at": when(j.at), "event": j.event, "from": j.from, "to": j.to,
                "status": j.status, "code": j.code, "cause": j.cause.to_string(), "notes": j.notes,
                "effects": effects.join(" · "),
            })
        })
        .collect();
    let older = (lo > 1).then(|| format!("{}?before={lo}", entity_href(kind, id)));

    let timers: Vec<Value> = view
        .timers
        .iter()
        .map(|t| json!({ "name": t.name, "due": iso(t.due), "due_text": when(t.due), "remaining": remaining(t.due, now) }))
        .collect();
    let calls: Vec<Value> = view
        .pending_calls
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "call": c.call, "status": c.status, "attempts": c.attempts, "created": when(c.created_at),
                "next": c.next_attempt_at.map(|t| json!({ "due": iso(t), "text": when(t), "remaining": remaining(t, now) })),
                "last_error": c.last_error,
            })
        })
        .collect();
    let messages: Vec<Value> = view
        .pending_messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "to": m.to.to_string(), "href": entity_href(&m.to.kind, &m.to.id),
                "created": when(m.created_at), "body": m.body.to_string(),
            })
        })
        .collect();

    let current = view.state.as_str();
    let (diagram, mermaid, transitions_here, file) = match &definition {
        Some(d) => {
            let here: Vec<Value> = d
                .transitions
                .iter()
                .filter(|t| if t.from.is_empty() { !d.is_terminal(current) } else { t.from.iter().any(|f| f == current) })
                .map(|t| json!({ "on": t.on, "guard": t.guard, "to": t.to, "actions": t.actions, "description": t.description }))
                .collect();
            (diagram::svg(d, current), d.to_mermaid(), here, d.file.clone())
        }
        None => (
            "<p class=\"notice error\">This entity's definition is not loaded: no diagram.</p>".to_string(),
            String::new(),
            vec![],
            String::new(),
        ),
    };
    let is_org = view.kind == crate::domain::organization::KIND;
    // Which states take a freeze is the definition's to say (its transitions), the same rule the workflow runs.
    let takes = |event: &str| definition.as_ref().is_some_and(|d| d.candidates(current, event).next().is_some());
    let actions = json!({
        "pause": !view.paused && !view.terminal,
        "resume": view.paused,
        "freeze": is_org && takes("freeze"),
        "unfreeze": is_org && takes("unfreeze"),
    });
    let (result, error) = match done {
        None => (Value::Null, Value::Null),
        Some(Done::Ok(d)) => (json!({ "action": d.action, "entity": d.entity, "summary": summary(&d) }), Value::Null),
        Some(Done::Refused { action, error }) => {
            (Value::Null, json!({ "action": action, "code": error.code(), "message": error.text() }))
        }
    };
    Ok(json!({
        "e": {
            "key": key.to_string(), "kind": view.kind, "id": view.id, "state": view.state,
            "kind_href": format!("/console?{}", encode_query([("kind", view.kind.as_str())])),
            "paused": view.paused, "terminal": view.terminal, "needs_attention": view.needs_attention,
            "attention": view.attention.iter().map(|a| json!({
                "cause": a.cause, "subject": a.subject, "next_step": a.next_step, "since": when(a.since),
            })).collect::<Vec<_>>(),
            "last_error": view.last_error, "definition": view.definition, "version": view.version,
            "fingerprint": view.fingerprint, "definition_file": file,
            "definition_loaded": definition.as_ref().is_some_and(|d| d.fingerprint == view.fingerprint),
            "created": when(view.created_at), "updated": when(view.updated_at),
            "state_since": when(view.state_since), "in_state": span(now - view.state_since), "seq": view.seq,
            "data": serde_json::to_string_pretty(&view.data).unwrap_or_default(),
        },
        "diagram": diagram,
        "mermaid": mermaid,
        "transitions_here": transitions_here,
        "timers": timers,
        "calls": calls,
        "messages": messages,
        "journal": journal,
        "older": older,
        "actions": actions,
        "action_base": format!("{}/actions/", entity_href(kind, id)),
        "result": result,
        "error": error,
    }))
}

/// One line on what an action did.
fn summary(d: &ActionDone) -> String {
    let r = &d.result;
    let mut parts = vec![];
    if let Some(calls) = &r.calls {
        parts.push(format!("Calls: {}.", calls.join(", ")));
    }
    if let Some(state) = &r.state {
        parts.push(format!("State: {state}."));
    }
    if let Some(paused) = r.paused {
        parts.push(if paused { "Paused." } else { "Running." }.to_string());
    }
    parts.join(" ")
}

/// An action form.
#[derive(Debug, ToSchema)]
pub struct ActionForm {
    /// Why (1 to 500 characters): the journal and the audit trail keep it with the operator's name.
    pub reason: String,
    /// `retry` / `cancel`: only this call (default: every pending call of the entity).
    pub call_id: Option<String>,
    /// The session's form token.
    pub csrf: String,
}

/// Runs an action (`retry`, `cancel`, `pause`, `resume`; `freeze`, `unfreeze` for organizations) as the logged-in
/// operator, exactly as the ops API does, and shows the entity with the result or the refusal.
#[utoipa::path(post, path = "/console/entities/{kind}/{id}/actions/{action}", tag = "console",
    params(
        ("kind" = String, Path, description = "`subscription`, `organization` or `metering`"),
        ("id" = String, Path, description = "the entity's id within its kind"),
        ("action" = String, Path, description = "`retry`, `cancel`, `pause`, `resume`; `freeze`, `unfreeze` for organizations"),
    ),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("console_session" = [])),
    responses(
        (status = 200, description = "Done: the entity page with the result (`#action-result[data-status=ok]`); audited with the operator's name",
            content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login`", headers(("Location" = String))),
        (status = 400, description = "`invalid_form`, `invalid_entity`, `reason_required` or `unknown_action`: the entity page with the refusal",
            content_type = "text/html", body = String),
        (status = 403, description = "`csrf_failed`: nothing was done", content_type = "text/html", body = String),
        (status = 413, description = "The form is over 16 KiB", content_type = "text/plain", body = String),
        (status = 404, description = "`not_found`: no such entity, or no pending call to act on", content_type = "text/html", body = String),
        (status = 409, description = "`not_applicable` or `paused`", content_type = "text/html", body = String),
        (status = 422, description = "`invalid_input`: the workflow refused the input", content_type = "text/html", body = String),
        (status = 503, description = "Overloaded or the store is unavailable: nothing was done", content_type = "text/html", body = String),
    ))]
async fn action_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (kind, id, action) = path.into_inner();
    let back = entity_href(&kind, &id);
    let form = match fields(&body) {
        Ok(f) => ActionForm {
            reason: super::web::param(&f, "reason").unwrap_or_default().to_string(),
            call_id: super::web::param(&f, "call_id").filter(|c| !c.is_empty()).map(String::from),
            csrf: super::web::param(&f, "csrf").unwrap_or_default().to_string(),
        },
        Err(e) => return message(&state, Some(&op), &e, &back),
    };
    if let Err(e) = check_form(&state, &req, &op, &form.csrf) {
        return message(&state, Some(&op), &e, &back);
    }
    let acted = match (EntityKey::new(&kind, &id), crate::app::ops::reason(Some(form.reason))) {
        (Err(e), _) => Err(ApiError::bad_request("invalid_entity", e.to_string())),
        (_, Err(e)) => Err(e.into()),
        (Ok(key), Ok(reason)) if action == "dismiss" => dismiss(&state, &op.name, &key, &body, reason).await,
        (Ok(key), Ok(reason)) => state.act(&op.name, &key, &action, reason, form.call_id).await.map_err(ApiError::from),
    };
    let (status, done) = match acted {
        Ok(d) => (StatusCode::OK, Done::Ok(d)),
        Err(e) => (e.status, Done::Refused { action, error: Error::Api(e) }),
    };
    entity_page(&state, &op, &kind, &id, None, status, Some(done)).await
}

/// The console's dismissal of one concern (its cause and subject from the form): the ops API's use case.
async fn dismiss(
    state: &AppState,
    operator: &str,
    key: &EntityKey,
    body: &[u8],
    reason: String,
) -> Result<ActionDone, ApiError> {
    let f = fields(body).map_err(|_| ApiError::bad_request("invalid_form", "the form does not decode"))?;
    let cause = state.cause(super::web::param(&f, "cause").unwrap_or_default())?;
    let subject = super::web::param(&f, "subject").unwrap_or_default();
    state.dismiss_attention(operator, key, &cause, subject, reason).await?;
    Ok(ActionDone {
        entity: key.to_string(),
        action: format!("dismiss:{}", cause.as_str()),
        result: Default::default(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Timers and the audit trail

/// Pending timers across the service, soonest first, with live countdowns.
#[utoipa::path(get, path = "/console/timers", tag = "console",
    security(("console_session" = [])),
    responses(
        (status = 200, description = "The timers page (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login?next=...`", headers(("Location" = String))),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn timers(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let rows = match services::pending_timers(&state.engine, None, TIMERS_PAGE + 1).await {
        Ok(r) => r,
        Err(e) => return message(&state, Some(&op), &Error::from(e), "/console"),
    };
    let now = state.engine.clock().now();
    let more = rows.len() > TIMERS_PAGE;
    let timers: Vec<Value> = rows
        .iter()
        .take(TIMERS_PAGE)
        .map(|t| {
            json!({
                "entity": t.entity.to_string(), "href": entity_href(&t.entity.kind, &t.entity.id), "name": t.name,
                "due": iso(t.due), "due_text": when(t.due), "remaining": remaining(t.due, now),
            })
        })
        .collect();
    render(
        &state,
        Some(&op),
        &op.csrf,
        "timers.html",
        StatusCode::OK,
        "timers",
        json!({ "timers": timers, "more": more }),
    )
}

/// The bulk resolution form of windows of unknown outcome.
#[derive(Debug, Default, ToSchema, serde::Serialize)]
pub struct WindowsForm {
    /// `mark-pushed`, `push-again` or `cancel`.
    pub resolution: String,
    /// Windows starting at this hour (RFC 3339).
    pub hour: String,
    /// Windows of these instances: one per line, or comma-separated.
    pub instances: String,
    /// Why (1 to 500 characters; not needed to preview).
    pub reason: String,
    /// `mark-pushed`: the bill's request id.
    pub request_id: String,
    /// `true`: preview, change nothing.
    pub dry_run: String,
    /// The session's form token.
    pub csrf: String,
}

/// The windows whose push has an unknown outcome, and the form that resolves them in bulk.
#[utoipa::path(get, path = "/console/windows", tag = "console",
    security(("console_session" = [])),
    responses(
        (status = 200, description = "The windows page (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login?next=...`", headers(("Location" = String))),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn windows_get(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let form = WindowsForm { resolution: "mark-pushed".into(), ..WindowsForm::default() };
    windows_page(&state, &op, StatusCode::OK, &form, Value::Null, Value::Null).await
}

/// Holds every metering push (`hold`) or releases them (`release`) as the logged-in operator, exactly as
/// `POST /api/v1/ops/pushes/{switch}` does (audited), and shows the windows page with the outcome.
#[utoipa::path(post, path = "/console/pushes/{switch}", tag = "console",
    params(("switch" = String, Path, description = "`hold` or `release`")),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("console_session" = [])),
    responses(
        (status = 200, description = "Done: `#pushes-result[data-status=ok]`; audited with the operator's name",
            content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login`", headers(("Location" = String))),
        (status = 400, description = "`invalid_form` or `reason_required`", content_type = "text/html", body = String),
        (status = 403, description = "`csrf_failed`: nothing was done", content_type = "text/html", body = String),
        (status = 404, description = "`not_found`: neither `hold` nor `release`", content_type = "text/html", body = String),
        (status = 413, description = "The form is over 16 KiB", content_type = "text/plain", body = String),
        (status = 503, description = "The store is unavailable: nothing was done", content_type = "text/html", body = String),
    ))]
async fn pushes_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    switch: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let f = match fields(&body) {
        Ok(f) => f,
        Err(e) => return message(&state, Some(&op), &e, "/console/windows"),
    };
    if let Err(e) = check_form(&state, &req, &op, super::web::param(&f, "csrf").unwrap_or_default()) {
        return message(&state, Some(&op), &e, "/console/windows");
    }
    let done = match switch.as_str() {
        "hold" | "release" => {
            let reason = super::web::param(&f, "reason").unwrap_or_default().to_string();
            state.hold_pushes(&op.name, switch.as_str() == "hold", reason).await.map_err(ApiError::from)
        }
        other => Err(ApiError::not_found(format!("no switch `{other}`: `hold` or `release`"))),
    };
    let (status, result) = match done {
        Ok(h) => (StatusCode::OK, json!({ "status": "ok", "switch": switch.as_str(), "held": h.held })),
        Err(e) => {
            (e.status, json!({ "status": "refused", "switch": switch.as_str(), "code": e.code, "message": e.message }))
        }
    };
    let form = WindowsForm { resolution: "mark-pushed".into(), ..WindowsForm::default() };
    windows_page(&state, &op, status, &form, Value::Null, result).await
}

/// Resolves (or previews) windows of unknown outcome as the logged-in operator, exactly as
/// `POST /api/v1/ops/windows/resolve` does, and shows what was done with the windows left.
#[utoipa::path(post, path = "/console/windows", tag = "console",
    request_body(content = WindowsForm, content_type = "application/x-www-form-urlencoded"),
    security(("console_session" = [])),
    responses(
        (status = 200, description = "Done or previewed: `#resolve-result[data-status=ok]` with the count; audited",
            content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login`", headers(("Location" = String))),
        (status = 400, description = "`invalid_form`, `invalid_hour`, `invalid_entity`, `reason_required`, `selector_required`, `unknown_resolution` or `invalid_parameter`",
            content_type = "text/html", body = String),
        (status = 403, description = "`csrf_failed`: nothing was done", content_type = "text/html", body = String),
        (status = 413, description = "The form is over 16 KiB", content_type = "text/plain", body = String),
        (status = 503, description = "The store is unavailable: nothing was done", content_type = "text/html", body = String),
    ))]
async fn windows_post(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    use crate::app::windows::{Resolution, Selector};
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let f = match fields(&body) {
        Ok(f) => f,
        Err(e) => return message(&state, Some(&op), &e, "/console/windows"),
    };
    let get = |k: &str| super::web::param(&f, k).unwrap_or_default().trim().to_string();
    let form = WindowsForm {
        resolution: get("resolution"),
        hour: get("hour"),
        instances: get("instances"),
        reason: get("reason"),
        request_id: get("request_id"),
        dry_run: get("dry_run"),
        csrf: get("csrf"),
    };
    if let Err(e) = check_form(&state, &req, &op, &form.csrf) {
        return message(&state, Some(&op), &e, "/console/windows");
    }
    let dry_run = form.dry_run == "true";
    let resolved = async {
        let resolution = Resolution::parse(&form.resolution)?;
        let hour = match form.hour.as_str() {
            "" => None,
            h => Some(DateTime::parse_from_rfc3339(h).map(|t| t.with_timezone(&Utc)).map_err(|e| {
                crate::app::AppError::invalid("invalid_hour", format!("hour: not an RFC 3339 time ({e})"))
            })?),
        };
        let instances = form.instances.split(|c: char| c == ',' || c.is_whitespace()).filter(|i| !i.is_empty());
        let selector = Selector::parse(hour, instances)?;
        let request_id = Some(form.request_id.clone()).filter(|r| !r.is_empty());
        let reason = Some(form.reason.clone());
        state.resolve_windows(&op.name, &selector, resolution, reason, request_id, dry_run).await
    }
    .await;
    let (status, result) = match resolved {
        Ok(r) => (
            StatusCode::OK,
            json!({"status": "ok", "count": r.windows.len(), "dry_run": r.dry_run, "resolution": r.resolution}),
        ),
        Err(e) => {
            let e = ApiError::from(e);
            let refused = json!({"status": "refused", "count": 0, "dry_run": dry_run, "resolution": form.resolution,
                                 "code": e.code, "message": e.message});
            (e.status, refused)
        }
    };
    windows_page(&state, &op, status, &form, result, Value::Null).await
}

async fn windows_page(
    state: &AppState,
    op: &Operator,
    status: StatusCode,
    form: &WindowsForm,
    result: Value,
    pushes_result: Value,
) -> HttpResponse {
    let windows = match state.unknown_windows(&crate::app::windows::Selector::default()).await {
        Ok(w) => w,
        Err(e) => return message(state, Some(op), &Error::Api(e.into()), "/console"),
    };
    let hold = match state.push_hold().await {
        Ok(h) => json!({
            "held": h.held, "since": h.since.map(when), "operator": h.operator, "reason": h.reason,
        }),
        Err(e) => return message(state, Some(op), &Error::Api(e.into()), "/console"),
    };
    let rows: Vec<Value> = windows
        .iter()
        .map(|w| {
            json!({
                "instance_id": w.instance_id, "start": iso(w.window_start), "start_text": when(w.window_start),
                "units": w.units, "attempts": w.attempts, "last_error": w.last_error.clone().unwrap_or_default(),
                "href": entity_href(crate::domain::metering::KIND, &w.instance_id),
            })
        })
        .collect();
    let form = json!({
        "resolution": form.resolution, "hour": form.hour, "instances": form.instances, "reason": form.reason,
        "request_id": form.request_id,
    });
    render(
        state,
        Some(op),
        &op.csrf,
        "windows.html",
        status,
        "windows",
        json!({ "windows": rows, "form": form, "result": result, "hold": hold, "pushes_result": pushes_result }),
    )
}

/// The nodes, their heartbeats and the shards each holds (PostgreSQL), or the one node holding every shard (sled).
#[utoipa::path(get, path = "/console/cluster", tag = "console",
    security(("console_session" = [])),
    responses(
        (status = 200, description = "The cluster page (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login?next=...`", headers(("Location" = String))),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn cluster(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let view = match state.cluster_view(state.cluster.as_ref(), &state.config.node_id, &state.config.node_url).await {
        Ok(v) => v,
        Err(e) => return message(&state, Some(&op), &Error::Api(e.into()), "/console"),
    };
    let now = view.rows.now;
    let nodes: Vec<Value> = view
        .rows
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node, "url": n.url, "state": n.state,
                "heartbeat": when(n.heartbeat), "heartbeat_ago": span(now - n.heartbeat),
                "started": when(n.started_at),
                "shards": view.shards_by_node.get(&n.node).copied().unwrap_or(0),
            })
        })
        .collect();
    // Runs of consecutive shards with the same owner: 256 rows would drown the page.
    let mut runs: Vec<Value> = vec![];
    let shards = &view.rows.shards;
    let mut i = 0;
    while i < shards.len() {
        let mut j = i;
        while j + 1 < shards.len() && shards[j + 1].owner == shards[i].owner {
            j += 1;
        }
        let epochs: Vec<i64> = shards[i..=j].iter().map(|s| s.epoch).collect();
        let (lo, hi) = (epochs.iter().min().copied().unwrap_or(0), epochs.iter().max().copied().unwrap_or(0));
        let lease = shards[i].lease_until.map(|u| span(u - now)).unwrap_or_else(|| "-".into());
        runs.push(json!({
            "range": if i == j { i.to_string() } else { format!("{i}–{j}") },
            "owner": shards[i].owner.clone().unwrap_or_else(|| "—".into()),
            "epochs": if lo == hi { lo.to_string() } else { format!("{lo}–{hi}") },
            "lease": lease,
        }));
        i = j + 1;
    }
    render(
        &state,
        Some(&op),
        &op.csrf,
        "cluster.html",
        StatusCode::OK,
        "cluster",
        json!({
            "mode": view.mode, "node": view.node, "lease_seconds": view.lease_seconds, "nodes": nodes,
            "runs": runs, "unowned": view.unowned, "now": when(now),
        }),
    )
}

/// The audit trail of operators' actions, newest first.
#[utoipa::path(get, path = "/console/audit", tag = "console",
    security(("console_session" = [])),
    responses(
        (status = 200, description = "The audit page (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "No console session: to `/console/login?next=...`", headers(("Location" = String))),
        (status = 503, description = "The store is unavailable", content_type = "text/html", body = String),
    ))]
async fn audit(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let op = match require(&state, &req).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let entries = match state.audit_trail(AUDIT_PAGE).await.map_err(ApiError::from) {
        Ok(e) => e,
        Err(e) => return message(&state, Some(&op), &Error::Api(e), "/console"),
    };
    let items: Vec<Value> = entries
        .iter()
        .map(|a| {
            let href = a.entity.split_once('/').map(|(k, i)| entity_href(k, i)).unwrap_or_else(|| "/console".into());
            json!({
                "at": when(a.at), "operator": a.operator, "entity": a.entity, "href": href, "action": a.action,
                "reason": a.reason, "result": a.result.to_string(),
            })
        })
        .collect();
    render(&state, Some(&op), &op.csrf, "audit.html", StatusCode::OK, "audit", json!({ "items": items }))
}

/// `/console/assets/{name}`: the console's stylesheet and script, from memory.
#[utoipa::path(get, path = "/console/assets/{name}", tag = "console",
    params(("name" = String, Path, description = "`console.css` or `console.js`")),
    responses(
        (status = 200, description = "The asset", content_type = "text/css", body = String),
        (status = 404, description = "No such asset", content_type = "text/plain", body = String),
    ))]
async fn asset(path: web::Path<String>) -> HttpResponse {
    super::pages::embedded_asset(ASSETS, &path.into_inner(), "no-cache")
}

/// Registers the console's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let limit = || web::PayloadConfig::new(FORM_LIMIT);
    cfg.route("/console", web::get().to(list))
        .service(
            web::resource("/console/login")
                .app_data(limit())
                .route(web::get().to(login_get))
                .route(web::post().to(login_post)),
        )
        .service(web::resource("/console/logout").app_data(limit()).route(web::post().to(logout_post)))
        .route("/console/timers", web::get().to(timers))
        .service(
            web::resource("/console/windows")
                .app_data(limit())
                .route(web::get().to(windows_get))
                .route(web::post().to(windows_post)),
        )
        .service(web::resource("/console/pushes/{switch}").app_data(limit()).route(web::post().to(pushes_post)))
        .route("/console/cluster", web::get().to(cluster))
        .route("/console/audit", web::get().to(audit))
        .route("/console/assets/{name}", web::get().to(asset))
        .route("/console/entities/{kind}/{id}", web::get().to(entity))
        .service(
            web::resource("/console/entities/{kind}/{id}/actions/{action}")
                .app_data(limit())
                .route(web::post().to(action_post)),
        );
}

// ---------------------------------------------------------------------------------------------------------
// The state diagram

mod diagram {
    //! A definition's states and transitions as an arc diagram in SVG: states in a row (by the longest path from
    //! the initial state once the back edges of a depth-first walk are set aside, terminal states last), forward
    //! transitions as arcs above the row, backward ones below, each pair of states one arc labelled with its
    //! events. Nested arcs are drawn higher than the arcs inside them and no two labels share a line, so nothing
    //! overlaps however the graph looks. Transitions that stay in their state are listed under it.

    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use crate::engine::Definition;

    const NODE_H: f64 = 30.0;
    const GAP: f64 = 64.0;
    const MARGIN: f64 = 34.0;
    /// Approximate width of one character of the 10.5 px monospace labels.
    const CHAR_W: f64 = 6.4;
    /// Vertical distance between two levels of arcs.
    const LEVEL: f64 = 21.0;

    fn esc(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }

    /// The order of the states along the row.
    fn order(def: &Definition, succ: &[Vec<usize>]) -> Vec<usize> {
        let n = def.states.len();
        let start = def.states.iter().position(|s| s.name == def.initial).unwrap_or(0);
        // Depth-first from the initial state: edges to a state on the stack close a cycle and do not count.
        let (mut on_stack, mut seen, mut post) = (vec![false; n], vec![false; n], vec![]);
        let mut back = std::collections::BTreeSet::new();
        fn walk(
            i: usize,
            succ: &[Vec<usize>],
            on_stack: &mut [bool],
            seen: &mut [bool],
            post: &mut Vec<usize>,
            back: &mut std::collections::BTreeSet<(usize, usize)>,
        ) {
            seen[i] = true;
            on_stack[i] = true;
            for &j in &succ[i] {
                if on_stack[j] {
                    back.insert((i, j));
                } else if !seen[j] {
                    walk(j, succ, on_stack, seen, post, back);
                }
            }
            on_stack[i] = false;
            post.push(i);
        }
        walk(start, succ, &mut on_stack, &mut seen, &mut post, &mut back);
        for i in 0..n {
            if !seen[i] {
                walk(i, succ, &mut on_stack, &mut seen, &mut post, &mut back);
            }
        }
        // Longest path over the remaining (acyclic) edges, in topological order.
        let mut rank = vec![0usize; n];
        for &i in post.iter().rev() {
            for &j in &succ[i] {
                if !back.contains(&(i, j)) {
                    rank[j] = rank[j].max(rank[i] + 1);
                }
            }
        }
        let mut ids: Vec<usize> = (0..n).collect();
        ids.sort_by_key(|&i| (def.is_terminal(&def.states[i].name), rank[i], i));
        ids
    }

    struct Arc {
        from: usize,
        to: usize,
        events: Vec<String>,
    }

    /// The diagram of `def` with `current` highlighted (`data-current="true"` on its state).
    pub fn svg(def: &Definition, current: &str) -> String {
        let n = def.states.len();
        let index: BTreeMap<&str, usize> = def.states.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        // Transitions per pair of states, events in file order; and what stays in its state.
        let mut pairs: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
        let mut loops: Vec<Vec<String>> = vec![vec![]; n];
        for t in &def.transitions {
            let froms: Vec<usize> = if t.from.is_empty() {
                (0..n).filter(|&i| !def.is_terminal(&def.states[i].name)).collect()
            } else {
                t.from.iter().filter_map(|f| index.get(f.as_str()).copied()).collect()
            };
            for f in froms {
                let to = t.to.as_deref().and_then(|s| index.get(s).copied()).unwrap_or(f);
                let list = if to == f { &mut loops[f] } else { pairs.entry((f, to)).or_default() };
                if !list.contains(&t.on) {
                    list.push(t.on.clone());
                }
            }
        }
        let mut succ = vec![vec![]; n];
        for &(f, t) in pairs.keys() {
            succ[f].push(t);
        }
        let order = order(def, &succ);
        let mut pos = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            pos[i] = p;
        }

        // Node boxes along the row.
        let width_of = |i: usize| (def.states[i].name.chars().count() as f64 * 7.4 + 22.0).max(72.0);
        let mut x = vec![0.0; n];
        let mut cursor = MARGIN;
        for &i in &order {
            x[i] = cursor;
            cursor += width_of(i) + GAP;
        }
        let total_w = cursor - GAP + MARGIN;
        let center = |i: usize| x[i] + width_of(i) / 2.0;

        // Arcs, shortest first, each one level above every arc it spans and above any whose label it would hit.
        let mut arcs: Vec<Arc> = pairs.into_iter().map(|((from, to), events)| Arc { from, to, events }).collect();
        arcs.sort_by_key(|a| (pos[a.from].abs_diff(pos[a.to]), pos[a.from].min(pos[a.to])));
        // Where each arc leaves and enters its states: spread over half of the box (forward arcs leave on the right
        // half of the top and enter on the left half; backward ones the other way round at the bottom), shorter
        // arcs inside longer ones, so that nested arcs do not cross at their ends.
        let mut ends: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
        for i in 0..n {
            let (l, r, c) = (x[i] + 8.0, x[i] + width_of(i) - 8.0, center(i));
            let spread = |k: usize, count: usize, a: f64, b: f64| a + (k + 1) as f64 * (b - a) / (count + 1) as f64;
            let span = |a: &Arc| pos[a.from].abs_diff(pos[a.to]);
            // Leaving forward: the longest leftmost. Entering forward: the shortest leftmost.
            let mut out_up: Vec<&Arc> = arcs.iter().filter(|a| a.from == i && pos[a.to] > pos[i]).collect();
            out_up.sort_by_key(|a| std::cmp::Reverse(span(a)));
            let mut in_up: Vec<&Arc> = arcs.iter().filter(|a| a.to == i && pos[a.from] < pos[i]).collect();
            in_up.sort_by_key(|a| span(a));
            // Leaving backward: the shortest leftmost. Entering backward: the longest leftmost.
            let mut out_down: Vec<&Arc> = arcs.iter().filter(|a| a.from == i && pos[a.to] < pos[i]).collect();
            out_down.sort_by_key(|a| span(a));
            let mut in_down: Vec<&Arc> = arcs.iter().filter(|a| a.to == i && pos[a.from] > pos[i]).collect();
            in_down.sort_by_key(|a| std::cmp::Reverse(span(a)));
            for (k, a) in out_up.iter().enumerate() {
                ends.entry((a.from, a.to)).or_default().0 = spread(k, out_up.len(), c, r);
            }
            for (k, a) in in_up.iter().enumerate() {
                ends.entry((a.from, a.to)).or_default().1 = spread(k, in_up.len(), l, c);
            }
            for (k, a) in out_down.iter().enumerate() {
                ends.entry((a.from, a.to)).or_default().0 = spread(k, out_down.len(), l, c);
            }
            for (k, a) in in_down.iter().enumerate() {
                ends.entry((a.from, a.to)).or_default().1 = spread(k, in_down.len(), c, r);
            }
        }
        let mut placed: Vec<(bool, f64, f64, f64, f64, usize)> = vec![]; // above, x1, x2, label_l, label_r, level
        let mut drawn = vec![];
        for a in &arcs {
            let above = pos[a.from] < pos[a.to];
            let (sx, ex) = ends.get(&(a.from, a.to)).copied().unwrap_or((center(a.from), center(a.to)));
            let (lo, hi) = (sx.min(ex), sx.max(ex));
            let room = ((hi - lo) / CHAR_W).floor().max(8.0) as usize;
            let mut label = a.events.join(", ");
            if label.chars().count() > room {
                let first = &a.events[0];
                label = if a.events.len() > 1 { format!("{first} +{}", a.events.len() - 1) } else { first.clone() };
            }
            let lw = label.chars().count() as f64 * CHAR_W;
            let (ll, lr) = ((lo + hi) / 2.0 - lw / 2.0, (lo + hi) / 2.0 + lw / 2.0);
            let mut level = 1 + placed
                .iter()
                .filter(|p| p.0 == above && p.1 >= lo - 1.0 && p.2 <= hi + 1.0)
                .map(|p| p.5)
                .max()
                .unwrap_or(0);
            while placed.iter().any(|p| p.0 == above && p.5 == level && p.3 < lr + 6.0 && ll - 6.0 < p.4) {
                level += 1;
            }
            placed.push((above, lo, hi, ll, lr, level));
            drawn.push((a, above, sx, ex, level, label));
        }
        let max_up = placed.iter().filter(|p| p.0).map(|p| p.5).max().unwrap_or(0) as f64;
        let max_down = placed.iter().filter(|p| !p.0).map(|p| p.5).max().unwrap_or(0) as f64;
        let has_loops = loops.iter().any(|l| !l.is_empty());
        // Under the boxes: the loop counts, then the backward arcs.
        let below = if has_loops { 18.0 } else { 6.0 };
        let top = 16.0 + (max_up + 1.0) * LEVEL;
        let bottom = top + NODE_H;
        let total_h = bottom + below + (max_down + 1.0) * LEVEL + 6.0;

        let mut out = String::new();
        let _ = write!(
            out,
            "<svg class=\"diagram\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" \
             height=\"{h:.0}\" role=\"img\" aria-label=\"State diagram of {name} v{version}, current state {cur}\" \
             data-definition=\"{name}\" data-version=\"{version}\">",
            w = total_w,
            h = total_h,
            name = esc(&def.name),
            version = def.version,
            cur = esc(current),
        );
        out.push_str(
            "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" \
             markerUnits=\"userSpaceOnUse\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker>\
             <marker id=\"arrow-current\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" \
             markerUnits=\"userSpaceOnUse\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>",
        );
        for (a, above, sx, ex, level, label) in &drawn {
            let apex = if *above { 10.0 } else { below + 4.0 } + *level as f64 * LEVEL;
            // A cubic whose control points are at 4/3 of the apex height peaks at the apex.
            let (y0, ctrl, ly) = if *above {
                (top, top - apex * 4.0 / 3.0, top - apex - 3.0)
            } else {
                (bottom, bottom + apex * 4.0 / 3.0, bottom + apex + 11.0)
            };
            let from_current = def.states[a.from].name == current;
            let (class, marker) = if from_current { ("edge from-current", "arrow-current") } else { ("edge", "arrow") };
            let _ = write!(
                out,
                "<g class=\"{class}\" data-from=\"{f}\" data-to=\"{t}\"><title>{f} → {t}: {events}</title>\
                 <path d=\"M{sx:.1},{y0:.1} C{sx:.1},{ctrl:.1} {ex:.1},{ctrl:.1} {ex:.1},{y0:.1}\" marker-end=\"url(#{marker})\"/>\
                 <text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">{label}</text></g>",
                f = esc(&def.states[a.from].name),
                t = esc(&def.states[a.to].name),
                events = esc(&a.events.join(", ")),
                lx = (sx + ex) / 2.0,
                label = esc(label),
            );
        }
        if let Some(&first) = order.first() {
            if def.states[first].name == def.initial {
                let cy = top + NODE_H / 2.0;
                let _ = write!(
                    out,
                    "<g class=\"initial\"><circle class=\"start\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\"/>\
                     <path class=\"start-line\" d=\"M{a:.1},{cy:.1} L{b:.1},{cy:.1}\" stroke=\"#111827\" marker-end=\"url(#arrow)\"/></g>",
                    cx = x[first] - 24.0,
                    a = x[first] - 19.0,
                    b = x[first] - 2.0,
                );
            }
        }
        for &i in &order {
            let s = &def.states[i];
            let w = width_of(i);
            let is_current = s.name == current;
            let terminal = def.is_terminal(&s.name);
            let mut title = s.description.clone().unwrap_or_default();
            if !s.timers.is_empty() {
                title.push_str(&format!(" Timers: {}.", s.timers.join(", ")));
            }
            let _ = write!(
                out,
                "<g class=\"state{term}\" data-state=\"{name}\" data-current=\"{is_current}\"><title>{title}</title>\
                 <rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{NODE_H}\" rx=\"8\"/>",
                term = if terminal { " terminal" } else { "" },
                name = esc(&s.name),
                title = esc(title.trim()),
                x = x[i],
            );
            if terminal {
                let _ = write!(
                    out,
                    "<rect class=\"inner\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"6\"/>",
                    x[i] + 3.0,
                    top + 3.0,
                    w - 6.0,
                    NODE_H - 6.0
                );
            }
            let _ = write!(
                out,
                "<text class=\"name\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                center(i),
                top + NODE_H / 2.0 + 4.0,
                esc(&s.name)
            );
            if !loops[i].is_empty() {
                let _ = write!(
                    out,
                    "<text class=\"loops\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\"><title>stays on: {}</title>↻ {}</text>",
                    center(i),
                    bottom + 13.0,
                    esc(&loops[i].join(", ")),
                    loops[i].len()
                );
            }
            out.push_str("</g>");
        }
        out.push_str("</svg>");
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::engine::definition::Catalog;

        fn subscription() -> Definition {
            let src = include_str!("../../workflows/subscription.toml");
            let catalog = Catalog {
                states: vec![],
                events: vec![
                    "create",
                    "order_paid",
                    "expire",
                    "resume",
                    "release",
                    "renew",
                    "upgrade",
                    "start_checks",
                    "bind",
                    "binding_confirmed",
                    "binding_refused",
                    "unlinked",
                ],
                guards: vec![
                    "reported_opened",
                    "reported_closed",
                    "reported_expired",
                    "bindable",
                    "is_pending_binding",
                ],
                actions: vec![
                    "record_order",
                    "answer_create",
                    "poll",
                    "rearm_poll",
                    "rearm_late_poll",
                    "record_status",
                    "activate",
                    "release",
                    "record_poll_failure",
                    "record_payment",
                    "note_deadline",
                    "expire",
                    "schedule_reconcile",
                    "resume",
                    "reconciled_resume",
                    "record_renewal",
                    "record_upgrade",
                    "periodic_check",
                    "arm_check",
                    "reserve_binding",
                    "refuse_already_bound",
                    "refuse_not_active",
                    "confirm_binding",
                    "record_refusal",
                    "unlink",
                ],
                calls: vec!["describe_instance"],
            };
            Definition::parse("workflows/subscription.toml", src, &catalog).expect("the definition parses")
        }

        #[test]
        fn states_run_from_the_initial_one_to_the_terminal_ones() {
            let d = subscription();
            let svg = svg(&d, "opening");
            let at = |s: &str| svg.find(&format!("data-state=\"{s}\"")).unwrap_or_else(|| panic!("{s} drawn"));
            // Left to right in the document order of the nodes: new, opening, ..., released last.
            assert!(at("new") < at("opening"));
            assert!(at("opening") < at("active"));
            assert!(at("active") < at("released"));
            assert!(at("expired") < at("released"));
            assert_eq!(svg.matches("data-current=\"true\"").count(), 1);
            assert!(svg.contains("data-state=\"opening\" data-current=\"true\""), "{svg}");
            assert!(svg.contains("class=\"state terminal\" data-state=\"released\""), "{svg}");
        }

        #[test]
        fn every_transition_between_two_states_is_one_arc_and_loops_are_listed() {
            let d = subscription();
            let svg = svg(&d, "active");
            // opening → active on describe_instance.ok and order_paid: one arc naming both.
            let arc = svg.split("<g class=\"edge").find(|g| g.contains("data-from=\"opening\" data-to=\"active\""));
            let arc = arc.expect("an arc from opening to active");
            assert!(arc.contains("describe_instance.ok, order_paid"), "{arc}");
            assert_eq!(svg.matches("data-from=\"opening\" data-to=\"active\"").count(), 1);
            // Edges out of the current state are marked.
            assert!(svg.contains("<g class=\"edge from-current\" data-from=\"active\" data-to=\"expired\""), "{svg}");
            // active stays active on bind, renew, ...: listed under the node.
            assert!(
                svg.contains("stays on: order_paid, resume, reconcile, check, start_checks, describe_instance.ok"),
                "{svg}"
            );
        }

        #[test]
        fn names_are_escaped() {
            let mut d = subscription();
            d.states[1].description = Some("<script>alert(1)</script> & more".into());
            let svg = svg(&d, "x\"><script>");
            assert!(!svg.contains("<script>"), "{svg}");
            assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
            assert!(!svg.contains("data-current=\"true\""), "an unknown state highlights nothing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        for (name, _) in TEMPLATES {
            assert!(templates().get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn times_and_spans_read_like_the_script_writes_them() {
        assert_eq!(span(TimeDelta::seconds(5)), "5s");
        assert_eq!(span(TimeDelta::seconds(252)), "4m 12s");
        assert_eq!(span(TimeDelta::seconds(7500)), "2h 5m");
        assert_eq!(span(TimeDelta::seconds(3 * 86400 + 4 * 3600 + 59)), "3d 4h");
        let now = DateTime::parse_from_rfc3339("2026-11-27T08:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(remaining(now + TimeDelta::seconds(90), now), "in 1m 30s");
        assert_eq!(remaining(now - TimeDelta::seconds(3), now), "due 3s ago");
        assert_eq!(iso(now + TimeDelta::milliseconds(5)), "2026-11-27T08:00:00.005Z");
    }

    #[test]
    fn next_is_followed_only_to_console_pages() {
        assert_eq!(console_next("/console").as_deref(), Some("/console"));
        assert_eq!(console_next("/console?kind=subscription").as_deref(), Some("/console?kind=subscription"));
        assert_eq!(
            console_next("/console/entities/subscription/1").as_deref(),
            Some("/console/entities/subscription/1")
        );
        for bad in ["/", "/consolex", "/console/login", "//evil.example/console", "https://evil.example/console", ""] {
            assert_eq!(console_next(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn form_tokens_belong_to_their_session() {
        let (a, b) = (crate::app::accounts::random_token(), crate::app::accounts::random_token());
        assert!(is_token(&a) && a != b);
        assert_eq!(session_csrf(&a), session_csrf(&a));
        assert_ne!(session_csrf(&a), session_csrf(&b));
        assert_ne!(session_csrf(&a), a, "the form token does not give the session away");
    }
}
