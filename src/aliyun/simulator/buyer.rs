//! The `/sim/` API: plays the buyer (open, close, run out of balance, top up, click 免登) and lets
//! tests read what the marketplace saw and inject faults. JSON in and out; errors are
//! `{"code", "message"}` with stable snake_case codes, like the service's own API.
//!
//! | route | what |
//! |---|---|
//! | `POST /sim/instances` `{ali_uid, sku_id?, activation_after_seconds?, order_pay?}` | open: OPENING, createInstance, OPENED after the delay (201) |
//! | `GET /sim/instances`, `GET /sim/instances/{id}` | state and timeline (`{id}`: orderBizId or the service's instanceId) |
//! | `POST /sim/instances/{id}/close` | CLOSED + releaseInstance (isRefund=false) |
//! | `POST /sim/instances/{id}/expire` | ran out of balance: EXPIRED + expiredInstance (from OPENED) |
//! | `POST /sim/instances/{id}/topup` | topped up: OPENED + resumeInstance (from EXPIRED) |
//! | `GET /sim/instances/{id}/sso-url` | `{url, instance_id, time_stamp}`: the signed 免登 link |
//! | `GET /sim/metering?instance_id=` | accepted metering records with their RequestIds, and totals per Key |
//! | `GET`/`POST /sim/faults` | fault injection (see [`Faults`]); `GET` also counts what was injected |
//! | `GET /sim/notifications` | notices the marketplace gave up on (confirmed or not) |
//! | `POST /sim/notifications/{id}/relist` | lists a confirmed notice again (at-least-once, as the real one may) |

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::delivery::SpiAction;
use super::state::{Failure, Faults, Instance, Status, MAX_INSTANCES};
use super::Shared;
use crate::aliyun::encoding::{encode_query, parse_form};
use crate::aliyun::spi::{format_time, AliUid, SkuId};
use crate::aliyun::token::spi_token;

/// Longest activation delay a buyer may ask for.
pub(crate) const MAX_ACTIVATION_SECONDS: u64 = 30 * 24 * 3600;

/// An error answer of the `/sim/` API.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SimError {
    status: StatusCode,
    code: String,
    message: String,
}

impl SimError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }
    fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no instance {id}"))
    }
    fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_state", message)
    }
}

impl From<Failure> for SimError {
    fn from(f: Failure) -> Self {
        Self {
            status: StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            code: f.code,
            message: f.message,
        }
    }
}

impl ResponseError for SimError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.insert_header(("Retry-After", "1"));
        }
        r.json(json!({ "code": self.code, "message": self.message }))
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, SimError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| SimError::bad_request("invalid_json", e.to_string()))
}

/// `POST /sim/instances`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenInstance {
    /// The buyer's Alibaba Cloud account UID.
    pub ali_uid: Option<String>,
    /// Default [`super::DEFAULT_SKU`].
    #[serde(default)]
    pub sku_id: Option<String>,
    /// Service seconds until OPENED; default random within the configured range (1–5 min).
    #[serde(default)]
    pub activation_after_seconds: Option<u64>,
    /// Send orderPay when it opens; default from the configuration.
    #[serde(default)]
    pub order_pay: Option<bool>,
}

async fn open(shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, SimError> {
    let req: OpenInstance = parse_json(&body)?;
    let ali_uid = req.ali_uid.ok_or_else(|| SimError::bad_request("missing_parameter", "ali_uid is required"))?;
    let ali_uid =
        AliUid::new(ali_uid).map_err(|e| SimError::bad_request("invalid_parameter", format!("ali_uid {e}")))?;
    let sku_id = SkuId::new(req.sku_id.unwrap_or_else(|| super::DEFAULT_SKU.to_string()))
        .map_err(|e| SimError::bad_request("invalid_parameter", format!("sku_id {e}")))?;
    if req.activation_after_seconds.is_some_and(|s| s > MAX_ACTIVATION_SECONDS) {
        return Err(SimError::bad_request(
            "invalid_parameter",
            format!("activation_after_seconds must be at most {MAX_ACTIVATION_SECONDS}"),
        ));
    }
    let now = shared.now();
    let mut state = shared.lock();
    if state.instances.len() >= MAX_INSTANCES {
        return Err(SimError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the simulator holds too many instances",
        ));
    }
    let delay_ms = match req.activation_after_seconds {
        Some(s) => s.saturating_mul(1000),
        None => {
            let (min, max) = shared.activation_delay;
            let (min, max) = (min.as_millis() as u64, max.as_millis() as u64);
            state.rng.gen_range(min..=max)
        }
    };
    let order_biz_id = state.new_numeric_id(12);
    let order_id = state.new_numeric_id(15);
    // Both bounds are at most 30 days (checked at start-up and above), so this cannot overflow.
    let delay =
        chrono::TimeDelta::try_milliseconds(delay_ms.min(i64::MAX as u64) as i64).unwrap_or(chrono::TimeDelta::MAX);
    let activation_due = now.checked_add_signed(delay).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let mut instance = Instance {
        instance_id: order_biz_id.clone(),
        order_biz_id: order_biz_id.clone(),
        order_id,
        ali_uid: ali_uid.into_string(),
        sku_id: sku_id.into_string(),
        product_code: shared.product_code.clone(),
        status: Status::Opening,
        created_at: now,
        activation_due,
        opened_at: None,
        expired_at: None,
        closed_at: None,
        service_instance_id: None,
        auth_url: None,
        app_json: None,
        extend_json: None,
        create_failed: false,
        order_pay: req.order_pay.unwrap_or(shared.order_pay),
        pending_spi: 0,
        timeline: Vec::new(),
    };
    instance.log(
        now,
        "opened",
        Some(format!("by aliUid {}; activation after {} s", instance.ali_uid, delay_ms / 1000)),
    );
    state.instances.insert(order_biz_id.clone(), instance);
    if let Err(e) = shared.enqueue(&mut state, &order_biz_id, SpiAction::CreateInstance) {
        state.instances.remove(&order_biz_id);
        return Err(e.into());
    }
    let view = state.instances.get(&order_biz_id).map(|i| serde_json::to_value(i).unwrap_or_default());
    Ok(HttpResponse::Created().json(view))
}

async fn list(shared: web::Data<Shared>) -> HttpResponse {
    let state = shared.lock();
    let instances: Vec<&Instance> = state.instances.values().collect();
    HttpResponse::Ok().json(json!({ "instances": instances }))
}

async fn get(shared: web::Data<Shared>, id: web::Path<String>) -> Result<HttpResponse, SimError> {
    let state = shared.lock();
    let instance = state.instance(&id).ok_or_else(|| SimError::not_found(&id))?;
    Ok(HttpResponse::Ok().json(instance))
}

/// A buyer's action on an existing instance.
#[derive(Debug, Clone, Copy)]
enum Change {
    Close,
    Expire,
    TopUp,
}

async fn change(shared: &Shared, id: &str, change: Change) -> Result<HttpResponse, SimError> {
    let now = shared.now();
    let mut guard = shared.lock();
    let state = &mut *guard;
    let key = state.resolve(id).ok_or_else(|| SimError::not_found(id))?;
    let status = state.instances.get(&key).map(|i| i.status).ok_or_else(|| SimError::not_found(id))?;
    let (next, action, event) = match (change, status) {
        (Change::Close, Status::Closed) => {
            return Err(SimError::invalid_state(format!("instance {id} is already closed")))
        }
        (Change::Close, _) => (Status::Closed, SpiAction::ReleaseInstance, "closed"),
        (Change::Expire, Status::Opened) => (Status::Expired, SpiAction::ExpiredInstance, "expired"),
        (Change::Expire, s) => {
            return Err(SimError::invalid_state(format!(
                "only an OPENED instance can run out of balance; {id} is {}",
                s.as_str()
            )))
        }
        (Change::TopUp, Status::Expired) => (Status::Opened, SpiAction::ResumeInstance, "resumed"),
        (Change::TopUp, s) => {
            return Err(SimError::invalid_state(format!(
                "only an EXPIRED instance can be topped up; {id} is {}",
                s.as_str()
            )))
        }
    };
    shared.enqueue(state, &key, action)?;
    let Some(instance) = state.instances.get_mut(&key) else { return Err(SimError::not_found(id)) };
    instance.status = next;
    match next {
        Status::Closed => instance.closed_at = Some(now),
        Status::Expired => instance.expired_at = Some(now),
        _ => {}
    }
    instance.log(now, event, Some(format!("{} → {}", status.as_str(), next.as_str())));
    Ok(HttpResponse::Ok().json(&*instance))
}

async fn close(shared: web::Data<Shared>, id: web::Path<String>) -> Result<HttpResponse, SimError> {
    change(&shared, &id, Change::Close).await
}

async fn expire(shared: web::Data<Shared>, id: web::Path<String>) -> Result<HttpResponse, SimError> {
    change(&shared, &id, Change::Expire).await
}

async fn topup(shared: web::Data<Shared>, id: web::Path<String>) -> Result<HttpResponse, SimError> {
    change(&shared, &id, Change::TopUp).await
}

/// The 免登 link the console would open: `authUrl` plus `action=verify`, `instanceId`,
/// `timeStamp` (Beijing wall clock of the simulator's now) and the MD5 token. Parameters already
/// in `authUrl` are covered by the token too, because the service receives them with the others
/// and the token rule hashes every parameter it receives.
pub fn sso_url(auth_url: &str, instance_id: &str, time_stamp: &str, isv_key: &str) -> Result<String, String> {
    let (without_fragment, fragment) = match auth_url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (auth_url, None),
    };
    let (base, existing) = match without_fragment.split_once('?') {
        Some((b, q)) => (b, q),
        None => (without_fragment, ""),
    };
    let mut all = parse_form(existing).map_err(|e| format!("authUrl has a malformed query: {e}"))?;
    let ours = [("action", "verify"), ("instanceId", instance_id), ("timeStamp", time_stamp)];
    for (k, _) in ours {
        if all.iter().any(|(name, _)| name == k || name == "token") {
            return Err(format!("authUrl already carries {k} or token"));
        }
    }
    all.extend(ours.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let token = spi_token(&all, isv_key);
    let mut query = encode_query(ours.iter().copied().chain([("token", token.as_str())]));
    if !existing.is_empty() {
        query = format!("{existing}&{query}");
    }
    let mut url = format!("{base}?{query}");
    if let Some(f) = fragment {
        url.push('#');
        url.push_str(f);
    }
    Ok(url)
}

#[derive(Serialize)]
struct SsoUrl {
    url: String,
    instance_id: String,
    time_stamp: String,
}

async fn sso(shared: web::Data<Shared>, id: web::Path<String>) -> Result<HttpResponse, SimError> {
    let now = shared.now();
    let (auth_url, instance_id) = {
        let state = shared.lock();
        let i = state.instance(&id).ok_or_else(|| SimError::not_found(&id))?;
        let auth_url = i.auth_url.clone().ok_or_else(|| {
            SimError::invalid_state(format!("instance {id} has no authUrl yet (createInstance has not succeeded)"))
        })?;
        (auth_url, i.spi_instance_id().to_string())
    };
    let time_stamp = format_time(now);
    let url = sso_url(&auth_url, &instance_id, &time_stamp, shared.isv_key.expose())
        .map_err(|m| SimError::invalid_state(format!("cannot build the 免登 link: {m}")))?;
    Ok(HttpResponse::Ok().json(SsoUrl { url, instance_id, time_stamp }))
}

async fn metering(shared: web::Data<Shared>, req: HttpRequest) -> Result<HttpResponse, SimError> {
    let query = parse_form(req.query_string()).map_err(|e| SimError::bad_request("invalid_query", e.to_string()))?;
    let wanted = query.iter().find(|(k, _)| k == "instance_id").map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let state = shared.lock();
    let key = match &wanted {
        Some(id) => Some(state.resolve(id).ok_or_else(|| SimError::not_found(id))?),
        None => None,
    };
    let records: Vec<_> = state.metering.iter().filter(|m| key.as_ref().is_none_or(|k| &m.order_biz_id == k)).collect();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &records {
        for e in &r.entities {
            let t = totals.entry(e.key.as_str()).or_default();
            *t = t.saturating_add(e.value);
        }
    }
    let duplicates = records.iter().filter(|r| r.duplicate).count();
    if query.iter().any(|(k, v)| k == "summary" && v == "true") {
        // Counts only: what a watcher polls while 100,000 windows arrive, without their records.
        let calls: std::collections::BTreeSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
        let summary =
            json!({ "records": records.len(), "calls": calls.len(), "totals": totals, "duplicates": duplicates });
        return Ok(HttpResponse::Ok().json(summary));
    }
    Ok(HttpResponse::Ok().json(json!({ "records": records, "totals": totals, "duplicates": duplicates })))
}

/// The fault settings, and how many faults were injected so far (`injected`).
async fn get_faults(shared: web::Data<Shared>) -> HttpResponse {
    let state = shared.lock();
    let mut body = serde_json::to_value(&state.faults).unwrap_or_default();
    body["injected"] = serde_json::to_value(&state.injected).unwrap_or_default();
    HttpResponse::Ok().json(body)
}

async fn set_faults(shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, SimError> {
    let faults: Faults = parse_json(&body)?;
    faults.validate().map_err(|m| SimError::bad_request("invalid_parameter", m))?;
    tracing::info!(?faults, "simulator faults set");
    let mut state = shared.lock();
    state.set_faults(faults);
    Ok(HttpResponse::Ok().json(&state.faults))
}

async fn notifications(shared: web::Data<Shared>) -> HttpResponse {
    let state = shared.lock();
    let list: Vec<_> = state
        .notifications
        .iter()
        .map(|n| {
            json!({
                "notification_request_id": n.id,
                "action": n.action,
                "created_at": n.created_at,
                "message": n.message,
                "confirmed": n.confirmed,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "notifications": list }))
}

/// Lists a confirmed notice again: DescribeFailedNotifications is at-least-once, and the service must take a notice
/// it sees twice once.
async fn relist(shared: web::Data<Shared>, id: web::Path<String>) -> Result<HttpResponse, SimError> {
    let mut state = shared.lock();
    let n = state
        .notifications
        .iter_mut()
        .find(|n| n.id == *id)
        .ok_or_else(|| SimError::new(StatusCode::NOT_FOUND, "not_found", format!("no notification {id}")))?;
    n.confirmed = false;
    Ok(HttpResponse::Ok().json(json!({ "notification_request_id": n.id, "confirmed": false })))
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sim/instances", web::post().to(open))
        .route("/sim/instances", web::get().to(list))
        .route("/sim/instances/{id}", web::get().to(get))
        .route("/sim/instances/{id}/close", web::post().to(close))
        .route("/sim/instances/{id}/expire", web::post().to(expire))
        .route("/sim/instances/{id}/topup", web::post().to(topup))
        .route("/sim/instances/{id}/sso-url", web::get().to(sso))
        .route("/sim/metering", web::get().to(metering))
        .route("/sim/faults", web::get().to(get_faults))
        .route("/sim/faults", web::post().to(set_faults))
        .route("/sim/notifications", web::get().to(notifications))
        .route("/sim/notifications/{id}/relist", web::post().to(relist));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aliyun::token::verify_spi_token;

    #[test]
    fn sso_url_is_encoded_and_verifiable() {
        let url = sso_url("http://127.0.0.1:8080/aliyun/sso", "1234", "2026-11-27 23:50:00", "k").unwrap();
        assert!(url.starts_with("http://127.0.0.1:8080/aliyun/sso?action=verify&instanceId=1234&timeStamp=2026-11-27%2023%3A50%3A00&token="), "{url}");
        let query = url.split_once('?').unwrap().1;
        assert!(verify_spi_token(&parse_form(query).unwrap(), "k").is_ok());
    }

    #[test]
    fn sso_url_keeps_existing_parameters_in_the_token() {
        let url = sso_url("https://x/sso?lang=zh-CN#top", "1", "2026-11-27 23:50:00", "k").unwrap();
        assert!(url.starts_with("https://x/sso?lang=zh-CN&action=verify&"), "{url}");
        assert!(url.ends_with("#top"));
        let query = url.split_once('?').unwrap().1.split_once('#').unwrap().0;
        assert!(verify_spi_token(&parse_form(query).unwrap(), "k").is_ok());
        assert!(sso_url("https://x/sso?token=1", "1", "t", "k").is_err());
    }
}
