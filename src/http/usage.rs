//! `POST /api/v1/usage`: usage records from Zilliz Cloud's services; and the operators' view of metering.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::auth::{Operator, Service};
use super::error::{ApiError, ErrorBody};
use super::error::{PayloadTooLarge, Unauthorized, Unavailable};
use super::AppState;
use crate::app::usage::{self, StoreError, Stored};
use crate::domain::ids::OrgId;
use crate::domain::metering::{self, Metering};
use crate::domain::organization;
use crate::engine::EntityKey;

/// The usage part of the API description.
#[derive(OpenApi)]
#[openapi(paths(post_usage, org_metering))]
pub struct UsageApi;

/// One usage record: `cu` compute units of `cu_type` over `[start, end)`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// The sender's id of the record: a repeat with the same content is harmless, with other content refused.
    #[schema(example = "rec-2026-11-27T08-cluster-1")]
    record_id: String,
    /// `org_<32 hex>`.
    #[schema(pattern = "^org_[A-Za-z0-9_-]{1,60}$")]
    org_id: String,
    /// The cluster or other resource.
    resource_id: String,
    /// A CU type of the price catalog.
    cu_type: String,
    /// Above 0, at most 10000, at most 3 decimals.
    cu: f64,
    start: DateTime<Utc>,
    /// After `start`, at most 24 hours later, not in the future, not older than 7 days.
    end: DateTime<Utc>,
}

/// A stored (or repeated) usage record.
#[derive(Serialize, ToSchema)]
pub struct UsageStored {
    pub record_id: String,
    /// `new` or `repeated`.
    pub stored: &'static str,
    /// Whether the organization pays through a bound, active subscription now; otherwise recorded, unbilled.
    pub billable: bool,
}

/// Records usage of Zilliz Cloud's services, idempotent by `record_id`.
#[utoipa::path(post, path = "/api/v1/usage", tag = "usage", request_body = UsageBody,
    security(("service" = [])),
    responses(
        (status = 200, body = UsageStored, description = "A repeat of a stored record: nothing changed"),
        (status = 201, body = UsageStored, description = "Stored"),
        (status = 400, body = ErrorBody, description = "`invalid_json`, `invalid_id` or `invalid_org_id`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the service's"),
        (status = 404, body = ErrorBody, description = "`org_not_found`"),
        (status = 409, body = ErrorBody, description = "`record_conflict`: another record was stored under this `record_id`"),
        (status = 413, response = PayloadTooLarge),
        (status = 422, body = ErrorBody,
            description = "`invalid_id`, `unknown_cu_type`, `invalid_cu`, `invalid_interval`, `interval_in_future` or `interval_too_old`"),
        (status = 503, response = Unavailable),
    ))]
async fn post_usage(
    state: web::Data<AppState>,
    _s: Service,
    body: web::Json<UsageBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let org = OrgId::parse(b.org_id)?;
    let now = state.engine.clock().now();
    let record =
        usage::parse(&state.catalog, now, b.record_id, org.clone(), b.resource_id, b.cu_type, b.cu, b.start, b.end)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.message))?;
    let org_record = state.engine.record(
        &EntityKey::new(organization::KIND, org.as_str())
            .map_err(|e| ApiError::bad_request("invalid_org_id", e.to_string()))?,
    )?;
    let Some(org_record) = org_record else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "org_not_found", "no such organization"));
    };
    let stored = usage::store(&state.engine, &record).await.map_err(|e| match e {
        StoreError::Conflict => {
            ApiError::new(StatusCode::CONFLICT, "record_conflict", "a different record was stored under this record_id")
        }
        StoreError::Storage(detail) => {
            tracing::error!(error = %detail, "storing usage failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "try again shortly")
        }
    })?;
    // Billed only while the organization pays through an active subscription; otherwise recorded, unbilled.
    let billable = organization::State::parse(&org_record.state).is_some_and(organization::State::billable);
    let status = if stored == Stored::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(UsageStored {
        record_id: record.record_id.to_string(),
        stored: if stored == Stored::New { "new" } else { "repeated" },
        billable,
    }))
}

/// An organization's metering: every window of its subscriptions, totals by status, and unbilled usage.
#[derive(Serialize, ToSchema)]
pub struct OrgMetering {
    pub org_id: OrgId,
    pub windows: Vec<MeteringWindow>,
    /// By window status (`pushed`, `failed`, ...).
    pub totals: std::collections::BTreeMap<String, MeteringTotal>,
    /// Usage of the last 7 days that no window of the organization covers.
    pub unbilled: Unbilled,
}

/// One metering window (a whole hour, or merged) of a subscription.
#[derive(Serialize, ToSchema)]
pub struct MeteringWindow {
    pub instance_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `metering`, `pushing`, `pushed`, `empty`, `failed` or `too_short`.
    pub status: String,
    /// Marketplace units.
    pub units: u64,
    /// Yuan, three decimals.
    pub yuan: String,
    /// The marketplace takes the window until then.
    pub deadline: DateTime<Utc>,
    pub request_id: Option<String>,
    pub error: Option<String>,
    /// Usage records that overlapped the window.
    pub records: u64,
}

/// Windows and units of one status.
#[derive(Serialize, ToSchema)]
pub struct MeteringTotal {
    pub windows: u64,
    pub units: u64,
    pub yuan: String,
}

/// Usage recorded but billed by no window.
#[derive(Serialize, ToSchema)]
pub struct Unbilled {
    pub records: u64,
    pub units: u64,
    pub yuan: String,
}

/// An organization's metering windows (pending, pushed, failed, too short) and totals in units and yuan.
#[utoipa::path(get, path = "/api/v1/ops/orgs/{org_id}/metering", tag = "operators",
    params(("org_id" = String, Path, description = "`org_<32 hex>`", pattern = "^org_[A-Za-z0-9_-]{1,60}$")),
    security(("operator" = [])),
    responses(
        (status = 200, body = OrgMetering),
        (status = 400, body = ErrorBody, description = "`invalid_id` or `invalid_org_id`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such organization"),
        (status = 503, response = Unavailable),
    ))]
async fn org_metering(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = OrgId::parse(path.into_inner())?;
    let key = EntityKey::new(organization::KIND, org.as_str())
        .map_err(|e| ApiError::bad_request("invalid_org_id", e.to_string()))?;
    let rec = state.engine.record(&key)?.ok_or_else(|| ApiError::not_found("no such organization"))?;
    let data: organization::Organization = serde_json::from_value(rec.data).unwrap_or_default();
    let mut instances: Vec<String> = data.history.iter().filter_map(|h| h.instance_id.clone()).collect();
    instances.sort();
    instances.dedup();
    let unit_yuan: f64 = state.catalog.unit_yuan.parse().unwrap_or(0.001);
    let mut windows: Vec<MeteringWindow> = vec![];
    let mut by_status: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for instance in instances {
        let Ok(mk) = EntityKey::new(metering::KIND, &instance) else { continue };
        let Some(m) = state.engine.record(&mk)? else { continue };
        let m: Metering = serde_json::from_value(m.data).unwrap_or_default();
        for w in m.windows.iter().filter(|w| w.org == org) {
            let e = by_status.entry(w.status.clone()).or_default();
            e.0 += 1;
            e.1 += w.units;
            windows.push(MeteringWindow {
                instance_id: instance.clone(),
                start: w.start,
                end: w.end,
                status: w.status.clone(),
                units: w.units,
                yuan: format!("{:.3}", w.units as f64 * unit_yuan),
                deadline: w.deadline,
                request_id: w.request_id.clone(),
                error: w.error.clone(),
                records: w.records,
            });
        }
    }
    // Usage not covered by any window of this organization: recorded, not billed (no bound, active
    // subscription at the time), over the records the service still keeps (the last 7 days).
    let now = state.engine.clock().now();
    let records = usage::overlapping(&state.engine, &org, now - usage::MAX_AGE, now + usage::MAX_SKEW)
        .map_err(|e| ApiError::from(crate::engine::Error::Storage(e)))?;
    let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = windows.iter().map(|w| (w.start, w.end)).collect();
    intervals.sort();
    let mut unbilled_numerator: u128 = 0;
    let mut unbilled_records = 0u64;
    for r in &records {
        let Some(price) = state.catalog.price(&r.cu_type) else { continue };
        let whole = crate::domain::pricing::numerator(price, r.milli_cu, r.start, r.end, r.start, r.end);
        let covered: u128 = intervals
            .iter()
            .map(|(ws, we)| crate::domain::pricing::numerator(price, r.milli_cu, r.start, r.end, *ws, *we))
            .sum();
        if whole > covered {
            unbilled_numerator += whole - covered;
            unbilled_records += 1;
        }
    }
    let unbilled_units = unbilled_numerator / crate::domain::pricing::DENOMINATOR;
    let totals = by_status
        .into_iter()
        .map(|(s, (n, u))| (s, MeteringTotal { windows: n, units: u, yuan: format!("{:.3}", u as f64 * unit_yuan) }))
        .collect();
    Ok(HttpResponse::Ok().json(OrgMetering {
        org_id: org,
        windows,
        totals,
        unbilled: Unbilled {
            records: unbilled_records,
            units: unbilled_units as u64,
            yuan: format!("{:.3}", unbilled_units as f64 * unit_yuan),
        },
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/usage", web::post().to(post_usage));
}

pub fn configure_ops(cfg: &mut web::ServiceConfig) {
    cfg.route("/orgs/{org_id}/metering", web::get().to(org_metering));
}
