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
use crate::app::finance::{self, PushedWindow};
use crate::app::usage::{self, Stored};
use crate::domain::ids::OrgId;

/// The usage part of the API description.
#[derive(OpenApi)]
#[openapi(paths(post_usage, org_metering, pushed_windows))]
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
    let org_id = OrgId::parse(b.org_id)?;
    let report = usage::Report {
        record_id: b.record_id,
        org_id,
        resource_id: b.resource_id,
        cu_type: b.cu_type,
        cu: b.cu,
        start: b.start,
        end: b.end,
    };
    let r = state.record_usage(report).await?;
    let new = r.stored == Stored::New;
    Ok(HttpResponse::build(if new { StatusCode::CREATED } else { StatusCode::OK }).json(UsageStored {
        record_id: r.record_id,
        stored: if new { "new" } else { "repeated" },
        billable: r.billable,
    }))
}

pub use crate::app::usage::{MeteringTotal, MeteringWindow, OrgMetering, Unbilled};

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
    Ok(HttpResponse::Ok().json(state.org_metering(&org).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FinanceQuery {
    /// A Beijing calendar month, `YYYY-MM`; default: the month before this one.
    month: Option<String>,
    /// `csv` (default) or `json`.
    format: Option<String>,
}

/// Finance's monthly export as JSON.
#[derive(Serialize, ToSchema)]
pub struct PushedWindows {
    pub month: String,
    pub windows: Vec<PushedWindow>,
    pub units: u64,
    pub yuan: String,
}

/// Every window pushed to the marketplace whose hour starts in the month (Beijing time): instance, organization,
/// window, units, yuan and request id; CSV (RFC 4180) or JSON.
#[utoipa::path(get, path = "/api/v1/ops/finance/pushed-windows", tag = "operators", params(FinanceQuery),
    security(("operator" = [])),
    responses(
        (status = 200, description = "The windows, oldest first", content(
            (String = "text/csv"),
            (PushedWindows = "application/json"),
        )),
        (status = 400, body = ErrorBody, description = "`invalid_query`, `invalid_month` or `invalid_format`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
async fn pushed_windows(
    state: web::Data<AppState>,
    _op: Operator,
    q: web::Query<FinanceQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let month = match &q.month {
        Some(m) => finance::Month::parse(m)?,
        None => finance::last_month(state.engine.clock().now()),
    };
    let csv = match q.format.as_deref() {
        None | Some("csv") => true,
        Some("json") => false,
        Some(_) => return Err(ApiError::bad_request("invalid_format", "format is csv or json")),
    };
    let engine = state.app.clone();
    // A month of every subscription's windows is a scan: off the async workers.
    let windows =
        crate::engine::offload(async move { engine.pushed_windows(month).await }).await.map_err(ApiError::from)??;
    if csv {
        let name = format!("attachment; filename=\"marketflow-pushed-{}.csv\"", month.label());
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header(("Content-Disposition", name))
            .body(finance::to_csv(&windows)));
    }
    let units = windows.iter().map(|w| w.units).sum();
    let yuan = crate::domain::pricing::yuan(units, &state.catalog.unit_yuan).unwrap_or_default();
    Ok(HttpResponse::Ok().json(PushedWindows { month: month.label(), windows, units, yuan }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/usage", web::post().to(post_usage));
}

pub fn configure_ops(cfg: &mut web::ServiceConfig) {
    cfg.route("/orgs/{org_id}/metering", web::get().to(org_metering))
        .route("/finance/pushed-windows", web::get().to(pushed_windows));
}
