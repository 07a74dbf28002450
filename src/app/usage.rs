//! Usage records reported by Zilliz Cloud's services: validated, stored idempotently by record id, and read back
//! per organization and window when a window is metered.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::OrgId;
use crate::domain::pricing::{numerator, Catalog, MilliCu};
use crate::engine::records::{Records, TimedTable, Writes};
use crate::engine::Engine;

/// `usage/{org}/{start}{record_id}`, and `usage-id/{record_id}` to find a record by its id.
const USAGE: TimedTable<UsageRecord> = TimedTable::new("usage/", "usage-id/");

/// The longest interval one record may cover; windows look back this far for overlapping records.
pub const MAX_RECORD: TimeDelta = TimeDelta::hours(24);
/// How far in the future an interval may end (clock skew between services).
pub const MAX_SKEW: TimeDelta = TimeDelta::minutes(5);
/// How old a record may be: older ones can no longer be billed by the marketplace.
pub const MAX_AGE: TimeDelta = TimeDelta::days(7);

/// A stored usage record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub record_id: String,
    pub org_id: OrgId,
    pub resource_id: String,
    pub cu_type: String,
    pub milli_cu: MilliCu,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// Why a record was refused; `code` is what clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { code, message: message.into() }
}

fn check_id(what: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(invalid("invalid_id", format!("{what}: 1 to 128 of A-Z a-z 0-9 - _ . :")));
    }
    Ok(())
}

/// Validates a record as it arrives.
#[allow(clippy::too_many_arguments)]
pub fn parse(
    catalog: &Catalog,
    now: DateTime<Utc>,
    record_id: String,
    org_id: OrgId,
    resource_id: String,
    cu_type: String,
    cu: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<UsageRecord, Invalid> {
    check_id("record_id", &record_id)?;
    check_id("resource_id", &resource_id)?;
    if catalog.price(&cu_type).is_none() {
        let known: Vec<_> = catalog.prices.keys().cloned().collect();
        return Err(invalid("unknown_cu_type", format!("cu_type is one of {}", known.join(", "))));
    }
    let milli_cu = MilliCu::from_f64(cu)
        .ok_or_else(|| invalid("invalid_cu", "cu is a number above 0, at most 10000, with at most 3 decimals"))?;
    if end <= start {
        return Err(invalid("invalid_interval", "end must be after start"));
    }
    if end - start > MAX_RECORD {
        return Err(invalid("invalid_interval", "one record covers at most 24 hours"));
    }
    if end > now + MAX_SKEW {
        return Err(invalid("interval_in_future", "the interval ends in the future"));
    }
    if start < now - MAX_AGE {
        return Err(invalid("interval_too_old", "the interval is older than 7 days"));
    }
    Ok(UsageRecord { record_id, org_id, resource_id, cu_type, milli_cu, start, end, received_at: now })
}

/// Whether a record was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The same record was stored before (a retry of the service).
    Repeated,
}

/// Stores a record once; a different record under a known id is a conflict.
pub async fn store(engine: &Engine, r: &UsageRecord) -> Result<Stored, StoreError> {
    let storage = |e: crate::engine::Error| StoreError::Storage(e.to_string());
    if let Some(old) = USAGE.find(engine, &r.record_id).map_err(storage)? {
        return if same(&old, r) { Ok(Stored::Repeated) } else { Err(StoreError::Conflict) };
    }
    let mut w = Writes::new();
    USAGE.put(&mut w, r.org_id.as_str(), r.start, &r.record_id, r).map_err(storage)?;
    engine.write(w).await.map_err(storage)?;
    Ok(Stored::New)
}

fn same(a: &UsageRecord, b: &UsageRecord) -> bool {
    a.org_id == b.org_id
        && a.resource_id == b.resource_id
        && a.cu_type == b.cu_type
        && a.milli_cu == b.milli_cu
        && a.start == b.start
        && a.end == b.end
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("a different record was stored under this record_id")]
    Conflict,
    #[error("storage: {0}")]
    Storage(String),
}

/// The records of `org` that overlap `[ws, we)`.
pub fn overlapping(
    records: &impl AsRef<Records>,
    org: &OrgId,
    ws: DateTime<Utc>,
    we: DateTime<Utc>,
) -> Result<Vec<UsageRecord>, String> {
    // Keyed by start: a record that overlaps the window started at most MAX_RECORD before it.
    let rows = USAGE.between(records, org.as_str(), ws - MAX_RECORD, we).map_err(|e| e.to_string())?;
    Ok(rows.into_iter().filter(|r| r.end > ws && r.start < we).collect())
}

/// The exact numerators of a window per metering item (`key|assit`).
pub fn window_numerators(
    catalog: &Catalog,
    records: &[UsageRecord],
    ws: DateTime<Utc>,
    we: DateTime<Utc>,
) -> std::collections::BTreeMap<(String, String), u128> {
    let mut out = std::collections::BTreeMap::new();
    for r in records {
        if let Some(p) = catalog.price(&r.cu_type) {
            *out.entry((p.metering_key.clone(), p.metering_assit.clone())).or_insert(0) +=
                numerator(p, r.milli_cu, r.start, r.end, ws, we);
        }
    }
    out
}
