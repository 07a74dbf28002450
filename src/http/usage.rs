//! `POST /api/v1/usage`: usage records from Zilliz Cloud's services; and the operators' view of metering.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Operator, Service};
use super::error::ApiError;
use super::AppState;
use crate::domain::ids::OrgId;
use crate::domain::metering::{self, Metering};
use crate::domain::organization;
use crate::engine::EntityKey;
use crate::usage::{self, StoreError, Stored};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageBody {
    record_id: String,
    org_id: String,
    resource_id: String,
    cu_type: String,
    cu: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

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
    let stored =
        usage::store(&**state.engine.store(), state.engine.committer(), &record).await.map_err(|e| match e {
            StoreError::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                "record_conflict",
                "a different record was stored under this record_id",
            ),
            StoreError::Storage(detail) => {
                tracing::error!(error = %detail, "storing usage failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "try again shortly")
            }
        })?;
    // Billed only while the organization pays through an active subscription; otherwise recorded, unbilled.
    let billable = org_record.state == "bound";
    let status = if stored == Stored::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(json!({
        "record_id": record.record_id,
        "stored": if stored == Stored::New { "new" } else { "repeated" },
        "billable": billable,
    })))
}

/// An organization's metering windows (pending, pushed, failed, too short) and totals in units and yuan.
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
    let mut windows: Vec<Value> = vec![];
    let mut by_status: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for instance in instances {
        let Ok(mk) = EntityKey::new(metering::KIND, &instance) else { continue };
        let Some(m) = state.engine.record(&mk)? else { continue };
        let m: Metering = serde_json::from_value(m.data).unwrap_or_default();
        for w in m.windows.iter().filter(|w| w.org == org) {
            let e = by_status.entry(w.status.clone()).or_default();
            e.0 += 1;
            e.1 += w.units;
            windows.push(json!({
                "instance_id": instance, "start": w.start, "end": w.end, "status": w.status, "units": w.units,
                "yuan": format!("{:.3}", w.units as f64 * unit_yuan), "deadline": w.deadline,
                "request_id": w.request_id, "error": w.error, "records": w.records,
            }));
        }
    }
    // Usage not covered by any window of this organization: recorded, not billed (no bound, active
    // subscription at the time), over the records the service still keeps (the last 7 days).
    let now = state.engine.clock().now();
    let records = usage::overlapping(&**state.engine.store(), &org, now - usage::MAX_AGE, now + usage::MAX_SKEW)
        .map_err(|e| ApiError::from(crate::engine::Error::Storage(e)))?;
    let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = windows
        .iter()
        .filter_map(|w| Some((w["start"].as_str()?.parse().ok()?, w["end"].as_str()?.parse().ok()?)))
        .collect();
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
    let totals: Value = by_status
        .into_iter()
        .map(|(s, (n, u))| (s, json!({ "windows": n, "units": u, "yuan": format!("{:.3}", u as f64 * unit_yuan) })))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Ok(HttpResponse::Ok().json(json!({
        "org_id": org, "windows": windows, "totals": totals,
        "unbilled": { "records": unbilled_records, "units": unbilled_units as u64,
                      "yuan": format!("{:.3}", unbilled_units as f64 * unit_yuan) },
    })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/usage", web::post().to(post_usage));
}

pub fn configure_ops(cfg: &mut web::ServiceConfig) {
    cfg.route("/orgs/{org_id}/metering", web::get().to(org_metering));
}
